"""triton_models/pipeline.py (the `spade` model), served by a real tritonserver: latents exactly as the library
draws them, the style path equal to generator(encoder mu), a batch run as one execution through to the generator,
concurrent requests all answered correctly, and bad requests answered with an error while the server keeps
serving."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from spade_deploy.client import AsyncSpadeClient
from spade_deploy.model import io_spec
from spade_deploy.model.sampling import sample_posterior
from spade_deploy.model.synthetic import random_style
from spade_deploy.model.tensors import rgb_to_tensor, sample_z, to_semantic_input
from tests.fixtures.serving import MAX_BATCH, Exported, Served
from tests.official import official_encoder_forward, official_generator_forward
from tests.serve.triton_models.test_onnx_model import infer

STATISTICS_TIMEOUT_S = 30  # Triton counts an execution just after answering it: how long to wait for that


def expected_image(exported: Exported, feed: dict[str, np.ndarray], z: torch.Tensor) -> np.ndarray:
    return exported.run_generator({**feed, io_spec.Z: z.numpy()})[io_spec.IMAGE]


def pipeline(url: str, feed: dict[str, np.ndarray]) -> np.ndarray:
    return infer(url, io_spec.PIPELINE_MODEL, feed, [io_spec.IMAGE])[io_spec.IMAGE]


def test_seeds_draw_the_library_latents(spade_server: Served) -> None:
    exported = spade_server.exported
    feed = exported.inputs(2, seed=1)
    seeds = np.array([[11], [-5]], dtype=np.int64)  # negative seeds wrap to uint64, in torch and here alike
    served = pipeline(spade_server.url, {**feed, io_spec.SEED: seeds})
    z = torch.cat([sample_z(1, exported.config.z_dim, int(seed)) for seed in seeds[:, 0]])
    np.testing.assert_array_equal(served, expected_image(exported, feed, z))
    np.testing.assert_array_equal(pipeline(spade_server.url, {**feed, io_spec.SEED: seeds}), served)
    assert not np.array_equal(served[0], served[1])


def test_without_seed_or_style_each_call_draws_a_new_latent(spade_server: Served) -> None:
    feed = spade_server.exported.inputs(1)
    assert not np.array_equal(pipeline(spade_server.url, feed), pipeline(spade_server.url, feed))


def test_style_gives_the_generator_of_the_encoder_mean(spade_server: Served) -> None:
    exported = spade_server.exported
    feed = exported.inputs(2, seed=2)
    style = random_style(2, 96, 72, seed=3)
    encoded = exported.run_encoder(style)
    served = pipeline(spade_server.url, {**feed, io_spec.STYLE: style})
    np.testing.assert_array_equal(served, expected_image(exported, feed, torch.from_numpy(encoded[io_spec.MU])))


def test_style_path_matches_the_official_networks(spade_server: Served) -> None:
    """The issue's acceptance check: the served style path against the official encoder and generator forward."""
    exported = spade_server.exported
    feed = exported.inputs(2, seed=6)
    style = random_style(2, 64, 64, seed=7)
    served = pipeline(spade_server.url, {**feed, io_spec.STYLE: style})
    official = exported.official
    with torch.no_grad():
        mu, _ = official_encoder_forward(official["encoder"], rgb_to_tensor(style), official["opt"])
        image = official_generator_forward(official["generator"], to_semantic_input(
            feed[io_spec.LABEL], feed[io_spec.INSTANCE], exported.config), mu, official["opt"])
    assert_uint8_of(served, image.numpy(), tolerance=1e-4)


def assert_uint8_of(served: np.ndarray, reference: np.ndarray, tolerance: float) -> None:
    """`served` (uint8 `[N, H, W, 3]`) is the image of a float `[N, 3, H, W]` within `tolerance` of `reference`:
    each value is `round((x + 1) * 127.5)` of some x in [reference - tolerance, reference + tolerance]."""
    bounds = [np.clip(np.round((reference.transpose(0, 2, 3, 1) + shift + 1) * 127.5), 0, 255)
              for shift in (-tolerance, tolerance)]
    assert ((served >= bounds[0]) & (served <= bounds[1])).all()


def test_style_with_seed_samples_around_the_mean_as_the_library(spade_server: Served) -> None:
    exported = spade_server.exported
    feed = exported.inputs(1, seed=3)
    style = random_style(1, 64, 64, seed=4)
    encoded = exported.run_encoder(style)
    served = pipeline(spade_server.url, {**feed, io_spec.STYLE: style, io_spec.SEED: np.array([[7]], np.int64)})
    z = sample_posterior(encoded[io_spec.MU], encoded[io_spec.LOGVAR], 7)
    np.testing.assert_array_equal(served, expected_image(exported, feed, torch.from_numpy(z)))


