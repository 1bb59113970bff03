"""gRPC clients of a served SPADE model: `SpadeClient` (blocking) and `AsyncSpadeClient` (asyncio).

    with SpadeClient("127.0.0.1:8001") as client:
        images = client.synthesize("labels/0001.png", seed=7)  # uint8 [N, H, W, 3]

Inputs are arrays or image files: label PNGs in the served model's dataset encoding (its preset) become class
indices here, with spade_deploy.model.labels, using the model description the server publishes in its model config. A
call with more items than the server's `max_batch_size` is split into several requests.

Every failure is a `SpadeClientError` subclass whose message names the argument or the server and says what to do:
`InvalidInput` (also a `ValueError`) for what the caller passed, `ServerUnavailable`, `ModelNotReady`,
`RequestTimeout`, `InferenceFailed` for what happened on the way. A client may get several server addresses: a
request that finds one unavailable goes to the next at once, and the client keeps using the one that answered, so
one client outlives one server. With `retries=N` a request that found no server answering is tried again after a
wait (`backoff` seconds, doubling, at most `MAX_BACKOFF`), at most N times and not after `retry_time` seconds.
Only `ServerUnavailable` is retried or sent elsewhere: a refused input, a timeout or a model's failure would fail the
same way again (or load a slow server twice). A request that a dying server dropped is sent again, which is safe as
synthesis has no side effects.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import numbers
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from spade_deploy.errors import Failure
from spade_deploy.model import io_spec
from spade_deploy.model.images import as_rgb_batch, read_rgb
from spade_deploy.model.labels import read_label_png, read_png
from spade_deploy.serve.served_model import ServedModel

PathOrArray = str | Path | np.ndarray | Sequence[str | Path | np.ndarray]
Seed = int | Sequence[int] | np.ndarray
Urls = str | Sequence[str]

MAX_BACKOFF = 5.0  # seconds: the longest wait between two retries
_ADDRESS = re.compile(r"(?P<host>[^\s/]+):(?P<port>\d{1,5})")
# What a stopping Triton answers, in any status: the model unloaded ("has no available versions"), new requests
# refused, or the pipeline's call of an inner model refused (INTERNAL). The server is going away, as when it refuses
# connections a moment later, so these are `ServerUnavailable` too: retried, and sent to another address. The same
# holds for an inner model the pipeline finds not ready ("Model 'spade_generator' is not ready"): that is the
# supervisor of `spade-deploy serve` reloading it after its backend process died, which passes in seconds; and so is
# a backend process Triton found dead or frozen ("Stub process '...' is not healthy"), which that supervisor reloads.
_GOING_AWAY = re.compile(r"server is stopping|server not ready|has no available versions|not at ready state|"
                         r"model '[^']+' is not ready|stub process '[^']+' is not healthy", re.I)
# Retry rounds of the project's own callers (the studio, `synthesize --server`) once the server answered: waits of
# 0.2 s doubling, 6.2 s in all, which ride out a server restart or a model reload by the supervisor of `spade-deploy
# serve` (about a second each), and keep a server that is gone from costing a painting user more than seconds.
SERVING_RETRIES = 5


MAX_TIMEOUT = 1e6  # seconds (11.6 days): the longest request timeout the client takes


class SpadeClientError(Failure):
    """Base of every error the SPADE clients raise."""


class ServerUnavailable(SpadeClientError):
    """The server cannot be reached (not running, wrong address), went away during the request, or is stopping or
    still loading the model: a state that passes, so the one error that is retried and sent to another address."""


class ModelNotReady(SpadeClientError):
    """The server runs but has no such model: its repository is another one."""


class InvalidInput(SpadeClientError, ValueError):
    """The inputs (or the client's settings) were refused, here or by the server (whose reason the message
    carries)."""


class RequestTimeout(SpadeClientError, TimeoutError):
    """No answer within the client's timeout."""


class InferenceFailed(SpadeClientError):
    """The server accepted the request but the model failed on it."""


