"""spade_deploy.client against a real tritonserver: input forms (arrays, preset-encoded PNGs), splitting at the
server's batch limit, local and server-side refusals as typed errors, timeouts, a server that dies mid-request, and the
client's guarantees with several real servers: fail-over to another address, bounded retries with backoff, and every
failure a `SpadeClientError`."""
from __future__ import annotations

import asyncio
import re
import shutil
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image

from spade_deploy.model import io_spec
from spade_deploy.client import (AsyncSpadeClient, InvalidInput, ModelNotReady, RequestTimeout, ServerUnavailable,
                                 SpadeClient, SpadeClientError)
from spade_deploy.model.images import save_png, write_rgb
from spade_deploy.model.labels import write_label_png
from spade_deploy.model.tensors import sample_z
from spade_deploy.serve.server import TritonServer, free_port
from spade_deploy.model.synthetic import random_style
from spade_deploy.serve.repository import write_repository
from tests.fixtures.serving import MAX_BATCH, Exported, Served, require_triton


def expected(exported: Exported, feed: dict[str, np.ndarray], seeds: list[int] | None = None,
             z: np.ndarray | None = None) -> np.ndarray:
    """The served pipeline's answer, computed in this process (generator graph in ONNX Runtime)."""
    if seeds is not None:
        z = torch.cat([sample_z(1, exported.config.z_dim, seed) for seed in seeds]).numpy()
    return exported.run_generator({**feed, **({io_spec.Z: z} if z is not None else {})})[io_spec.IMAGE]


def test_reads_the_served_model_description(spade_server: Served) -> None:
    with SpadeClient(spade_server.url) as client:
        assert client.is_ready()
        served = client.served
    assert (served.config, served.height, served.width) == (spade_server.exported.config, 64, 64)
    assert served.max_batch_size == MAX_BATCH
    assert served.inputs == (io_spec.LABEL, io_spec.INSTANCE, io_spec.STYLE, io_spec.SEED)


def test_label_pngs_in_the_preset_encoding(spade_server: Served, tmp_path: Path) -> None:
    exported = spade_server.exported
    feed = exported.inputs(2, seed=20)
    assert (feed[io_spec.LABEL] == exported.config.label_nc).any()  # the don't-care index is stored as 255
    labels, instances = [], []
    for index in range(2):
        labels.append(tmp_path / f"label{index}.png")
        write_label_png(labels[-1], feed[io_spec.LABEL][index], exported.config)
        instances.append(tmp_path / f"instance{index}.png")
        save_png(Image.fromarray(feed[io_spec.INSTANCE][index].astype(np.uint16)), instances[-1])
    with SpadeClient(spade_server.url) as client:
        images = client.synthesize(labels, instances, seed=4)
    np.testing.assert_array_equal(images, expected(exported, feed, seeds=[4, 4]))


def test_more_items_than_the_batch_limit_are_split(spade_server: Served) -> None:
    exported = spade_server.exported
    count = MAX_BATCH + 3
    feed = exported.inputs(count, seed=30)
    seeds = list(range(40, 40 + count))
    with SpadeClient(spade_server.url) as client:
        images = client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=seeds)
    np.testing.assert_array_equal(images, expected(exported, feed, seeds=seeds))


def test_one_style_for_all_maps_and_encode(spade_server: Served, tmp_path: Path) -> None:
    exported = spade_server.exported
    feed = exported.inputs(2, seed=50)
    style = random_style(1, 48, 80, seed=6)
    write_rgb(tmp_path / "style.png", style[0])
    mu = exported.run_encoder(style)[io_spec.MU]

    async def served() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        async with AsyncSpadeClient(spade_server.url) as client:
            return (await client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], style=style[0]),
                    await client.encode(tmp_path / "style.png"))

    images, (served_mu, served_logvar) = asyncio.run(served())
    np.testing.assert_array_equal(images, expected(exported, feed, z=np.repeat(mu, 2, axis=0)))
    np.testing.assert_array_equal(served_mu, mu)
    np.testing.assert_array_equal(served_logvar, exported.run_encoder(style)[io_spec.LOGVAR])


