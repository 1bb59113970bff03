"""spade_deploy.client against a real tritonserver: input forms (arrays, preset-encoded PNGs), splitting at the
server's batch limit, local and server-side refusals as typed errors, timeouts, and a server that dies mid-request."""
from __future__ import annotations

import asyncio
import re
import shutil
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
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
    ("seed beyond int64", "seeds must be integers that fit int64"),
    ("two seeds for three maps", "seed has 2 items for 3 label maps"),
    ("float style", "must be a uint8 RGB image"),
    ("missing label file", "no such file"),
    ("empty list", "labels: an empty batch (0 label maps); pass at least one"),
    ("batch of 0", "labels: an empty batch (0 label maps); pass at least one"),
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