class _Calls:
    """What both clients share: their settings, the served model's description, typed errors and the way through the
    server addresses."""

    def __init__(self, url: Urls, timeout: float, retries: int, backoff: float, retry_time: float) -> None:
        self.urls = _check_urls(url)  # gRPC addresses `host:port`, tried in this order from the one that answered
        self.timeout = _check_seconds("timeout", timeout, zero=False)  # seconds for each request to a server
        if self.timeout > MAX_TIMEOUT:  # gRPC deadlines further out overflow: every call would time out at once
            raise InvalidInput(f"timeout must be at most {MAX_TIMEOUT:,.0f} s (gRPC deadlines beyond that overflow), "
                               f"got {timeout!r}")
        self.retries = _check_retries(retries)  # extra rounds over all addresses when none answered
        self.backoff = _check_seconds("backoff", backoff, zero=True)  # seconds before the first retry, doubling
        self.retry_time = _check_seconds("retry_time", retry_time, zero=False)  # no retry starts later than this
        self._current = 0  # index of the address that answered last
        self._served: ServedModel | None = None  # the model, as the first server to answer describes it
        self._served_by = ""  # that server's address
        self._described: set[int] = set()  # addresses whose model was compared with `_served`
        self._closed = False

    @property
    def url(self) -> str:
        """The address in use: the one that answered last (the first, before any request)."""
        return self.urls[self._current]

    def _order(self) -> list[int]:
        """Address indices, from the one that answered last."""
        return [(self._current + step) % len(self.urls) for step in range(len(self.urls))]

    def _check_open(self) -> None:
        if self._closed:
            raise SpadeClientError(f"this client of {', '.join(self.urls)} is closed; make a new one")

    def _describe(self, index: int, model_config: dict[str, Any]) -> None:
        """Read the model description of the server at `index`; every server must serve the model the first one
        described, as requests are converted and split for it."""
        url = self.urls[index]
        try:
            served = ServedModel.from_model_config(model_config["config"])
        except (ValueError, KeyError, TypeError) as error:
            raise SpadeClientError(f"the server at {url} does not serve a spade-deploy model: {error}") from None
        if self._served is None:
            self._served, self._served_by = served, url
        elif served != self._served:
            raise SpadeClientError(f"the servers at {self._served_by} and {url} serve different models "
                                   f"({_differences(self._served, served)}); give one client only servers of the "
                                   f"same repository")
        self._described.add(index)

    def _attempt_failed(self, attempts: "_Attempts", index: int, error: InferenceServerException, model: str) -> None:
        """Record a failed attempt at address `index` for another try, or raise it when retrying cannot help."""
        failure = self._error(error, model, self.urls[index])
        if not isinstance(failure, ServerUnavailable):
            raise failure from None
        attempts.failed(index, error, failure)

    def _error(self, error: InferenceServerException, model: str, url: str) -> SpadeClientError:
        status, message = str(error.status() or ""), error.message() or str(error)
        if "DEADLINE_EXCEEDED" in status:
            return RequestTimeout(f"{model!r} at {url} did not answer within {self.timeout} s; raise the client's "
                                  f"timeout or send smaller batches ({message})")
        if "INVALID_ARGUMENT" in status:
            return InvalidInput(f"the server refused the request to {model!r}: {message}")
        if _GOING_AWAY.search(message):
            return ServerUnavailable(f"the server at {url} does not serve {model!r} now ({message}): it is stopping, "
                                     f"or still loading the model; retry, or give the client another server too")
        if "NOT_FOUND" in status or re.search(r"unknown model|not ready", message, re.I):
            return ModelNotReady(f"the server at {url} has no ready model {model!r} ({message}); wait until "
                                 f"`spade-deploy serve` says ready, or serve a repository that has this model")
        if "UNAVAILABLE" in status or "CANCELLED" in status:
            return ServerUnavailable(f"cannot reach the Triton server at {url} ({message}); is `spade-deploy "
                                     f"serve` running there, with this gRPC port?")
        return InferenceFailed(f"{model!r} failed on the server at {url}: {message}")


