"""The memory guard of the served models, on a real tritonserver whose repository has a small per-request budget (two
label maps): a request above it is refused with the guard's error before any work (pipeline, generator, encoder) and
the server keeps serving; dynamic batches run in pieces within it; the spade-deploy client splits its calls to fit and
reports a refused style image as `InvalidInput`."""
from __future__ import annotations

import asyncio
import re
from typing import Iterator

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from spade_deploy.client import InvalidInput, SpadeClient
from spade_deploy.model import io_spec, memory
from spade_deploy.model.synthetic import random_style
from spade_deploy.model.tensors import sample_z
from spade_deploy.serve.repository import write_repository
from spade_deploy.serve.server import TritonServer
from tests.fixtures.serving import MAX_BATCH, Exported, Served, require_triton
from tests.serve.triton_models.test_onnx_model import infer
from tests.serve.triton_models.test_pipeline import (_executions_by_batch_size, _executions_since, expected_image,
                                                      pipeline)

BUDGET_ITEMS = 2  # label maps one execution may run within the budget
QUEUE_DELAY_US = 50_000  # long enough for the dynamic batcher to gather requests sent at once into one batch


def budget_of(exported: Exported) -> int:
    return memory.generator_bytes(exported.config, BUDGET_ITEMS, 64, 64, runtime="onnxruntime")


@pytest.fixture(scope="module")
def small_budget_server(exported_vae: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_triton()
    repository = tmp_path_factory.mktemp("small_budget") / "repository"
    write_repository(repository, exported_vae.generator_onnx, exported_vae.encoder_onnx, max_batch_size=MAX_BATCH,
                     instances=1, queue_delay_us=QUEUE_DELAY_US, max_request_memory=budget_of(exported_vae))
    with TritonServer(repository) as server:
        yield Served(server.grpc_url, exported_vae, server)


def refusal(exported: Exported, what: str, needed: int, advice: str) -> str:
    return (f"{what} about {memory.format_bytes(needed)} (estimate), above this server's per-request memory budget "
            f"of {memory.format_bytes(budget_of(exported))} (max_request_memory in the model's config.pbtxt, set by "
            f"`spade-deploy export --max-request-memory`); {advice}")


def seeded(exported: Exported, count: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    feed = exported.inputs(count, seed=seed)
    seeds = np.arange(seed, seed + count, dtype=np.int64)[:, None]
    return {**feed, io_spec.SEED: seeds}, expected_image(exported, feed, torch.cat(
        [sample_z(1, exported.config.z_dim, int(value)) for value in seeds[:, 0]]))


def test_a_batch_above_the_budget_is_refused_and_the_server_keeps_serving(small_budget_server: Served) -> None:
    exported, url = small_budget_server.exported, small_budget_server.url
    feed, _ = seeded(exported, 3, seed=1)
    with pytest.raises(InferenceServerException) as refused:
        pipeline(url, feed)
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    needed = memory.generator_bytes(exported.config, 3, 64, 64, runtime="onnxruntime")
    assert refusal(exported, "a batch of 3 label maps of 64x64 needs", needed, "send at most 2 per request") in \
        refused.value.message()
    feed, expected = seeded(exported, 2, seed=4)
    np.testing.assert_array_equal(pipeline(url, feed), expected)

    direct = {**exported.inputs(3, seed=5), io_spec.Z: np.zeros((3, exported.config.z_dim), np.float32)}
    with pytest.raises(InferenceServerException, match="a batch of 3 label maps of 64x64 needs about"):
        infer(url, io_spec.GENERATOR_MODEL, direct, [io_spec.IMAGE])
    one = {name: array[:1] for name, array in direct.items()}
    np.testing.assert_array_equal(infer(url, io_spec.GENERATOR_MODEL, one, [io_spec.IMAGE])[io_spec.IMAGE],
                                  exported.run_generator(one)[io_spec.IMAGE])


def test_a_style_image_above_the_budget_is_refused(small_budget_server: Served) -> None:
    exported, url = small_budget_server.exported, small_budget_server.url
    side = int((budget_of(exported) / memory.style_bytes(1, 1, 1)) ** 0.5) + 1  # just above the budget
    huge = np.zeros((1, side, side, 3), np.uint8)
    message = refusal(exported, f"1 style image of {side}x{side} needs", memory.style_bytes(1, side, side),
                      "send smaller style images (the encoder resizes them to 256x256) or fewer per request")
    with pytest.raises(InferenceServerException) as refused:
        infer(url, io_spec.ENCODER_MODEL, {io_spec.STYLE: huge}, [io_spec.MU])
    assert "INVALID_ARGUMENT" in str(refused.value.status()) and message in refused.value.message()
    with SpadeClient(url) as client:
        feed = exported.inputs(1, seed=6)
        with pytest.raises(InvalidInput, match=re.escape(message)):
            client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], style=huge[0])
        style = random_style(1, 96, 72, seed=7)
        mu = exported.run_encoder(style)[io_spec.MU]
        np.testing.assert_array_equal(client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], style=style),
                                      expected_image(exported, feed, torch.from_numpy(mu)))


def test_the_client_splits_its_calls_to_fit_the_budget(small_budget_server: Served) -> None:
    exported = small_budget_server.exported
    feed, expected = seeded(exported, 5, seed=10)
    with SpadeClient(small_budget_server.url) as client:
        assert client.served.max_batch_size == BUDGET_ITEMS
        images = client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=feed[io_spec.SEED][:, 0])
    np.testing.assert_array_equal(images, expected)


def test_dynamic_batches_run_within_the_budget(small_budget_server: Served) -> None:
    """Four requests of 2 sent at once are batched together by Triton (up to 8 items): the pipeline calls the
    generator in runs of at most 2, and every item gets its image."""
    exported, url = small_budget_server.exported, small_budget_server.url
    requests = [seeded(exported, 2, seed=20 + 2 * index) for index in range(4)]

    async def send_all() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(url) as client:
            async def one(feed: dict[str, np.ndarray]) -> np.ndarray:
                inputs = []
                for name, array in feed.items():
                    tensor = aioclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                    tensor.set_data_from_numpy(array)
                    inputs.append(tensor)
                result = await client.infer(io_spec.PIPELINE_MODEL, inputs)
                return result.as_numpy(io_spec.IMAGE)
            return await asyncio.gather(*(one(feed) for feed, _ in requests))

    with grpcclient.InferenceServerClient(url) as client:
        models = (io_spec.PIPELINE_MODEL, io_spec.GENERATOR_MODEL)
        before = {model: _executions_by_batch_size(client, model) for model in models}
        images = asyncio.run(send_all())
        batched, generated = (_executions_since(client, model, before[model], items=8) for model in models)
    for image, (_, expected) in zip(images, requests):
        np.testing.assert_array_equal(image, expected)
    assert max(batched) > BUDGET_ITEMS, batched  # the pipeline did get a batch above the budget ...
    assert max(generated) <= BUDGET_ITEMS and sum(size * count for size, count in generated.items()) == 8  # ... split