@pytest.mark.parametrize("case, message", [
    ("labels outside the classes", "labels must lie in [0, 10]"),
    ("float labels", "must hold integers"),
    ("no instances", "this model uses instance edges (use_instance=True); pass an instance-id map"),
    ("seed beyond int64", "seed must be an integer that fits int64"),
    ("two seeds for three maps", "seed has 2 items for 3 label maps"),
    ("float style", "must be a uint8 RGB image"),
    ("missing label file", "no such file"),
    ("empty list", "labels: an empty batch (0 label maps); pass at least one"),
    ("batch of 0", "labels: an empty batch (0 label maps); pass at least one"),
    ("labels None", "labels must be an image file path or an array, got NoneType"),
    ("labels not an array", "labels must be an image file path or an array, got dict"),
    ("None in the list", "labels[1] must be an image file path or an array, got NoneType"),
    ("a batch in the list", "labels[0] must have 2 dimensions (one item of a list), got shape [3, 64, 64]"),
    ("instances of 4 dims", "instances must have 2 dimensions per item (or 3 with the batch axis), got shape [1, 3, "),
    ("three instance maps for two", "instances has 3 items for 2 label maps"),
    ("float seed", "seed must be an integer that fits int64 (or one per label map), got 1.5"),
    ("no seeds", "seed has 0 items for 3 label maps"),
    ("style with 4 channels", "style must be [H, W, 3] or [N, H, W, 3] RGB, got shape [8, 8, 4]"),
])
def test_bad_input_is_refused_before_sending(spade_server: Served, case: str, message: str) -> None:
    feed = spade_server.exported.inputs(3)
    labels, instances = feed[io_spec.LABEL], feed[io_spec.INSTANCE]
    calls = {
        "labels outside the classes": dict(labels=labels.astype(np.int64) + 11, instances=instances),
        "float labels": dict(labels=labels.astype(np.float32), instances=instances),
        "no instances": dict(labels=labels),
        "seed beyond int64": dict(labels=labels, instances=instances, seed=2 ** 63),
        "two seeds for three maps": dict(labels=labels, instances=instances, seed=[1, 2]),
        "float style": dict(labels=labels, instances=instances, style=np.zeros((8, 8, 3), np.float32)),
        "missing label file": dict(labels="does-not-exist.png", instances=instances),
        "empty list": dict(labels=[], instances=instances),
        "batch of 0": dict(labels=labels[:0], instances=instances[:0]),
        "labels None": dict(labels=None, instances=instances),
        "labels not an array": dict(labels={"map": labels}, instances=instances),
        "None in the list": dict(labels=[labels[0], None], instances=instances[:2]),
        "a batch in the list": dict(labels=[labels], instances=instances),
        "instances of 4 dims": dict(labels=labels, instances=instances[None]),
        "three instance maps for two": dict(labels=labels[:2], instances=instances),
        "float seed": dict(labels=labels, instances=instances, seed=1.5),
        "no seeds": dict(labels=labels, instances=instances, seed=[]),
        "style with 4 channels": dict(labels=labels, instances=instances, style=np.zeros((8, 8, 4), np.uint8)),
    }
    with SpadeClient(spade_server.url) as client, pytest.raises(InvalidInput, match=re.escape(message)):
        client.synthesize(**calls[case])


def test_wrong_size_is_refused_with_the_served_size(spade_server: Served) -> None:
    """The client knows the served size and says so, instead of passing on Triton's shape error."""
    feed = spade_server.exported.inputs(1)
    small = {name: array[:, :32, :32].copy() for name, array in feed.items()}

    async def send() -> None:
        async with AsyncSpadeClient(spade_server.url) as client:
            await client.synthesize(small[io_spec.LABEL], small[io_spec.INSTANCE], seed=1)

    with pytest.raises(InvalidInput, match=r"^label maps must be 64x64 \(HxW\) for this model, got 32x32$"):
        asyncio.run(send())


