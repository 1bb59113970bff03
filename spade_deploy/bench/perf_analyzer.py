"""Triton's perf_analyzer against a running server, through benchmarks/perf_analyzer.sh (which installs it in a
tools venv on first use), one run per concurrency level or request rate; its CSV read into rows beside ours.

perf_analyzer sends the label maps of a JSON input-data file (the same maps as our load generator), measures in
time windows of `window_ms` (at a fixed rate: long enough for `MIN_WINDOW_REQUESTS` arrivals) until three windows
agree within `STABILITY_PERCENT` or `MAX_TRIALS` windows have passed, and reports client latency percentiles and the
server's queue and compute time per request (from Triton's statistics). A level that never stabilises is recorded
with perf_analyzer's message instead of numbers.
"""
from __future__ import annotations

import base64
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perf_analyzer.sh"
STABILITY_PERCENT = 25
MAX_TRIALS = 8
MIN_WINDOW_REQUESTS = 40  # Poisson arrivals: about ±16 % (1/sqrt(40)) of window-to-window noise
INSTALL_TIMEOUT_S = 900  # first use: a venv and the tritonclient wheel
_US = 1e-3  # perf_analyzer reports microseconds


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer could not be installed or run, or it failed; the message carries its output."""


def write_input_data(path: Path, items: list[dict[str, np.ndarray]]) -> Path:
    """perf_analyzer's `--input-data` JSON: one entry per item (per-item tensors, no batch axis), base64 contents."""
    data = [{name: {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
                    "shape": list(array.shape)} for name, array in item.items()} for item in items]
    path.write_text(json.dumps({"data": data}))
    return path


def run_perf_analyzer(url: str, model: str, input_data: Path, *, concurrency: tuple[int, ...] = (),
                      rates: tuple[float, ...] = (), window_ms: int = 3000,
                      stability_percent: int = STABILITY_PERCENT) -> list[dict[str, Any]]:
    """One perf_analyzer run per concurrency level, then per request rate (Poisson arrivals); a row per run, with
    `error` instead of numbers where perf_analyzer failed (e.g. never stable). `PerfAnalyzerError` when it cannot run
    at all."""
    version = _run(["--version"], INSTALL_TIMEOUT_S, "installing or starting perf_analyzer").splitlines()[-1]
    levels = [("concurrency", level, window_ms, ["--concurrency-range", f"{level}:{level}"]) for level in concurrency]
    levels += [("rate", rate, max(window_ms, math.ceil(MIN_WINDOW_REQUESTS / rate * 1e3)),
                ["--request-rate-range", f"{rate}:{rate}", "--request-distribution", "poisson"]) for rate in rates]
    rows = []
    for mode, level, window, flags in tqdm(levels, desc="perf_analyzer", unit="run", file=sys.stderr):
        csv_path = input_data.with_name(f"perf_analyzer_{mode}_{level}.csv")
        csv_path.unlink(missing_ok=True)
        row: dict[str, Any] = {"mode": mode, "level": level, "window_ms": window, "version": version}
        try:
            _run(["-m", model, "-i", "grpc", "-u", url, "--input-data", str(input_data), "--measurement-interval",
                  str(window), "--stability-percentage", str(stability_percent), "--max-trials", str(MAX_TRIALS),
                  "-f", str(csv_path), *flags], (MAX_TRIALS + 2) * window / 1e3 + 60, f"{mode} {level}")
            row.update(parse_csv(csv_path))
        except PerfAnalyzerError as error:
            row["error"] = str(error)
        rows.append(row)
    return rows


def _run(arguments: list[str], timeout: float, what: str) -> str:
    """Run the wrapper script; its output, or `PerfAnalyzerError` with the last lines of it."""
    if not SCRIPT.is_file():
        raise PerfAnalyzerError(f"{SCRIPT} is missing: run from a spade-deploy source checkout (pip install -e .)")
    try:
        done = subprocess.run(["bash", str(SCRIPT), *arguments], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHON=sys.executable))
    except subprocess.TimeoutExpired:
        raise PerfAnalyzerError(f"perf_analyzer ({what}) did not finish within {timeout:.0f} s") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-8:])
        raise PerfAnalyzerError(f"perf_analyzer ({what}) exited with status {done.returncode}: {tail}")
    return output


def parse_csv(path: Path) -> dict[str, float]:
    """The one measurement row of a perf_analyzer `-f` CSV, in requests/s and milliseconds."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise PerfAnalyzerError(f"{path} has no measurement row")
    row = rows[-1]
    try:
        return {"throughput_rps": float(row["Inferences/Second"]),
                "p50_ms": float(row["p50 latency"]) * _US, "p90_ms": float(row["p90 latency"]) * _US,
                "p95_ms": float(row["p95 latency"]) * _US, "p99_ms": float(row["p99 latency"]) * _US,
                "server_queue_ms": float(row["Server Queue"]) * _US,
                "server_compute_ms": (float(row["Server Compute Input"]) + float(row["Server Compute Infer"])
                                      + float(row["Server Compute Output"])) * _US,
                "client_send_recv_ms": (float(row["Client Send"]) + float(row["Client Recv"])) * _US}
    except (KeyError, ValueError) as error:
        raise PerfAnalyzerError(f"{path}: unexpected perf_analyzer CSV ({error!r}); columns: {list(row)}") from None
