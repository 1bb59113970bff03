"""gRPC clients of a served SPADE model: `SpadeClient` (blocking) and `AsyncSpadeClient` (asyncio).

    with SpadeClient("127.0.0.1:8001") as client:
        images = client.synthesize("labels/0001.png", seed=7)  # uint8 [N, H, W, 3]

Inputs are arrays or image files: label PNGs in the served model's dataset encoding (its preset) become class
indices here, with spade_deploy.model.labels, using the model description the server publishes in its model config. A
call with more items than the server's `max_batch_size` is split into several requests. Every failure is a
`SpadeClientError` subclass whose message says what to do.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

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


class SpadeClientError(Failure):
    """Base of every error the SPADE clients raise."""


class ServerUnavailable(SpadeClientError):
    """The server cannot be reached: not running, wrong address, or it went away during the request."""


class ModelNotReady(SpadeClientError):
    """The server runs but the model is missing or not (yet) loaded."""


class InvalidInput(SpadeClientError, ValueError):
    """The inputs were refused, here or by the server (whose reason the message carries)."""


class RequestTimeout(SpadeClientError, TimeoutError):
    """No answer within the client's timeout."""


class InferenceFailed(SpadeClientError):
    """The server accepted the request but the model failed on it."""


class _Calls:
    """What both clients share: their settings, the served model's description, and typed errors."""

    def __init__(self, url: str, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive (seconds), got {timeout}")
        self.url = url
        self.timeout = timeout  # seconds for each request to the server
        self._served: ServedModel | None = None

    def _describe(self, model_config: dict[str, Any]) -> ServedModel:
        try:
            return ServedModel.from_model_config(model_config["config"])
        except ValueError as error:
            raise SpadeClientError(f"the server at {self.url} does not serve a spade-deploy model: {error}") from None

    def _error(self, error: InferenceServerException, model: str) -> SpadeClientError:
        status, message = str(error.status() or ""), error.message() or str(error)
        if "DEADLINE_EXCEEDED" in status:
            return RequestTimeout(f"{model!r} at {self.url} did not answer within {self.timeout} s; raise the "
                                  f"client's timeout or send smaller batches ({message})")
        if "INVALID_ARGUMENT" in status:
            return InvalidInput(f"the server refused the request to {model!r}: {message}")
        if "NOT_FOUND" in status or re.search(r"unknown model|not ready|no available version", message, re.I):
            return ModelNotReady(f"the server at {self.url} has no ready model {model!r} ({message}); wait until "
                                 f"`spade-deploy serve` says ready, or serve a repository that has this model")
        if "UNAVAILABLE" in status or "CANCELLED" in status:
            return ServerUnavailable(f"cannot reach the Triton server at {self.url} ({message}); is `spade-deploy "
                                     f"serve` running there, with this gRPC port?")
        return InferenceFailed(f"{model!r} failed on the server at {self.url}: {message}")


class SpadeClient(_Calls):
    """Blocking client. `url` is the server's gRPC endpoint `host:port`."""

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        super().__init__(url, timeout)
        self._client = grpcclient.InferenceServerClient(url)

    def is_ready(self) -> bool:
        """True when the server answers and the pipeline model is ready."""
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout)
                        and self._client.is_model_ready(io_spec.PIPELINE_MODEL, client_timeout=self.timeout))
        except InferenceServerException:
            return False

    @property
    def served(self) -> ServedModel:
        """The served pipeline's description (generator config, size, batch limit, inputs), read once."""
        if self._served is None:
            config = self._call(io_spec.PIPELINE_MODEL, self._client.get_model_config, io_spec.PIPELINE_MODEL,
                                as_json=True, client_timeout=self.timeout)
            self._served = self._describe(config)
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

    def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        result = self._call(model, self._client.infer, model, _infer_inputs(arrays),
                            outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                            client_timeout=self.timeout)
        return [result.as_numpy(name) for name in outputs]

    def _call(self, model: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except InferenceServerException as error:
            raise self._error(error, model) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "SpadeClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncSpadeClient(_Calls):
    """asyncio client with the same methods as `SpadeClient`, as coroutines; a call's requests run concurrently."""

    def __init__(self, url: str, *, timeout: float = 120.0) -> None:
        super().__init__(url, timeout)
        self._client = aioclient.InferenceServerClient(url)

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=self.timeout)
                        and await self._client.is_model_ready(io_spec.PIPELINE_MODEL, client_timeout=self.timeout))
        except InferenceServerException:
            return False

    async def served(self) -> ServedModel:
        """As `SpadeClient.served` (a coroutine here, as it may ask the server)."""
        if self._served is None:
            config = await self._call(io_spec.PIPELINE_MODEL, self._client.get_model_config, io_spec.PIPELINE_MODEL,
                                      as_json=True, client_timeout=self.timeout)
            self._served = self._describe(config)
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

    async def _infer(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        result = await self._call(model, self._client.infer, model, _infer_inputs(arrays),
                                  outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
                                  client_timeout=self.timeout)
        return [result.as_numpy(name) for name in outputs]

    async def _call(self, model: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except InferenceServerException as error:
            raise self._error(error, model) from None

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncSpadeClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


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
    """One array per item, from a file, a list of files/arrays, or an array with or without the batch axis."""
    if isinstance(value, (str, Path)):
        return [read(Path(value))]
    if isinstance(value, (list, tuple)):
        return [read(Path(entry)) if isinstance(entry, (str, Path)) else np.asarray(entry) for entry in value]
    array = np.asarray(value)
    if array.ndim == item_ndim:
        return [array]
    if array.ndim != item_ndim + 1:
        raise InvalidInput(f"{name} must have {item_ndim} dimensions per item (or {item_ndim + 1} with the batch "
                           f"axis), got shape {list(array.shape)}")
    return list(array)


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
            raise InvalidInput(f"seeds must be integers that fit {dtype}, got {value!r}")
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