class _Attempts:
    """One request's way through the addresses: rounds over all of them, from the one that answered last; between
    rounds a wait of `backoff` seconds doubling up to `MAX_BACKOFF`, for `retries` rounds at most and none starting
    after `retry_time` seconds."""

    def __init__(self, calls: _Calls) -> None:
        self.calls = calls
        self.start = time.monotonic()
        self.rounds = 0
        self.count = 0  # requests sent
        self.last: dict[str, str] = {}  # the last reason of each address that did not answer
        self.first: ServerUnavailable | None = None

    def round(self) -> list[int]:
        self.rounds += 1
        return self.calls._order()

    def failed(self, index: int, error: InferenceServerException, failure: ServerUnavailable) -> None:
        self.count += 1
        self.last[self.calls.urls[index]] = error.message() or str(error)
        self.first = self.first or failure

    def wait(self) -> float | None:
        """Seconds to wait before the next round, or None when the retries or the retry time are spent."""
        left = self.calls.retry_time - (time.monotonic() - self.start)
        if self.rounds > self.calls.retries or left <= 0:
            return None
        return min(self.calls.backoff * 2 ** (self.rounds - 1), MAX_BACKOFF, left)

    def exhausted(self) -> ServerUnavailable:
        if self.count == 1:
            return self.first
        reasons = "; ".join(f"{url}: {reason}" for url, reason in self.last.items())
        return ServerUnavailable(
            f"no Triton server answered: {self.count} attempts ({self.rounds} round(s) over {len(self.calls.urls)} "
            f"address(es), retries={self.calls.retries}) in {time.monotonic() - self.start:.1f} s; last errors: "
            f"{reasons}; is `spade-deploy serve` running there, with this gRPC port?")