def test_empty_style_batches_are_refused(spade_server: Served) -> None:
    with SpadeClient(spade_server.url) as client:
        for empty in ([], np.zeros((0, 8, 8, 3), np.uint8)):
            with pytest.raises(InvalidInput, match=r"style: an empty batch \(0 images\)"):
                client.encode(empty)


def test_server_refusal_carries_the_servers_reason(spade_server: Served) -> None:
    """A request the client cannot judge (an empty style image) is refused by the served model, whose reason the
    client's error carries."""
    with SpadeClient(spade_server.url) as client, pytest.raises(
            InvalidInput, match=r"refused the request to 'spade_encoder': input 'style' is empty"):
        client.encode(np.zeros((0, 4, 3), np.uint8))


def test_timeout_and_unreachable_server_are_typed(spade_server: Served) -> None:
    feed = spade_server.exported.inputs(1)
    with SpadeClient(spade_server.url, timeout=1e-6) as client, pytest.raises(RequestTimeout, match="timeout"):
        client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE])
    with SpadeClient(f"127.0.0.1:{free_port()}", timeout=10) as client:
        assert not client.is_ready()
        with pytest.raises(ServerUnavailable, match="is `spade-deploy serve` running there"):
            client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE])


def test_a_server_without_the_model_reads_as_not_ready(exported_segmap: Exported, tmp_path: Path) -> None:
    """A real tritonserver serving the generator alone: the pipeline model is unknown to it."""
    require_triton()
    write_repository(tmp_path / "repository", exported_segmap.generator_onnx, instances=1)
    shutil.rmtree(tmp_path / "repository" / io_spec.PIPELINE_MODEL)
    with TritonServer(tmp_path / "repository", log_file=tmp_path / "server.log") as server, \
            SpadeClient(server.grpc_url) as client:
        assert not client.is_ready()
        with pytest.raises(ModelNotReady, match="has no ready model 'spade'"):
            client.synthesize(np.zeros((64, 64), np.uint8))


def test_server_killed_mid_request_gives_a_typed_error(exported_segmap: Exported, tmp_path: Path) -> None:
    """A short-lived server whose batcher holds a lone request for 30 s: it is killed while the request waits."""
    require_triton()
    repository = tmp_path / "repository"
    write_repository(repository, exported_segmap.generator_onnx, instances=1, queue_delay_us=30_000_000)
    feed = exported_segmap.inputs(MAX_BATCH)
    outcome: list[BaseException | np.ndarray] = []
    with TritonServer(repository) as server, SpadeClient(server.grpc_url, timeout=60) as client:
        # A full batch runs at once (the batcher waits only to fill one): the server answers before the kill.
        np.testing.assert_array_equal(client.synthesize(feed[io_spec.LABEL]), expected(exported_segmap, feed))

        def request() -> None:
            try:
                outcome.append(client.synthesize(feed[io_spec.LABEL][:1]))
            except SpadeClientError as error:
                outcome.append(error)

        waiting = threading.Thread(target=request)
        waiting.start()
        _wait_for_pending_request(server)
        os.kill(server.pid, signal.SIGKILL)
        waiting.join(timeout=30)
        assert not waiting.is_alive(), "the client hangs after the server died"
        assert len(outcome) == 1 and isinstance(outcome[0], ServerUnavailable), outcome
        with pytest.raises(ServerUnavailable):
            client.synthesize(feed[io_spec.LABEL][:1])


def _wait_for_pending_request(server: TritonServer, timeout: float = 30.0) -> None:
    """Until Triton's metrics show the request queued in the `spade` model."""
    pending = f'nv_inference_pending_request_count{{model="{io_spec.PIPELINE_MODEL}",version="1"}} 1'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
            if pending in response.read().decode():
                return
        time.sleep(0.05)
    raise AssertionError(f"the request never reached the server within {timeout} s")


# ------------------------------------------------------------------------------------- the client's guarantees

