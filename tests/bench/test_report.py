"""A results folder from the tiny in-process result: JSON, summary.md and the latency chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from spade_deploy.bench import report


def test_a_results_folder_holds_json_summary_and_chart(inprocess_result: dict[str, Any], tmp_path: Path) -> None:
    summary_path = report.write_result(tmp_path, inprocess_result)
    assert json.loads((tmp_path / "inprocess.json").read_text()) == inprocess_result
    summary = summary_path.read_text()
    assert summary.startswith("# SPADE benchmarks: ")
    assert inprocess_result["machine"]["versions"]["torch"] in summary
    assert ("| runtime | precision | batch | p50 ms | p95 ms | p99 ms | images/s | × eager | × best plain | "
            "× best exact plain | PSNR dB vs float64 |") in summary
    assert ("| runtime | precision | batch | max |Δ| vs float64 | PSNR dB | pixels ≤ 1 level | pixels ≤ 2 levels | "
            "max |Δ| vs eager |") in summary  # quality
    assert "| runtime | batch | × eager | × plain-ort |" in summary  # against each baseline
    for row in inprocess_result["rows"]:
        assert f"| {row['runtime']} | {row['precision']} | {row['batch']} |" in summary
        quality = f"| {row['runtime']} | {row['precision']} | {row['batch']} | {row['max_abs_diff_f64']:.1e} |"
        assert quality in summary
    for entry in inprocess_result["skipped"]:
        assert entry["reason"] in summary
    assert f"]({report.LATENCY_CHART})" in summary and not (tmp_path / report.SERVED_CHART).exists()
    with Image.open(tmp_path / report.LATENCY_CHART) as chart:
        assert chart.format == "PNG" and chart.width >= 800


def test_results_recorded_before_precision_and_float64_still_render(inprocess_result: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    """Format 1 rows name no precision (they were all fp32 runtimes) and measured against eager float32 only."""
    old = json.loads(json.dumps(inprocess_result))
    old["format_version"] = 1
    for row in old["rows"]:
        for name in ("precision", "max_abs_diff_f64", "psnr_db", "within_1_level", "within_2_levels"):
            del row[name]
    summary = report.write_result(tmp_path, old).read_text()
    row = old["rows"][0]
    assert f"| {row['runtime']} | fp32 | {row['batch']} |" in summary
    assert "| runtime | batch | max |Δ| vs eager |" in summary and "PSNR dB |" not in summary
    assert f"| {row['runtime']} | {row['batch']} | {row['max_abs_diff']:.1e} |" in summary


def _with_machine(result: dict[str, Any], **fields: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(result))
    copy["machine"] |= fields
    return copy


def test_a_busy_machine_is_flagged(inprocess_result: dict[str, Any], tmp_path: Path) -> None:
    """Other processes, or other guests of the host, taking more than a tenth of the CPU time."""
    for fields in ({"cpu_others_share": 0.5, "cpu_steal_share": 0.0},
                   {"cpu_others_share": 0.0, "cpu_steal_share": 0.3}):
        summary = report.write_result(tmp_path, _with_machine(inprocess_result, **fields)).read_text()
        assert "the machine was busy" in summary


def test_back_to_back_runs_are_not_flagged(inprocess_result: dict[str, Any], tmp_path: Path) -> None:
    """The load average still counts the run before (and the run's own threads); the CPU shares do not."""
    machine = inprocess_result["machine"]
    loaded = machine["threads"] + machine["cores"]
    quiet = _with_machine(inprocess_result, load_average_1min=loaded, load_average_1min_end=loaded,
                          cpu_others_share=0.02, cpu_steal_share=0.0)
    summary = report.write_result(tmp_path, quiet).read_text()
    assert "the machine was busy" not in summary
    assert "other processes took 2% of the machine's CPU time, and other guests of the host 0% (steal)" in summary


def test_results_without_cpu_shares_are_judged_by_the_load_average(inprocess_result: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    old = _with_machine(inprocess_result)
    del old["machine"]["cpu_others_share"], old["machine"]["cpu_steal_share"]
    old["machine"]["load_average_1min_end"] = old["machine"]["threads"] + old["machine"]["cores"]
    assert "the machine was busy" in report.write_result(tmp_path, old).read_text()


def test_bad_results_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        report.write_result(tmp_path, {"kind": "mystery"})
    with pytest.raises(ValueError, match="no benchmark result"):
        report.render(tmp_path)