def test_a_request_of_several_items_runs_as_one_batch(spade_server: Served) -> None:
    """The pipeline executes a 3-item request as one batch of 3 and forwards it to the generator as one batch."""
    exported = spade_server.exported
    feed = exported.inputs(3, seed=9)
    seeds = np.array([[21], [22], [23]], dtype=np.int64)
    models = (io_spec.PIPELINE_MODEL, io_spec.GENERATOR_MODEL)
    with grpcclient.InferenceServerClient(spade_server.url) as client:
        before = {model: _executions_by_batch_size(client, model) for model in models}
        served = pipeline(spade_server.url, {**feed, io_spec.SEED: seeds})
        executed = {model: _executions_since(client, model, before[model], items=3) for model in models}
    z = torch.cat([sample_z(1, exported.config.z_dim, int(seed)) for seed in seeds[:, 0]])
    np.testing.assert_array_equal(served, expected_image(exported, feed, z))
    assert executed == {model: {3: 1} for model in models}


def test_concurrent_requests_are_all_answered_correctly(spade_server: Served) -> None:
    """16 batch-1 requests at once: each gets its own image, and the server counts every item once, however the
    dynamic batcher happened to group them (that depends on timing, so it is not asserted)."""
    exported = spade_server.exported
    feeds = [exported.inputs(1, seed=100 + index) for index in range(16)]

    async def send_all() -> list[np.ndarray]:
        async with AsyncSpadeClient(spade_server.url) as client:
            return await asyncio.gather(*(client.synthesize(feed[io_spec.LABEL], feed[io_spec.INSTANCE], seed=index)
                                          for index, feed in enumerate(feeds)))

    with grpcclient.InferenceServerClient(spade_server.url) as client:
        before = _executions_by_batch_size(client, io_spec.PIPELINE_MODEL)
        images = asyncio.run(send_all())
        executed = _executions_since(client, io_spec.PIPELINE_MODEL, before, items=len(feeds))
    for index, (feed, image) in enumerate(zip(feeds, images)):
        np.testing.assert_array_equal(image, expected_image(exported, feed, sample_z(1, exported.config.z_dim, index)))
    assert sum(size * count for size, count in executed.items()) == len(feeds)


def _executions_by_batch_size(client: grpcclient.InferenceServerClient, model: str) -> dict[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return {entry.batch_size: entry.compute_infer.count for entry in stats.batch_stats}


def _executions_since(client: grpcclient.InferenceServerClient, model: str, before: dict[int, int], *,
                      items: int) -> dict[int, int]:
    """New executions of `model` by batch size since `before`, once they hold `items` items (Triton records an
    execution just after sending its responses)."""
    deadline = time.monotonic() + STATISTICS_TIMEOUT_S
    while True:
        now = _executions_by_batch_size(client, model)
        new = {size: count - before.get(size, 0) for size, count in now.items() if count > before.get(size, 0)}
        if sum(size * count for size, count in new.items()) >= items:
            return new
        assert time.monotonic() < deadline, f"{model}: statistics never counted {items} items: {new}"
        time.sleep(0.05)


BAD_REQUESTS = ("label out of range", "wrong dtype", "wrong size", "missing instance", "batch above max_batch_size",
                "empty style")


def _bad_request(exported: Exported, case: str) -> tuple[dict[str, np.ndarray], str]:
    """A bad request and a part of the reason the server gives."""
    good = exported.inputs(1)
    label, instance = good[io_spec.LABEL], good[io_spec.INSTANCE]
    many = exported.inputs(MAX_BATCH + 1)
    cases = {
        "label out of range": ({**good, io_spec.LABEL: np.full_like(label, 11)}, "labels must lie in [0, 10]"),
        "wrong dtype": ({**good, io_spec.LABEL: label.astype(np.int32)}, "data-type is 'INT32'"),
        "wrong size": ({io_spec.LABEL: label[:, :32, :32].copy(), io_spec.INSTANCE: instance[:, :32, :32].copy()},
                       "unexpected shape"),
        "missing instance": ({io_spec.LABEL: label}, "missing required input(s) ['instance']"),
        "batch above max_batch_size": (many, f"batch-size must be <= {MAX_BATCH}"),
        "empty style": ({**good, io_spec.STYLE: np.zeros((1, 0, 8, 3), np.uint8)}, "input 'style' is empty"),
    }
    return cases[case]


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_an_error_and_the_server_keeps_serving(spade_server: Served, case: str) -> None:
    exported = spade_server.exported
    feed, reason = _bad_request(exported, case)
    with pytest.raises(InferenceServerException) as refused:
        pipeline(spade_server.url, feed)
    assert "INVALID_ARGUMENT" in str(refused.value.status())
    assert reason in refused.value.message()
    good = exported.inputs(1, seed=8)
    served = pipeline(spade_server.url, {**good, io_spec.SEED: np.array([[3]], np.int64)})
    np.testing.assert_array_equal(served, expected_image(exported, good, sample_z(1, exported.config.z_dim, 3)))
