"""The in-process benchmark on a tiny model: every available runtime runs, matches eager, and rows are well-formed.
No test asserts a time."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spade_deploy.bench import runtimes
from spade_deploy.bench.inprocess import (Options, boundary_share, graph_feeds, run_inprocess, take_turns,
                                          turn_ratio)
from spade_deploy.bench.machine import describe_machine, reset_peak_resident
from spade_deploy.bench.report import section
from spade_deploy.bench.runtimes import FAST, RUNTIMES, Runner, Runtime, Subject, onnxruntime_runner, select
from spade_deploy.export.metadata import GRAPHS, TOLERANCE, read_export_metadata
from spade_deploy.export.precision import BF16, FP32, cpu_flags, fastest_choice
from spade_deploy.export.runtime import openvino_unavailable
from spade_deploy.model import io_spec
from tests.fixtures.bench import TINY_BENCH

ROW_FIELDS = {"runtime", "precision", "batch", "p50_ms", "p95_ms", "p99_ms", "images_per_s", "max_abs_diff",
              "max_abs_diff_f64", "psnr_db", "within_1_level", "within_2_levels", "peak_mem_mb", "boundary_share",
              "preset", "ngf", "size", "repeats", "build_s", "speedup_vs_eager", "speedup_vs_best_plain",
              "best_plain", "speedup_vs_best_exact_plain", "best_exact_plain", "speedup_vs", "latencies_ms"}
OPENVINO_PINNED = ("plain-openvino", "openvino", "sparse-openvino")  # INFERENCE_PRECISION_HINT f32


def test_every_available_runtime_is_timed_at_every_batch(inprocess_result: dict[str, Any]) -> None:
    ran = {runtime.name for runtime in RUNTIMES.values() if runtime.unavailable() is None}
    skipped = {entry["runtime"]: entry["reason"] for entry in inprocess_result["skipped"]}
    assert ran | set(skipped) == set(RUNTIMES)
    assert all(reason for reason in skipped.values())  # a skip always says why
    rows = inprocess_result["rows"]
    assert {(row["runtime"], row["batch"]) for row in rows} == {(name, batch) for name in ran for batch in (1, 2)}
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert len(row["latencies_ms"]) == row["repeats"] == 2
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= max(row["latencies_ms"])
        assert math.isclose(row["images_per_s"], row["batch"] * 1e3 / row["p50_ms"])
        assert row["size"] == "64x64" and row["ngf"] == 8
        assert 0 < row["boundary_share"] <= 1
        # measured by the per-runtime probe wherever Linux lets a process reset its peak (/proc/self/clear_refs)
        assert (row["peak_mem_mb"] > 0) if reset_peak_resident() else row["peak_mem_mb"] is None


def test_every_fp32_runtime_computes_the_float64_function(inprocess_result: dict[str, Any]) -> None:
    """Against eager float32 and against the float64 model; eager float32 itself is not the float64 model."""
    fp32 = [row for row in inprocess_result["rows"] if row["precision"] == FP32]
    assert {"eager", "plain-ort", "ort", "sparse-ort"} <= {row["runtime"] for row in fp32}
    for row in fp32:
        assert row["max_abs_diff"] <= TOLERANCE and row["max_abs_diff_f64"] <= TOLERANCE, row["runtime"]
        assert row["within_2_levels"] >= row["within_1_level"] > 0.99, row["runtime"]
        assert row["psnr_db"] > 80, row["runtime"]
    eager = [row for row in fp32 if row["runtime"] == "eager"]
    assert all(row["max_abs_diff"] == 0.0 < row["max_abs_diff_f64"] for row in eager)


def test_reduced_precision_is_named_and_measured(inprocess_result: dict[str, Any]) -> None:
    """A row's precision is what the runtime computes in: bf16 rows lie measurably further from float64 than every
    fp32 row, and OpenVINO pinned to f32 reports f32 back."""
    rows = inprocess_result["rows"]
    assert {row["precision"] for row in rows} <= {FP32, BF16}
    fp32_psnr = min(row["psnr_db"] for row in rows if row["precision"] == FP32)
    for row in rows:
        if row["precision"] == BF16:
            assert row["psnr_db"] < fp32_psnr - 20 and row["max_abs_diff_f64"] > 100 * TOLERANCE, row["runtime"]
            assert 0 <= row["within_1_level"] <= row["within_2_levels"] <= 1
        if row["runtime"] in OPENVINO_PINNED:
            assert row["precision"] == FP32, row["runtime"]


def test_openvino_defaults_and_fast_say_which_precision_they_ran(inprocess_result: dict[str, Any]) -> None:
    """OpenVINO at its default settings runs bf16 where the CPU has bf16 hardware (at least with AMX); `fast` runs
    the reduced precision its choice names, or fp32 where the CPU has none."""
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    rows = {(row["runtime"], row["batch"]): row for row in inprocess_result["rows"]}
    flags = cpu_flags()
    for batch in (1, 2):
        default = rows["plain-openvino-default", batch]["precision"]
        assert default == BF16 if "amx_bf16" in flags else default in (FP32, BF16)
        assert rows["fast", batch]["precision"] == FAST.precision == (BF16 if {"amx_bf16", "avx512_bf16"} & flags
                                                                    else FP32)
    assert FAST.why in inprocess_result["setup"]["runtimes"]["fast"]


def test_the_cpu_flags_are_the_ones_the_machine_record_shows() -> None:
    simd = describe_machine(2)["simd"]
    assert set(simd) <= cpu_flags()
    assert FAST == fastest_choice(cpu_flags(), openvino_unavailable() is None)  # the export's rule (its tests)


def test_ratios_are_against_eager_and_the_best_plain_runtime_of_the_run(inprocess_result: dict[str, Any]) -> None:
    rows = inprocess_result["rows"]
    for batch in (1, 2):
        same = {row["runtime"]: row for row in rows if row["batch"] == batch}
        plain = [name for name in same if RUNTIMES[name].plain]
        best = min(plain, key=lambda name: same[name]["p50_ms"])
        exact = min((name for name in plain if same[name]["precision"] == "fp32"),
                    key=lambda name: same[name]["p50_ms"])
        for row in same.values():
            assert row["speedup_vs_best_exact_plain"] == pytest.approx(same[exact]["p50_ms"] / row["p50_ms"])
            assert row["best_exact_plain"] == exact
            assert row["speedup_vs_eager"] == pytest.approx(same["eager"]["p50_ms"] / row["p50_ms"])
            assert row["speedup_vs_best_plain"] == pytest.approx(same[best]["p50_ms"] / row["p50_ms"])
            assert row["best_plain"] == best
            assert row["speedup_vs"] == {name: pytest.approx(same[name]["p50_ms"] / row["p50_ms"])
                                         for name in ["eager", *plain]}
        assert same["eager"]["speedup_vs_eager"] == 1.0 and same[best]["speedup_vs_best_plain"] == 1.0


def test_the_machine_and_setup_are_recorded(inprocess_result: dict[str, Any]) -> None:
    machine, setup = inprocess_result["machine"], inprocess_result["setup"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["threads"] == 2
    assert {"torch", "onnxruntime", "numpy"} <= set(machine["versions"])
    assert machine["date"][:2] == "20"
    assert 0.0 <= machine["cpu_others_share"] <= 1.0 and 0.0 <= machine["cpu_steal_share"] <= 1.0
    assert setup["threads"] == 2 and setup["batches"] == [1, 2] and setup["warmup"] == 1


def test_a_new_runtime_takes_one_registration() -> None:
    """A runtime names the graph it runs; the harness exports that graph, hands the runtime its file, and gives it a
    row at every batch with its exactness against eager."""
    given: list[str] = []

    def build(subject: Subject, path: Path | None) -> Runner:
        given.append(read_export_metadata(path).graph)
        return onnxruntime_runner(subject, path)

    runtimes.register(Runtime("candidate", "the sparse graph in ONNX Runtime", build, graph="sparse"))
    try:
        result = run_inprocess(TINY_BENCH, runtimes=["eager", "candidate"],
                               options=Options(batches=(1, 2), repeats=1, warmup=0))
    finally:
        del RUNTIMES["candidate"]
    assert given == ["sparse"]  # built once, on the sparse export
    rows = {(row["runtime"], row["batch"]): row for row in result["rows"]}
    assert set(rows) == {(name, batch) for name in ("eager", "candidate") for batch in (1, 2)}
    for batch in (1, 2):
        candidate = rows["candidate", batch]
        assert candidate["max_abs_diff"] <= TOLERANCE and candidate["max_abs_diff_f64"] <= TOLERANCE
        assert candidate["precision"] == FP32  # what onnxruntime_runner says of the CPU provider
        assert candidate["best_plain"] is None and candidate["speedup_vs_best_plain"] is None  # no plain runtime ran
        assert set(candidate["speedup_vs"]) == {"eager"}
    assert result["setup"]["runtimes"]["candidate"] == "the sparse graph in ONNX Runtime"


def test_one_at_a_time_times_every_runtime_alone_and_says_so() -> None:
    """For runtimes that do not fit in memory together: each is built, timed at every batch and freed in turn; the
    rows and ratios look the same, and the summary says the ratios lost the protection against drift."""
    result = run_inprocess(TINY_BENCH, runtimes=["eager", "plain-ort", "sparse-ort"],
                           options=Options(batches=(1, 2), repeats=1, warmup=0, one_at_a_time=True))
    assert [(row["runtime"], row["batch"]) for row in result["rows"]] == [
        (name, batch) for batch in (1, 2) for name in ("eager", "plain-ort", "sparse-ort")]
    assert all(row["max_abs_diff"] <= TOLERANCE and row["best_plain"] == "plain-ort" for row in result["rows"])
    assert result["setup"]["one_at_a_time"] is True
    assert "Runtimes ran one at a time" in "\n".join(section(result))


def test_a_runtime_on_an_unknown_graph_is_refused() -> None:
    assert "no-such-graph" not in GRAPHS
    with pytest.raises(ValueError, match="'no-such-graph', which is not in GRAPHS"):
        runtimes.register(Runtime("broken", "?", onnxruntime_runner, graph="no-such-graph"))
    assert "broken" not in RUNTIMES


def test_unknown_runtimes_and_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime.*'warp'"):
        select(["eager", "warp"])
    with pytest.raises(ValueError, match="batches"):
        Options(batches=(0,))
    with pytest.raises(ValueError, match="repeats"):
        Options(repeats=0)
    with pytest.raises(ValueError, match="regions=0"):
        Options(regions=0)


def test_boundary_share_counts_mixed_neighbourhoods_and_the_border() -> None:
    uniform = np.zeros((1, 10, 10), np.int64)
    assert boundary_share(uniform) == pytest.approx(1 - 6 * 6 / 100)  # only the 2-pixel frame
    halves = uniform.copy()
    halves[:, :, 5:] = 1  # columns 3..6 see both labels
    inner = 6 * (6 - 4)  # interior 6x6 (rows/cols 2..7) minus the 4 mixed columns
    assert boundary_share(halves) == pytest.approx(1 - inner / 100)
    # Instance edges count too: one label, two instances split like the halves above. Both sides of the split are
    # edge pixels (columns 4 and 5), so every interior column is within 2 of an edge.
    assert boundary_share(uniform, instances=halves) == 1.0
    assert boundary_share(uniform, instances=np.zeros_like(uniform)) == pytest.approx(1 - 6 * 6 / 100)


def test_graph_feeds_use_the_contract_dtypes_and_every_label() -> None:
    feeds = graph_feeds(TINY_BENCH, 3, 64, 64, seed=1)
    model_io = io_spec.generator_io(TINY_BENCH, 64, 64)
    assert list(feeds) == model_io.input_names
    assert feeds[io_spec.LABEL].dtype == model_io.input(io_spec.LABEL).dtype and feeds[io_spec.LABEL].shape == \
        (3, 64, 64)
    assert int(feeds[io_spec.LABEL].max()) < TINY_BENCH.num_label_channels


def test_take_turns_times_each_call_once_per_turn_in_a_shuffled_order() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    latencies = take_turns(calls, turns=20, seed=1)
    assert {name: len(values) for name, values in latencies.items()} == {"a": 20, "b": 20, "c": 20}
    turns = [order[index:index + 3] for index in range(0, 60, 3)]
    assert all(sorted(turn) == ["a", "b", "c"] for turn in turns) and len({tuple(turn) for turn in turns}) > 1
    assert turn_ratio({"x": [2.0, 6.0, 3.0], "y": [1.0, 2.0, 3.0]}, "x", "y") == 2.0