@pytest.mark.parametrize("settings, message", [
    (dict(url=None), "url must be a gRPC address 'host:port' or a list of them, got NoneType"),
    (dict(url=[]), "url: an empty list of addresses"),
    (dict(url=""), "url must be a gRPC address 'host:port' (as 127.0.0.1:8001), got ''"),
    (dict(url="127.0.0.1"), "got '127.0.0.1'"),
    (dict(url=["127.0.0.1:8001", "127.0.0.1:99999"]), "got '127.0.0.1:99999'"),
    (dict(url="http://127.0.0.1:8001"), "drop the scheme"),
    (dict(timeout=0), "timeout must be a finite number of seconds > 0, got 0"),
    (dict(timeout=None), "timeout must be a finite number of seconds > 0, got None"),
    (dict(timeout=float("nan")), "timeout must be a finite number of seconds > 0, got nan"),
    (dict(timeout=1e10), "timeout must be at most 1,000,000 s (gRPC deadlines beyond that overflow), got "
                         "10000000000.0"),
    (dict(retries=-1), "retries must be an integer >= 0 (0: no retries), got -1"),
    (dict(retries=1.5), "retries must be an integer >= 0 (0: no retries), got 1.5"),
    (dict(backoff=-0.1), "backoff must be a finite number of seconds >= 0, got -0.1"),
    (dict(retry_time=float("inf")), "retry_time must be a finite number of seconds > 0, got inf"),
])
@pytest.mark.parametrize("client_class", [SpadeClient, AsyncSpadeClient])
def test_bad_settings_are_refused(client_class: type, settings: dict[str, Any], message: str) -> None:
    settings = {"url": "127.0.0.1:8001", **settings}
    with pytest.raises(InvalidInput, match=re.escape(message)):
        client_class(settings.pop("url"), **settings)


def test_a_closed_client_raises_a_client_error(spade_server: Served) -> None:
    feed = spade_server.exported.inputs(1)
    client = SpadeClient(spade_server.url)
    client.close()
    client.close()  # twice is fine
    with pytest.raises(SpadeClientError, match="is closed; make a new one"):
        client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE])

    async def closed() -> None:
        client = AsyncSpadeClient(spade_server.url)
        await client.close()
        await client.is_ready()

    with pytest.raises(SpadeClientError, match="is closed; make a new one"):
        asyncio.run(closed())


def test_fail_over_to_a_second_server(spade_server: Served, tmp_path: Path) -> None:
    """Two real servers of the same repository: the client uses the first; stopped while requests keep coming, the
    requests go on through the second, with the same numbers."""
    exported = spade_server.exported
    repository = tmp_path / "repository"
    write_repository(repository, exported.generator_onnx, exported.encoder_onnx, max_batch_size=MAX_BATCH)
    feed = exported.inputs(2, seed=60)
    want = expected(exported, feed, seeds=[3, 3])
    with TritonServer(repository, log_file=tmp_path / "server.log") as second:
        urls = [second.grpc_url, spade_server.url]

        async def one_async_call(client: AsyncSpadeClient) -> tuple[np.ndarray, str]:
            return await client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=3), client.url

        with SpadeClient(urls, timeout=60) as client:
            np.testing.assert_array_equal(client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=3), want)
            assert client.url == second.grpc_url
            stopping = threading.Thread(target=second.stop)
            stopping.start()
            answers = 0
            while stopping.is_alive() or answers < 3:  # through the shutdown, then on the other server
                images = client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=3)
                np.testing.assert_array_equal(images, want)
                answers += 1 if not stopping.is_alive() else 0
            stopping.join()
            assert client.url == spade_server.url  # remembered: no more tries of the stopped server
            # The asyncio client, made now, finds the first address dead and goes on as well.
            images, url = asyncio.run(_with_async_client(urls, one_async_call))
            np.testing.assert_array_equal(images, want)
            assert url == spade_server.url


async def _with_async_client(urls: list[str], call: Any) -> Any:
    async with AsyncSpadeClient(urls, timeout=60) as client:
        return await call(client)