class SpadeClient(_Calls):
    """Blocking client of the servers at `url`: a gRPC address `host:port`, or a list of them (fail-over, in order).

    `timeout`: seconds for each request. `retries`: how many more rounds over the addresses a request makes when none
    answered (0: none), waiting `backoff` seconds before the first, doubling to at most `MAX_BACKOFF`; no round starts
    after `retry_time` seconds, so a call gives up within `retry_time` plus one round of requests."""

    def __init__(self, url: Urls, *, timeout: float = 120.0, retries: int = 0, backoff: float = 0.2,
                 retry_time: float = 30.0) -> None:
        super().__init__(url, timeout, retries, backoff, retry_time)
        self._clients = [grpcclient.InferenceServerClient(address, channel_args=_channel_args())
                         for address in self.urls]

    def is_ready(self) -> bool:
        """True when a server answers and its pipeline model is ready (it becomes the one in use); not retried."""
        self._check_open()
        for index in self._order():
            client = self._clients[index]
            try:
                if (client.is_server_ready(client_timeout=self.timeout)
                        and client.is_model_ready(io_spec.PIPELINE_MODEL, client_timeout=self.timeout)):
                    self._current = index
                    return True
            except InferenceServerException:
                pass
        return False

    @property
    def served(self) -> ServedModel:
        """The served pipeline's description (generator config, size, batch limit, inputs), read once."""
        if self._served is None:
            self._call(io_spec.PIPELINE_MODEL, self._describe_at)
        return self._served

    def synthesize(self, labels: PathOrArray, instances: PathOrArray | None = None, style: PathOrArray | None = None,
                   seed: Seed | None = None) -> np.ndarray:
        """Images uint8 `[N, H, W, 3]` for label maps (arrays `[H, W]` / `[N, H, W]` of class indices, or label
        PNGs). VAE models: `style` (one image for all, or one per label map) sets the latent to the encoder's mean;
        `seed` (one int for all, or one per item) makes the latent reproducible; see
        spade_deploy/serve/triton_models/pipeline.py."""
        requests = _synthesize_requests(self.served, labels, instances, style, seed)
        outputs = [self._infer(io_spec.PIPELINE_MODEL, request, [io_spec.IMAGE]) for request in requests]
        return np.concatenate([images for (images,) in outputs])

    def encode(self, style: PathOrArray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar), each float32 `[N, 256]`, of style images (uint8 RGB arrays or image files)."""
        outputs = [self._infer(io_spec.ENCODER_MODEL, request, [io_spec.MU, io_spec.LOGVAR])
                   for request in _encode_requests(self.served, style)]
        return np.concatenate([mu for mu, _ in outputs]), np.concatenate([logvar for _, logvar in outputs])

    def _describe_at(self, index: int) -> None:
        config = self._clients[index].get_model_config(io_spec.PIPELINE_MODEL, as_json=True,
                                                       client_timeout=self.timeout)
        self._describe(index, config)

    def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        inputs, requested = _infer_inputs(arrays), [grpcclient.InferRequestedOutput(name) for name in outputs]

        def infer(index: int) -> grpcclient.InferResult:
            if index not in self._described:  # a fail-over address: it must serve the same model
                self._describe_at(index)
            return self._clients[index].infer(model, inputs, outputs=requested, client_timeout=self.timeout)

        result = self._call(model, infer)
        return [result.as_numpy(name) for name in outputs]

    def _call(self, model: str, request: Callable[[int], Any]) -> Any:
        """`request(address index)`, through the addresses and retries; errors typed."""
        attempts = _Attempts(self)
        while True:
            for index in attempts.round():
                self._check_open()
                try:
                    result = request(index)
                except InferenceServerException as error:
                    self._attempt_failed(attempts, index, error, model)
                else:
                    self._current = index
                    return result
            wait = attempts.wait()
            if wait is None:
                raise attempts.exhausted()
            time.sleep(wait)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for client in self._clients:
                client.close()

    def __enter__(self) -> "SpadeClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncSpadeClient(_Calls):
    """asyncio client with the same arguments and methods as `SpadeClient`, as coroutines; a call's requests run
    concurrently (each one through the addresses and retries on its own)."""

    def __init__(self, url: Urls, *, timeout: float = 120.0, retries: int = 0, backoff: float = 0.2,
                 retry_time: float = 30.0) -> None:
        super().__init__(url, timeout, retries, backoff, retry_time)
        self._clients = [aioclient.InferenceServerClient(address, channel_args=_channel_args())
                         for address in self.urls]

    async def is_ready(self) -> bool:
        self._check_open()
        for index in self._order():
            client = self._clients[index]
            try:
                if (await client.is_server_ready(client_timeout=self.timeout)
                        and await client.is_model_ready(io_spec.PIPELINE_MODEL, client_timeout=self.timeout)):
                    self._current = index
                    return True
            except InferenceServerException:
                pass
        return False

    async def served(self) -> ServedModel:
        """As `SpadeClient.served` (a coroutine here, as it may ask the server)."""
        if self._served is None:
            await self._call(io_spec.PIPELINE_MODEL, self._describe_at)
        return self._served

    async def synthesize(self, labels: PathOrArray, instances: PathOrArray | None = None,
                         style: PathOrArray | None = None, seed: Seed | None = None) -> np.ndarray:
        requests = _synthesize_requests(await self.served(), labels, instances, style, seed)
        outputs = await asyncio.gather(*(self._infer(io_spec.PIPELINE_MODEL, request, [io_spec.IMAGE])
                                         for request in requests))
        return np.concatenate([images for (images,) in outputs])

    async def encode(self, style: PathOrArray) -> tuple[np.ndarray, np.ndarray]:
        outputs = await asyncio.gather(*(self._infer(io_spec.ENCODER_MODEL, request, [io_spec.MU, io_spec.LOGVAR])
                                         for request in _encode_requests(await self.served(), style)))
        return np.concatenate([mu for mu, _ in outputs]), np.concatenate([logvar for _, logvar in outputs])

    async def _describe_at(self, index: int) -> None:
        config = await self._clients[index].get_model_config(io_spec.PIPELINE_MODEL, as_json=True,
                                                             client_timeout=self.timeout)
        self._describe(index, config)

    async def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        inputs, requested = _infer_inputs(arrays), [grpcclient.InferRequestedOutput(name) for name in outputs]

        async def infer(index: int) -> grpcclient.InferResult:
            if index not in self._described:  # a fail-over address: it must serve the same model
                await self._describe_at(index)
            return await self._clients[index].infer(model, inputs, outputs=requested, client_timeout=self.timeout)

        result = await self._call(model, infer)
        return [result.as_numpy(name) for name in outputs]

    async def _call(self, model: str, request: Callable[[int], Awaitable[Any]]) -> Any:
        """As `SpadeClient._call`, awaiting the request and the waits."""
        attempts = _Attempts(self)
        while True:
            for index in attempts.round():
                self._check_open()
                try:
                    result = await request(index)
                except InferenceServerException as error:
                    self._attempt_failed(attempts, index, error, model)
                else:
                    self._current = index
                    return result
            wait = attempts.wait()
            if wait is None:
                raise attempts.exhausted()
            await asyncio.sleep(wait)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            for client in self._clients:
                await client.close()

    async def __aenter__(self) -> "AsyncSpadeClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# ------------------------------------------------------------------------------------- settings

def _check_urls(url: Urls) -> tuple[str, ...]:
    urls = [url] if isinstance(url, str) else url
    if not isinstance(urls, (list, tuple)):
        raise InvalidInput(f"url must be a gRPC address 'host:port' or a list of them, got {type(url).__name__}")
    if not urls:
        raise InvalidInput("url: an empty list of addresses; give at least one gRPC address 'host:port'")
    for address in urls:
        match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
        if match is None or not 0 < int(match["port"]) < 65536:
            hint = "; drop the scheme: gRPC takes no http://" if isinstance(address, str) and "://" in address else ""
            raise InvalidInput(f"url must be a gRPC address 'host:port' (as 127.0.0.1:8001), got {address!r}{hint}")
    return tuple(urls)


def _check_seconds(name: str, value: float, *, zero: bool) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        raise InvalidInput(f"{name} must be a finite number of seconds {'>= 0' if zero else '> 0'}, got {value!r}")
    return float(value)


def _check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise InvalidInput(f"retries must be an integer >= 0 (0: no retries), got {retries!r}")
    return int(retries)


def _differences(first: ServedModel, other: ServedModel) -> str:
    """`field: first vs other` for each field of two descriptions that differs, the generator config's singly."""
    pairs = [(f"config.{field.name}", getattr(first.config, field.name), getattr(other.config, field.name))
             for field in dataclasses.fields(first.config)]
    pairs += [(field.name, getattr(first, field.name), getattr(other, field.name))
              for field in dataclasses.fields(first) if field.name != "config"]
    return ", ".join(f"{name}: {a!r} vs {b!r}" for name, a, b in pairs if a != b)


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel settings, and reconnects at most 1 s apart: after a refused connection gRPC
    otherwise waits up to 2 minutes before it tries again, and every request in between fails at once, so a server
    that came back would look dead to the retries."""
    keepalive = grpcclient.KeepAliveOptions()
    return [("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


# ------------------------------------------------------------------------------------- inputs -> requests

def _synthesize_requests(served: ServedModel, labels: PathOrArray, instances: PathOrArray | None,
                         style: PathOrArray | None, seed: Seed | None) -> list[dict[str, np.ndarray]]:
    io = _pipeline_io(served)
    items = {io_spec.LABEL: _label_items(labels, served)}
    count = len(items[io_spec.LABEL])
    try:
        instance_items = None if instances is None else _broadcast(_items(instances, read_png, 2, "instances"),
                                                                   count, "instances")
        checked = [io_spec.check_instances(item, served.config, (1, served.height, served.width))
                   for item in instance_items or [None]]
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if checked[0] is not None:
        items[io_spec.INSTANCE] = [item[0] for item in checked]
    try:
        io_spec.check_latent_options(served.config, has_encoder=io_spec.STYLE in served.inputs,
                                     style=style is not None, seed=seed is not None)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if style is not None:
        items[io_spec.STYLE] = _broadcast(_style_items(style), count, "style")
    if seed is not None:
        items[io_spec.SEED] = _broadcast(_seed_items(seed, io.input(io_spec.SEED).dtype), count, "seed")
    return _requests(items, served.max_batch_size)


def _encode_requests(served: ServedModel, style: PathOrArray) -> list[dict[str, np.ndarray]]:
    if io_spec.STYLE not in served.inputs:
        raise InvalidInput("the served model has no style encoder (spade_encoder was not exported)")
    return _requests({io_spec.STYLE: _style_items(style)}, served.max_batch_size)


def _items(value: PathOrArray, read: Callable[[Path], np.ndarray], item_ndim: int, name: str) -> list[np.ndarray]:
    """One array per item, from a file, a list of files/arrays (one item each), or an array with or without the batch
    axis."""
    if isinstance(value, (str, Path)):
        return [read(Path(value))]
    if isinstance(value, (list, tuple)):
        items = [read(Path(entry)) if isinstance(entry, (str, Path)) else _array(entry, f"{name}[{index}]")
                 for index, entry in enumerate(value)]
        for index, item in enumerate(items):
            if item.ndim != item_ndim:  # a batch inside the list would otherwise lose all but its first item
                raise InvalidInput(f"{name}[{index}] must have {item_ndim} dimensions (one item of a list), got "
                                   f"shape {list(item.shape)}")
        return items
    array = _array(value, name)
    if array.ndim == item_ndim:
        return [array]
    if array.ndim != item_ndim + 1:
        raise InvalidInput(f"{name} must have {item_ndim} dimensions per item (or {item_ndim + 1} with the batch "
                           f"axis), got shape {list(array.shape)}")
    return list(array)


def _array(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == object and array.ndim == 0:  # None, a dict, any object numpy cannot read as numbers
        raise InvalidInput(f"{name} must be an image file path or an array, got {type(value).__name__}")
    return array


def _pipeline_io(served: ServedModel) -> io_spec.ModelIO:
    return io_spec.pipeline_io(served.config, served.height, served.width,
                               has_encoder=io_spec.STYLE in served.inputs)


def _label_items(labels: PathOrArray, served: ServedModel) -> list[np.ndarray]:
    """uint8 `[H, W]` label maps checked by the contract (size, classes) for the served model."""
    try:
        items = _items(labels, lambda path: read_label_png(path, served.config), 2, "labels")
        if not items:
            raise ValueError("labels: an empty batch (0 label maps); pass at least one")
        return [io_spec.check_labels(item, served.config, served.height, served.width)[0] for item in items]
    except ValueError as error:
        raise InvalidInput(str(error)) from None


def _style_items(style: PathOrArray) -> list[np.ndarray]:
    try:
        items = [as_rgb_batch(item)[0] for item in _items(style, read_rgb, 3, "style")]
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if not items:
        raise InvalidInput("style: an empty batch (0 images); pass at least one")
    return items


def _seed_items(seed: Seed, dtype: np.dtype) -> list[np.ndarray]:
    values = [seed] if isinstance(seed, (int, np.integer)) else list(np.asarray(seed).reshape(-1))
    limits = np.iinfo(dtype)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not limits.min <= value <= limits.max:
            raise InvalidInput(f"seed must be an integer that fits {dtype} (or one per label map), got {value!r}")
    return [np.array([value], dtype=dtype) for value in values]


def _broadcast(items: list[np.ndarray], count: int, name: str) -> list[np.ndarray]:
    """One item for all label maps, or one per label map."""
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise InvalidInput(f"{name} has {len(items)} items for {count} label maps; give one for all, or one each")
    return items


def _requests(items: dict[str, list[np.ndarray]], max_batch_size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive items grouped into requests of at most `max_batch_size`, each holding items of equal shapes
    (style images may differ in size), stacked along the batch axis."""
    count = len(next(iter(items.values())))
    groups: list[list[int]] = []
    for index in range(count):
        shapes = [array[index].shape for array in items.values()]
        if groups and len(groups[-1]) < max_batch_size and shapes == [array[groups[-1][0]].shape
                                                                      for array in items.values()]:
            groups[-1].append(index)
        else:
            groups.append([index])
    return [{name: np.stack([array[index] for index in group]) for name, array in items.items()} for group in groups]


def _infer_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    return inputs
