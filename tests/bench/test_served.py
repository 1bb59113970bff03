"""The served benchmark end to end against a real tritonserver (own server, free loopback ports), and the wire-size
computation against a real response. No test asserts a time: every count below is set by the options."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from spade_deploy.bench import report
from spade_deploy.bench.inprocess import boundary_share, graph_feeds
from spade_deploy.bench.served import (DISTINCT_MAPS, ServedOptions, arrival_offsets, message_bytes, run_served,
                                       wire_bytes)
from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.serve.repository import QUEUE_DELAY_US
from tests.fixtures.serving import Served, require_triton

SEGMAP = GeneratorConfig(label_nc=6, ngf=8, spade_hidden=16, crop_size=64)
# Not the defaults, so the tests see them reach the label maps and the repository.
REGIONS, QUEUE_DELAY = 40, 500
OPTIONS = ServedOptions(concurrency=(1, 2), requests=6, warmup=2, rates=(20.0,), rate_requests=6,
                        inprocess_repeats=3, regions=REGIONS, queue_delay_us=QUEUE_DELAY)


@pytest.fixture(scope="module")
def served_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-bench")


@pytest.fixture(scope="module")
def served_result(served_workdir: Path) -> dict[str, Any]:
    require_triton()
    return run_served(SEGMAP, options=OPTIONS, workdir=served_workdir)


def test_every_level_completes_without_errors(served_result: dict[str, Any]) -> None:
    levels = served_result["concurrency"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in [*levels, *served_result["fixed_rate"]]:
        assert level["requests"] == 6 and level["errors"] == 0
        assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["p99_ms"] and level["throughput_rps"] > 0
    assert served_result["fixed_rate"][0]["rate_rps"] == 20.0
    assert served_result["fixed_rate"][0]["stopped_early"] is None


def test_server_statistics_count_exactly_the_timed_requests(served_result: dict[str, Any]) -> None:
    """Warm-up requests and the levels before are left out of each level's server-side numbers."""
    for level in [*served_result["concurrency"], *served_result["fixed_rate"]]:
        pipeline, generator = level["server"][io_spec.PIPELINE_MODEL], level["server"][io_spec.GENERATOR_MODEL]
        assert pipeline["requests"] == pipeline["items"] == 6
        # The pipeline forwards each batch it gathered as one generator request: fewer requests, the same items.
        assert 1 <= generator["requests"] <= 6 and generator["items"] == 6
        # The generator's own batcher may merge concurrent requests of the two pipeline instances into one execution.
        assert 6 / generator["requests"] - 1e-9 <= generator["mean_batch"] <= 6
        assert pipeline["compute_ms"] > 0 and generator["compute_ms"] > 0 and pipeline["queue_ms"] >= 0


def test_label_maps_have_the_chosen_regions(served_result: dict[str, Any]) -> None:
    setup = served_result["setup"]
    assert setup["regions"] == REGIONS and setup["label_maps"] == DISTINCT_MAPS

    def share(regions: int) -> float:
        feeds = graph_feeds(SEGMAP, DISTINCT_MAPS, 64, 64, seed=OPTIONS.seed, regions=regions)
        return boundary_share(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE))

    assert setup["boundary_share"] == share(REGIONS) != share(ServedOptions.regions)


def test_the_queue_delay_reaches_every_model(served_result: dict[str, Any], served_workdir: Path) -> None:
    assert served_result["setup"]["queue_delay_us"] == QUEUE_DELAY != QUEUE_DELAY_US["cpu"]
    for name in (io_spec.GENERATOR_MODEL, io_spec.PIPELINE_MODEL):  # no encoder here
        path = served_workdir / "repository" / name / "config.pbtxt"
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY, name


def test_the_served_image_is_the_eager_image(served_result: dict[str, Any]) -> None:
    assert served_result["exactness"]["max_abs_diff_uint8_vs_eager"] <= 1  # float rounding may flip one level