def test_a_refused_input_is_not_sent_elsewhere(spade_server: Served) -> None:
    """A dead address is passed over; the server's refusal of the input ends the call: sent once, not retried."""
    dead = f"127.0.0.1:{free_port()}"
    before = _requests_received(spade_server.url, io_spec.ENCODER_MODEL)
    with SpadeClient([dead, spade_server.url], retries=3, backoff=0.01) as client, \
            pytest.raises(InvalidInput, match=r"refused the request to 'spade_encoder': input 'style' is empty"):
        client.encode(np.zeros((0, 4, 3), np.uint8))
    assert _requests_received(spade_server.url, io_spec.ENCODER_MODEL) == before + 1


def _requests_received(url: str, model: str) -> int:
    """Requests that reached `model` (a python-backend model's error response counts as a success in Triton's
    statistics)."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    return sum(int(stats[outcome].get("count", 0)) for outcome in ("success", "fail"))


def test_retries_reach_a_server_that_comes_up_later(exported_segmap: Exported, spade_server: Served,
                                                    tmp_path: Path) -> None:
    """A server started about 1 s after the first request: without retries the request fails at once, with them it
    gets the server's answer. A client whose second address serves another model refuses to fail over to it."""
    require_triton()
    repository = tmp_path / "repository"
    write_repository(repository, exported_segmap.generator_onnx, instances=1)
    url = f"127.0.0.1:{free_port()}"
    feed = exported_segmap.inputs(2, seed=70)
    with _server_later(repository, url, delay=1.0) as stop:
        with SpadeClient(url) as client, pytest.raises(ServerUnavailable, match=re.escape(f"server at {url}")):
            client.synthesize(feed[io_spec.LABEL])
        with SpadeClient(url, retries=1000, backoff=0.1, retry_time=300) as client:
            np.testing.assert_array_equal(client.synthesize(feed[io_spec.LABEL]), expected(exported_segmap, feed))
        with SpadeClient([url, spade_server.url], timeout=60) as client:
            assert client.served.config == exported_segmap.config
            stop()
            with pytest.raises(SpadeClientError, match=re.escape(f"and {spade_server.url} serve different models")):
                client.synthesize(feed[io_spec.LABEL])


@contextmanager
def _server_later(repository: Path, url: str, delay: float) -> Iterator[Any]:
    """A server on `url`'s gRPC port, started `delay` seconds from now. Its own thread launches it and lives until it
    is stopped (the server dies with the thread that launched it); yields a function that stops it."""
    stop, failures = threading.Event(), []

    def serve() -> None:
        time.sleep(delay)
        try:
            with TritonServer(repository, grpc_port=int(url.rsplit(":", 1)[1])):
                stop.wait()
        except BaseException as error:  # reported by the test, which otherwise sees only a server that never came
            failures.append(error)

    thread = threading.Thread(target=serve)
    thread.start()

    def stop_server() -> None:
        stop.set()
        thread.join(timeout=120)
        assert not thread.is_alive() and not failures, failures

    try:
        yield stop_server
    finally:
        stop_server()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_retries_give_up_within_their_bound(exported_vae: Exported, asynchronous: bool) -> None:
    """Against a dead address: `retries` rounds at most, none after `retry_time`; the error says how many."""
    feed = exported_vae.inputs(1)
    dead = f"127.0.0.1:{free_port()}"

    def call(**settings: Any) -> None:
        if asynchronous:
            async def send() -> None:
                async with AsyncSpadeClient(dead, timeout=10, **settings) as client:
                    await client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE])
            asyncio.run(send())
        else:
            with SpadeClient(dead, timeout=10, **settings) as client:
                client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE])

    with pytest.raises(ServerUnavailable, match=r"3 attempts \(3 round\(s\) over 1 address\(es\), retries=2\)"):
        call(retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"no Triton server answered: \d+ attempts") as raised:
        call(retries=10 ** 6, backoff=0.05, retry_time=1.0)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.0 + 10, elapsed  # a round against a dead loopback port is far quicker than 10 s
    attempts = int(re.search(r"(\d+) attempts", str(raised.value)).group(1))
    assert 3 <= attempts < 100, raised.value  # waits of 0.05, 0.1, 0.2, 0.4 s fit in the second
