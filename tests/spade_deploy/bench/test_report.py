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
    assert "| runtime | batch | p50 ms | p95 ms | p99 ms | images/s | × eager | × best plain |" in summary
    assert "| runtime | batch | × eager | × plain-ort |" in summary  # against each baseline
    for row in inprocess_result["rows"]:
        assert f"| {row['runtime']} | {row['batch']} |" in summary
    for entry in inprocess_result["skipped"]:
        assert entry["reason"] in summary
    assert f"]({report.LATENCY_CHART})" in summary and not (tmp_path / report.SERVED_CHART).exists()
    with Image.open(tmp_path / report.LATENCY_CHART) as chart:
        assert chart.format == "PNG" and chart.width >= 800


def test_a_busy_machine_is_flagged(inprocess_result: dict[str, Any], tmp_path: Path) -> None:
    busy = json.loads(json.dumps(inprocess_result))
    busy["machine"]["load_average_1min_end"] = busy["machine"]["threads"] + busy["machine"]["cores"]
    assert "the machine was busy" in report.write_result(tmp_path, busy).read_text()


def test_bad_results_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        report.write_result(tmp_path, {"kind": "mystery"})
    with pytest.raises(ValueError, match="no benchmark result"):
        report.render(tmp_path)
