"""benchmarks/soak.py: its analysis on made-up requests, and every phase once, tiny, on a real supervised server."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.fixtures.serving import Exported, require_triton

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("soak", None)


def test_recovery_counts_failures_and_time_to_lasting_success(soak) -> None:
    R = soak.Request
    requests = [R(0.0, 0.5, True, "ok"), R(1.0, 1.1, False, "ServerUnavailable"), R(1.1, 1.5, True, "ok"),
                R(1.5, 2.5, False, "InferenceFailed"), R(2.5, 3.0, True, "ok"), R(3.0, 3.2, True, "ok")]
    assert soak.recovery(requests, 1.0) == {"failures": 2, "recovery_s": 2.0, "last_failure_s": 1.5, "gap_s": 0.5}
    assert soak.recovery(requests[:1], 0.2)["recovery_s"] == 0.0  # nothing failed
    assert soak.recovery(requests[:4], 1.0)["recovery_s"] is None  # no success after the last failure
    bad = R(1.2, 1.3, False, "InvalidInput", expected="InvalidInput", case="wrong size (client)")
    assert soak.recovery([*requests, bad], 1.0)["failures"] == 2  # an expected refusal is no failure


def test_verdicts(soak) -> None:
    settings = {"rss_tolerance": 0.1, "window": 10.0}
    rss = {"tritonserver": {"change": 0.02}, "spade_generator_0_0": {"change": -0.05}}
    steady = {"requests": 10, "ok": 10, "rss": rss}
    stub = {"failures": 3, "failures_after_window": 0, "recovery_s": 4.0, "fault_done": True}
    result = {"settings": settings, "phases": {"steady": steady, "stub": stub}}
    assert all(verdict["pass"] for verdict in soak.verdicts(result).values())
    result["phases"]["steady"] = {**steady, "ok": 9}
    result["phases"]["stub"] = {**stub, "failures_after_window": 1}
    rss["spade_generator_0_0"]["change"] = 0.15
    verdicts = soak.verdicts(result)
    assert not any(verdict["pass"] for verdict in verdicts.values())
    assert "spade_generator_0_0 +15.0%" in verdicts["steady_rss_flat"]["why"]
    result["phases"]["stub"] = {**stub, "recovery_s": 12.0}  # recovered, but later than the window
    assert not soak.verdicts(result)["stub_kill_recovers_within_window"]["pass"]


def test_every_phase_on_a_real_server(soak, exported_segmap: Exported, tmp_path: Path) -> None:
    require_triton()
    settings = soak.Settings(clients=1, seconds=2.0, warmup=0.5, fault_seconds=2.0, fault_at=0.8, stop_seconds=1.5,
                             stall_timeout=2.0, timeout=20.0, stop_timeout=0.5, retries=20)
    result = soak.run(settings, tmp_path, exported_segmap.generator_onnx, log=lambda line: None)
    assert json.loads((tmp_path / "result.json").read_text()) == json.loads(json.dumps(result))
    assert "| steady |" in (tmp_path / "README.md").read_text()
    phases = result["phases"]
    assert list(phases) == list(soak.PHASES)
    assert result["machine"]["cores"] >= 1 and result["settings"]["clients"] == 1
    for phase in phases.values():
        assert phase["requests"] >= phase["ok"] > 0
        assert 0 < phase["p50_ms"] <= phase["p95_ms"] < 20_000

    steady = phases["steady"]
    assert steady["errors"] == {} and steady["ok"] == steady["requests"]
    assert {"tritonserver", "spade_generator_0_0", "spade_generator_0_1"} <= set(steady["rss"])
    assert all(row["start_mb"] > 0 and row["max_mb"] >= row["end_mb"] for row in steady["rss"].values())

    stub = phases["stub"]
    assert stub["instance"].startswith("spade_generator_") and stub["fault_done"]
    assert stub["recovery_s"] is not None and stub["recovery_s"] < 60  # generous: the machine is shared
    assert any("serving again" in event["message"] for event in stub["events"])

    hang = phases["hang"]
    assert hang["instance"].startswith("spade_generator_") and hang["fault_done"] and hang["recovery_s"] is not None
    assert any(f"stub {hang['pid']} of {hang['instance']} has given no sign of life" in event["message"]
               for event in hang["events"])
    assert any("serving again" in event["message"] for event in hang["events"])

    server = phases["server"]
    assert server["new_pid"] != server["pid"] and server["recovery_s"] is not None
    assert any("tritonserver restarted" in event["message"] for event in server["events"])

    stop = phases["stop"]
    assert stop["errors"].get("RequestTimeout", 0) >= 1 and stop["recovery_s"] is not None

    bad = phases["bad"]
    assert bad["bad"] > 0 and bad["bad_refused"] == bad["bad"] and bad["good_ok"] == bad["good"]
    assert bad["server_stayed_up"]
    assert set(result["verdicts"]) == {"steady_no_errors", "steady_rss_flat", "stub_kill_recovers_within_window",
                                       "hang_recovers", "server_recovers", "stop_recovers", "bad_refused_good_served"}
