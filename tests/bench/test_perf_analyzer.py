"""perf_analyzer's input data and CSV, and (where its tools venv is installed) a real run against the server."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from spade_deploy.bench import perf_analyzer
from spade_deploy.bench.perf_analyzer import PerfAnalyzerError, parse_csv, run_perf_analyzer, write_input_data
from spade_deploy.model import io_spec
from tests.fixtures.serving import Served

# The header and a row as perf_analyzer 2.51 writes them with -f (times in microseconds).
CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
       "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
       "Avg latency,request/response,response wait\n"
       "2,12.5,40,900,2100,30,150000,20,10,160000,170000,175000,190000,161000,80,0\n")
TOOLS = Path(os.environ.get("SPADE_TOOLS_VENV", Path.home() / ".cache" / "spade-deploy" / "perf-analyzer"))


def test_the_csv_row_is_read_in_requests_per_second_and_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "pa.csv"
    path.write_text(CSV)
    row = parse_csv(path)
    assert row["throughput_rps"] == 12.5
    assert row["p50_ms"] == 160.0 and row["p95_ms"] == 175.0 and row["p99_ms"] == 190.0
    assert row["server_queue_ms"] == 2.1 and row["server_compute_ms"] == pytest.approx(150.05)
    path.write_text(CSV.replace("p50 latency", "median"))
    with pytest.raises(PerfAnalyzerError, match="unexpected perf_analyzer CSV"):
        parse_csv(path)


def test_input_data_holds_each_item_with_its_shape(tmp_path: Path) -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    data = json.loads(write_input_data(tmp_path / "in.json", [{io_spec.LABEL: labels}] * 2).read_text())["data"]
    assert len(data) == 2 and data[0][io_spec.LABEL]["shape"] == [3, 4]
    assert base64.b64decode(data[0][io_spec.LABEL]["b64"]) == labels.tobytes()


@pytest.mark.skipif(not (TOOLS / "bin" / "perf_analyzer").is_file(),
                    reason=f"perf_analyzer's tools venv is not installed at {TOOLS} (benchmarks/perf_analyzer.sh "
                           f"creates it on first use; it needs the package registry)")
def test_perf_analyzer_measures_the_served_pipeline(spade_server: Served, tmp_path: Path) -> None:
    exported = spade_server.exported
    items = [{name: array[0] for name, array in exported.inputs(1, seed=seed).items()} for seed in range(2)]
    data = write_input_data(tmp_path / "in.json", items)
    # Any stability will do: this checks the plumbing, on a machine that may be busy.
    rows = run_perf_analyzer(spade_server.url, io_spec.PIPELINE_MODEL, data, concurrency=(1,), window_ms=1000,
                             stability_percent=1000)
    assert len(rows) == 1 and rows[0]["mode"] == "concurrency" and rows[0]["level"] == 1
    assert "error" not in rows[0], rows[0].get("error")
    assert rows[0]["throughput_rps"] > 0 and rows[0]["p50_ms"] > 0 and rows[0]["version"].startswith("Perf Analyzer")


def test_a_missing_wrapper_script_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(perf_analyzer, "SCRIPT", tmp_path / "missing.sh")
    with pytest.raises(PerfAnalyzerError, match="missing.sh is missing"):
        run_perf_analyzer("127.0.0.1:1", io_spec.PIPELINE_MODEL, tmp_path / "in.json", concurrency=(1,))