def test_overhead_and_bytes_are_reported(served_result: dict[str, Any]) -> None:
    overhead = served_result["serving_overhead"]
    assert overhead["served_p50_ms"] == served_result["concurrency"][0]["p50_ms"]
    assert overhead["inprocess_p50_ms"] == served_result["inprocess_batch1"]["p50_ms"] > 0
    wire = served_result["wire_bytes"]
    assert wire["uint8_request"] > 64 * 64 and wire["uint8_response"] > 64 * 64 * 3
    assert wire["naive_float_request"] > 64 * 64 * SEGMAP.semantic_nc * 4
    # Per pixel: 4 bytes per one-hot channel in and 12 out, against 1 byte in and 3 out.
    assert wire["naive_over_uint8"] == pytest.approx((SEGMAP.semantic_nc * 4 + 12) / (1 + 3), rel=0.02)
    machine = served_result["machine"]
    assert machine["threads"] == OPTIONS.instances * OPTIONS.intra_op_threads
    assert 0.0 <= machine["cpu_others_share"] <= 1.0 and 0.0 <= machine["cpu_steal_share"] <= 1.0


def test_the_report_renders_the_served_result(served_result: dict[str, Any], tmp_path: Path) -> None:
    summary = report.write_result(tmp_path, served_result).read_text()
    assert "### Concurrency sweep" in summary and "### Bytes on the wire" in summary
    assert "perf_analyzer cross-check: not run" in summary
    assert f"with {REGIONS} irregular regions each" in summary and f"waiting up to {QUEUE_DELAY} µs" in summary
    with open(tmp_path / report.SERVED_CHART, "rb") as chart:
        assert chart.read(8) == b"\x89PNG\r\n\x1a\n"


def test_computed_wire_sizes_match_a_real_response(spade_server: Served) -> None:
    """`message_bytes` builds the same protobuf messages the server sends back."""
    exported = spade_server.exported
    feed = exported.inputs(1)
    inputs = []
    for name, array in feed.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    with grpcclient.InferenceServerClient(spade_server.url) as client:
        result = client.infer(io_spec.PIPELINE_MODEL, inputs, outputs=[grpcclient.InferRequestedOutput(io_spec.IMAGE)])
    _, response_bytes = message_bytes(io_spec.PIPELINE_MODEL, feed, {io_spec.IMAGE: result.as_numpy(io_spec.IMAGE)})
    assert result.get_response().ByteSize() == response_bytes


def test_wire_bytes_scale_with_the_tensors() -> None:
    small, large = wire_bytes(SEGMAP, 64, 64), wire_bytes(SEGMAP, 128, 128)
    assert large["uint8_request"] - small["uint8_request"] == pytest.approx(3 * 64 * 64, abs=16)
    assert large["naive_float_response"] - small["naive_float_response"] == pytest.approx(3 * 4 * 3 * 64 * 64,
                                                                                          abs=16)
    # One more float32 per row and one more uint8 add exactly their bytes (the length prefixes keep their size).
    request, response = message_bytes("m", {"x": np.zeros((2, 5), np.float32)}, {"y": np.zeros(3, np.uint8)})
    wider, longer = message_bytes("m", {"x": np.zeros((2, 6), np.float32)}, {"y": np.zeros(4, np.uint8)})
    assert (wider - request, longer - response) == (2 * 4, 1)


def test_open_loop_arrivals_offer_exactly_the_rate() -> None:
    """Exponential gaps, scaled: the last of N arrivals at rate r comes at N / r seconds, whatever the draws."""
    for count, seed in ((16, 0), (48, 0), (48, 7)):
        offsets = arrival_offsets(5.0, count, seed)
        assert len(offsets) == count and np.all(np.diff(offsets) > 0)
        assert offsets[-1] == pytest.approx(count / 5.0, rel=1e-12)
        assert len(set(np.round(np.diff(offsets), 9))) == count - 1  # still irregular
