"""Soak and fault suite of the served model: steady load, then faults, on a real supervised tritonserver (loopback).

    .venv/bin/python benchmarks/soak.py --out benchmarks/results/<date>-<machine>-soak [--clients 4 --seconds 30]

Exports the bundled demo model (or serves `--onnx generator.onnx`), starts it under `Supervisor` on free loopback
ports, and runs six bounded phases, each with its own `SpadeClient` threads:
1. steady   N clients x T s; RSS of tritonserver and of every stub sampled every second;
2. stub     kill -9 one generator stub mid-load (clients without retries: every failure is counted);
3. hang     SIGSTOP one generator stub mid-load: alive to Triton, it stops beating; the supervisor ends it after
            `stall_timeout` seconds and reloads its model (requests that reached it wait until then, then fail);
4. server   kill -9 tritonserver mid-load; the supervisor restarts it; clients retry, so they ride it out;
5. stop     SIGSTOP tritonserver for a few seconds, then SIGCONT; clients with a short timeout get `RequestTimeout`;
6. bad      bad requests (wrong size, out-of-range labels, wrong dtype; refused by the client, and sent past the
            client's checks to the server's) mixed with good ones.
Writes `result.json` (machine, settings, per phase: requests, errors by kind, p50/p95, recovery, RSS per process,
supervisor events) and `README.md` (a table per phase and the verdicts).

Recovery time of a fault: from the fault to the first success after which no request failed (0 when none failed).
The supervisor runs in the main thread, as `spade-deploy serve` runs it, since it restarts the server from there.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spade_deploy.bench.machine import describe_machine
from spade_deploy.client import InvalidInput, SpadeClient
from spade_deploy.model import io_spec
from spade_deploy.serve.repository import write_repository
from spade_deploy.serve.server import ServerError, TritonServer
from spade_deploy.serve.supervisor import Supervisor

FORMAT = 1  # of result.json
FAILURE_PAUSE = 0.05  # seconds a client waits after a failed request: a refusal is instant, and a caller
# that spins on it would measure its own loop and starve the 2-core server of CPU
SETTLE = 2.0  # seconds a fault phase runs at least after the supervisor repaired what the fault broke
REPAIR_WAIT = 120.0  # seconds a fault phase waits at most, beyond its length, for the supervisor's repair
PHASES = ("steady", "stub", "hang", "server", "stop", "bad")


@dataclass(frozen=True)
class Settings:
    clients: int = 4  # client threads, one SpadeClient each
    seconds: float = 30.0  # steady phase
    warmup: float = 10.0  # seconds of the steady phase before RSS counts as settled
    fault_seconds: float = 15.0  # each fault phase, at least
    fault_at: float = 3.0  # seconds into a fault phase when the fault happens
    window: float = 10.0  # seconds after a killed stub within which every failure must lie
    stop_seconds: float = 4.0  # how long the server stays stopped (SIGSTOP) in the stop phase
    stall_timeout: float = 5.0  # the supervisor's: seconds without a heartbeat before a stub counts as hung
    timeout: float = 30.0  # client timeout (s) outside the stop phase
    stop_timeout: float = 2.0  # client timeout (s) in the stop phase
    retries: int = 20  # client retries in the server phase
    rss_tolerance: float = 0.10  # steady RSS, end vs start after warm-up
    instances: int = 2  # per model, as deployed
    phases: tuple[str, ...] = PHASES

    def __post_init__(self) -> None:
        unknown = set(self.phases) - set(PHASES)
        if unknown or not self.phases:
            raise ValueError(f"phases must be some of {', '.join(PHASES)}, got {', '.join(self.phases)}")
        if self.clients < 1 or min(self.seconds, self.fault_seconds, self.stop_seconds, self.timeout) <= 0:
            raise ValueError("clients, seconds, fault_seconds, stop_seconds and timeout must be positive")


@dataclass(frozen=True)
class Request:
    start: float  # seconds from the phase's start
    end: float
    ok: bool
    kind: str  # "ok" or the error's class name
    expected: str = "ok"  # what it should get ("InvalidInput" for a bad request)
    case: str = "good"
    message: str = ""  # the error's message (first line)


# ------------------------------------------------------------------------------------------------ analysis
def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def recovery(requests: list[Request], fault: float) -> dict[str, Any]:
    """Failures after `fault`; `recovery_s`: seconds from `fault` to the first success after the last failure (0
    when none failed, None when no request succeeded after it: not recovered within the phase); `gap_s`: seconds
    from `fault` to the first success of a request sent after it (what retries hide still shows here)."""
    after = sorted((r for r in requests if r.end >= fault and r.expected == "ok"), key=lambda r: r.end)
    failed = [r for r in after if not r.ok]
    first_new = next((r.end for r in after if r.ok and r.start >= fault), None)
    gap = None if first_new is None else round(first_new - fault, 2)
    if not failed:
        return {"failures": 0, "recovery_s": 0.0, "last_failure_s": None, "gap_s": gap}
    last = failed[-1].end
    first_ok = next((r.end for r in after if r.ok and r.end > last), None)
    return {"failures": len(failed), "recovery_s": None if first_ok is None else round(first_ok - fault, 2),
            "last_failure_s": round(last - fault, 2), "gap_s": gap}


def summarize(requests: list[Request], seconds: float) -> dict[str, Any]:
    latencies = [r.end - r.start for r in requests if r.ok]
    return {"requests": len(requests), "ok": len(latencies), "seconds": round(seconds, 1),
            "errors": dict(Counter(r.kind for r in requests if not r.ok)),
            # the first message of each kind of error: which server state each kind stands for
            "error_examples": {r.kind: r.message for r in reversed(requests) if not r.ok},
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95)}


def rss_summary(samples: list[dict[str, Any]], after: float) -> dict[str, dict[str, Any]]:
    """Per process (tritonserver, each stub instance): RSS MiB at the first sample after `after` seconds, at the
    last, and the largest; pids seen (a new pid: the process was replaced)."""
    rows: dict[str, dict[str, Any]] = {}
    for sample in samples:
        for name, (pid, mib) in sample["rss"].items():
            row = rows.setdefault(name, {"start_mb": None, "end_mb": None, "max_mb": 0.0, "pids": []})
            if sample["t"] >= after and row["start_mb"] is None:
                row["start_mb"] = mib
            if sample["t"] >= after:
                row["end_mb"] = mib
            row["max_mb"] = max(row["max_mb"], mib)
            if pid not in row["pids"]:
                row["pids"].append(pid)
    for row in rows.values():
        row["change"] = (round(row["end_mb"] / row["start_mb"] - 1, 3)
                         if row["start_mb"] and row["end_mb"] is not None else None)
    return rows


def verdicts(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's acceptance, from a result: {name: {"pass": bool, "why": str}} for the phases that ran."""
    settings, phases, out = result["settings"], result["phases"], {}
    if "steady" in phases:
        steady = phases["steady"]
        errors = steady["requests"] - steady["ok"]
        out["steady_no_errors"] = {"pass": errors == 0 and steady["ok"] > 0,
                                   "why": f"{errors} errors in {steady['requests']} requests"}
        changes = {name: row["change"] for name, row in steady["rss"].items()}
        worst = max(changes.items(), key=lambda item: abs(item[1]) if item[1] is not None else 1e9, default=None)
        flat = bool(changes) and all(c is not None and abs(c) <= settings["rss_tolerance"] for c in changes.values())
        out["steady_rss_flat"] = {"pass": flat,
                                  "why": f"largest change after warm-up: {worst[0]} {worst[1]:+.1%}" if worst and
                                  worst[1] is not None else "no RSS samples after warm-up"}
    if "stub" in phases:
        stub = phases["stub"]
        late = stub["failures_after_window"]
        recovered = stub["recovery_s"] is not None and stub["recovery_s"] <= settings["window"]
        out["stub_kill_recovers_within_window"] = {
            "pass": late == 0 and recovered and stub["fault_done"] and stub.get("repaired", True),
            "why": f"{stub['failures']} failures, all within {settings['window']:.0f} s: {late == 0}; "
                   f"recovery {stub['recovery_s']} s"}
    for name in ("hang", "server", "stop"):
        if name in phases:
            phase = phases[name]
            out[f"{name}_recovers"] = {"pass": phase["recovery_s"] is not None and phase["fault_done"]
                                       and phase.get("repaired", True),
                                       "why": f"{phase['failures']} failures, recovery {phase['recovery_s']} s"}
    if "bad" in phases:
        bad = phases["bad"]
        out["bad_refused_good_served"] = {
            "pass": bad["bad_refused"] == bad["bad"] and bad["good_ok"] == bad["good"] and bad["server_stayed_up"],
            "why": f"{bad['bad_refused']}/{bad['bad']} bad refused as InvalidInput, {bad['good_ok']}/{bad['good']} "
                   f"good served, server up: {bad['server_stayed_up']}"}
    return out


# ------------------------------------------------------------------------------------------------ running
def process_rss(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Harness:
    """The supervised server, the label maps, and one phase at a time: client threads in the background, the
    supervisor, RSS sampling and the fault in the calling (main) thread."""

    def __init__(self, repository: Path, settings: Settings, labels: np.ndarray) -> None:
        self.settings = settings
        self.labels = labels  # uint8 [N, H, W] good label maps
        self.server = TritonServer(repository)
        self.events: list[dict[str, Any]] = []
        self.supervisor: Supervisor | None = None
        self._phase_start = time.monotonic()

    def start(self) -> None:
        self.server.start()
        self.supervisor = Supervisor(self.server, interval=0.5, stall_timeout=self.settings.stall_timeout,
                                     report=self._event)

    def stop(self) -> None:
        if self.supervisor is not None and self.server.pid is not None:
            if self.server.exit_status is None:
                for pid in [self.server.pid, *(stub.pid for stub in self.server.stubs())]:
                    with contextlib.suppress(ProcessLookupError):  # a stub may end meanwhile
                        os.kill(pid, signal.SIGCONT)  # never leave a stopped server or stub behind
            self.supervisor.stop()
        self.server.stop()

    def _event(self, message: str) -> None:
        self.events.append({"t": round(time.monotonic() - self._phase_start, 2), "message": message})

    def rss(self) -> dict[str, tuple[int, float]]:
        rows = {}
        if self.server.pid is not None and (mib := process_rss(self.server.pid)) is not None:
            rows["tritonserver"] = (self.server.pid, mib)
        for stub in self.server.stubs():
            if stub.alive and (mib := process_rss(stub.pid)) is not None:
                rows[stub.instance] = (stub.pid, mib)
        return rows

    def phase(self, name: str, *, seconds: float, work: Callable[[SpadeClient, int], tuple[str, str, str]],
              client_options: dict[str, Any], fault: Callable[[], None] | None = None,
              after_fault: Callable[[], bool] | None = None) -> tuple[list[Request], list[dict], dict[str, Any]]:
        """Run client threads for `seconds` (longer while `after_fault()` says the fault is not over); `fault()` at
        `fault_at` seconds. Returns the requests, the RSS samples and what happened to the fault."""
        requests: list[Request] = []
        done = threading.Event()
        self._phase_start = start = time.monotonic()
        clients = [SpadeClient(self.server.grpc_url, **client_options) for _ in range(self.settings.clients)]
        for client in clients:
            client.served  # noqa: B018 - read the model description before the clock counts
        start = self._phase_start = time.monotonic()

        def loop(client: SpadeClient, worker: int) -> None:
            call = 0
            while not done.is_set():
                begun = time.monotonic() - start
                try:
                    expected, case, kind = work(client, worker * 1_000_003 + call)
                    ok = kind == "ok"
                    message = ""
                except Exception as error:  # every failure is a result here; the kind tells them apart
                    expected, case, kind, ok = "ok", "good", type(error).__name__, False
                    message = str(error).splitlines()[0][:300] if str(error) else ""
                requests.append(Request(begun, time.monotonic() - start, ok, kind, expected, case, message))
                call += 1
                if not ok and expected == "ok":
                    done.wait(FAILURE_PAUSE)

        threads = [threading.Thread(target=loop, args=(client, index), daemon=True)
                   for index, client in enumerate(clients)]
        for thread in threads:
            thread.start()
        samples, fault_info = [], {"fault_at_s": None, "fault_done": fault is None}
        next_sample, over_at = 0.0, None
        try:
            while True:
                now = time.monotonic() - start
                if fault is not None and fault_info["fault_at_s"] is None and now >= self.settings.fault_at:
                    fault_info["fault_at_s"] = round(now, 3)
                    fault()
                    fault_info["fault_done"] = True
                self.supervisor.check()
                if now >= next_sample:
                    samples.append({"t": round(now, 2), "rss": self.rss()})
                    next_sample = now + 1.0
                fault_over = after_fault is None or (fault_info["fault_at_s"] is not None and after_fault())
                if over_at is None and fault_over:
                    over_at = now  # the fault is over: serve a while longer, so that recovery shows in the requests
                if over_at is not None and now >= max(seconds, over_at + SETTLE):
                    break
                if now >= seconds + REPAIR_WAIT:  # never repaired: the verdicts say so
                    break
                time.sleep(0.2)
        finally:
            done.set()
            for thread in threads:
                thread.join(self.settings.timeout * 2 + 70)  # a request with retries ends within its retry time
            for client in clients:
                client.close()
        fault_info["seconds"] = time.monotonic() - start
        fault_info["repaired"] = over_at is not None
        return requests, samples, fault_info

    # ------------------------------------------------------------------------------------ the work of a client
    def good(self, client: SpadeClient, call: int) -> tuple[str, str, str]:
        client.synthesize(self.labels[call % len(self.labels)])
        return "ok", "good", "ok"


def bad_requests(served_labels: np.ndarray, label_nc: int) -> list[tuple[str, str, Callable[[SpadeClient], Any]]]:
    """(case, where, call) of each bad request: refused by the client's checks, or sent past them (the client's
    private `_infer`, with its error mapping) so that the server's own checks answer."""
    good = served_labels[:1]  # uint8 [1, H, W]
    height, width = good.shape[1:]
    small = good[:, : height // 2, : width // 2].copy()
    out_of_range = np.full_like(good, min(label_nc + 5, 255))
    fractional = good.astype(np.float32) + 0.5

    def raw(array: np.ndarray) -> Callable[[SpadeClient], Any]:
        return lambda client: client._infer(io_spec.PIPELINE_MODEL, {io_spec.LABEL: array}, [io_spec.IMAGE])

    return [("wrong size", "client", lambda client: client.synthesize(small)),
            ("out-of-range labels", "client", lambda client: client.synthesize(out_of_range)),
            ("wrong dtype", "client", lambda client: client.synthesize(fractional)),
            ("wrong size", "server", raw(small)),
            ("out-of-range labels", "server", raw(out_of_range)),
            ("wrong dtype", "server", raw(fractional)),
            ("wrong dtype (int32)", "server", raw(good.astype(np.int32)))]


def run(settings: Settings, out: Path, onnx: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every phase of `settings` on the demo model (or `onnx`); writes out/result.json and out/README.md."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spade-soak-") as work:
        work = Path(work)
        if onnx is None:
            from spade_deploy.data.landscapes import bundled_model
            from spade_deploy.export.pipeline import export_onnx
            log("exporting the bundled demo model …")
            onnx = export_onnx(bundled_model(), work / "export", parity_samples=1).generator_onnx
            model = "bundled demo model (spade_deploy.data.landscapes)"
        else:
            model = str(onnx)
        write_repository(work / "repository", onnx, instances=settings.instances)
        harness = Harness(work / "repository", settings, np.zeros((1, 1, 1), np.uint8))
        try:
            harness.start()
            log(f"serving on {harness.server.grpc_url} (tritonserver pid {harness.server.pid})")
            with SpadeClient(harness.server.grpc_url) as probe:
                served = probe.served
            harness.labels = label_maps(served.config, served.height, served.width, demo=model.startswith("bundled"))
            phases = {}
            for name in settings.phases:
                log(f"phase {name} …")
                phases[name] = PHASE_RUNNERS[name](harness, settings)
        finally:
            harness.stop()
    result = {"format": FORMAT, "model": model, "served": {"height": served.height, "width": served.width,
                                                            "max_batch_size": served.max_batch_size},
              "machine": describe_machine(threads=settings.clients), "settings": asdict(settings), "phases": phases,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}
    result["verdicts"] = verdicts(result)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "README.md").write_text(markdown(result))
    return result


def label_maps(config: Any, height: int, width: int, *, demo: bool) -> np.ndarray:
    """uint8 [8, H, W]: the bundled validation landscapes for the demo model, synthetic maps otherwise."""
    if demo:
        from spade_deploy.data.landscapes import VALIDATION_SEED, render, sample_seed
        assert height == width, "the landscapes are square"
        return np.stack([render(sample_seed(VALIDATION_SEED, index), height)[0] for index in range(8)])
    from spade_deploy.model.synthetic import synthetic_batch
    return synthetic_batch(config, 8, height=height, width=width, seed=5)[0].astype(np.uint8)


# ------------------------------------------------------------------------------------------------ phases
def _steady(harness: Harness, settings: Settings) -> dict[str, Any]:
    requests, samples, info = harness.phase("steady", seconds=settings.seconds, work=harness.good,
                                            client_options={"timeout": settings.timeout})
    return {**summarize(requests, info["seconds"]), "rss": rss_summary(samples, settings.warmup),
            "events": _events(harness)}


def _signal_a_generator_stub(harness: Harness, signum: int, record: dict[str, Any]) -> Callable[[], None]:
    """The fault of the stub phases: `signum` to a stub of the current generator (one of a version an earlier
    phase replaced may linger), noted in `record`."""
    def fault() -> None:
        stub = next(s for s in harness.supervisor.serving_stubs() if s.model == io_spec.GENERATOR_MODEL)
        record.update(pid=stub.pid, instance=stub.instance)
        os.kill(stub.pid, signum)
    return fault


def _kill_stub(harness: Harness, settings: Settings) -> dict[str, Any]:
    killed: dict[str, Any] = {}
    recoveries = harness.supervisor.recoveries
    requests, samples, info = harness.phase(
        "stub", seconds=settings.fault_seconds, work=harness.good, client_options={"timeout": settings.timeout},
        fault=_signal_a_generator_stub(harness, signal.SIGKILL, killed),
        after_fault=lambda: harness.supervisor.recoveries > recoveries)
    return _fault_result(harness, requests, samples, info, **killed)


def _hang_stub(harness: Harness, settings: Settings) -> dict[str, Any]:
    stopped: dict[str, Any] = {}
    hangs, recoveries = harness.supervisor.hangs, harness.supervisor.recoveries
    requests, samples, info = harness.phase(
        "hang", seconds=max(settings.fault_seconds, settings.fault_at + settings.stall_timeout + 1), work=harness.good,
        client_options={"timeout": settings.timeout}, fault=_signal_a_generator_stub(harness, signal.SIGSTOP, stopped),
        after_fault=lambda: harness.supervisor.hangs > hangs and harness.supervisor.recoveries > recoveries)
    return _fault_result(harness, requests, samples, info, **stopped)


def _kill_server(harness: Harness, settings: Settings) -> dict[str, Any]:
    killed: dict[str, Any] = {}
    restarts = len(harness.supervisor.restarts)

    def fault() -> None:
        killed.update(pid=harness.server.pid)
        os.kill(harness.server.pid, signal.SIGKILL)

    requests, samples, info = harness.phase(
        "server", seconds=settings.fault_seconds, work=harness.good,
        client_options={"timeout": settings.timeout, "retries": settings.retries, "retry_time": 120.0},
        fault=fault, after_fault=lambda: len(harness.supervisor.restarts) > restarts)
    return _fault_result(harness, requests, samples, info, **killed, new_pid=harness.server.pid)


def _stop_server(harness: Harness, settings: Settings) -> dict[str, Any]:
    stopped: dict[str, Any] = {}

    def fault() -> None:
        stopped.update(pid=harness.server.pid)
        os.kill(harness.server.pid, signal.SIGSTOP)
        try:
            time.sleep(settings.stop_seconds)  # the supervisor waits too: it would see nothing wrong
        finally:
            os.kill(harness.server.pid, signal.SIGCONT)

    requests, samples, info = harness.phase(
        "stop", seconds=max(settings.fault_seconds, settings.fault_at + settings.stop_seconds + 1),
        work=harness.good, client_options={"timeout": settings.stop_timeout}, fault=fault)
    result = _fault_result(harness, requests, samples, info, **stopped)
    if result["recovery_s"] is not None:
        result["recovery_after_sigcont_s"] = round(max(result["recovery_s"] - settings.stop_seconds, 0.0), 2)
    return result


def _bad(harness: Harness, settings: Settings) -> dict[str, Any]:
    cases = bad_requests(harness.labels, _label_nc(harness))
    pid = harness.server.pid

    def work(client: SpadeClient, call: int) -> tuple[str, str, str]:
        if call % 2 == 0:
            return harness.good(client, call // 2)
        case, where, request = cases[(call // 2) % len(cases)]
        try:
            request(client)
        except InvalidInput:
            return "InvalidInput", f"{case} ({where})", "InvalidInput"
        except Exception as error:  # a wrong kind of refusal: recorded, not raised
            return "InvalidInput", f"{case} ({where})", type(error).__name__
        return "InvalidInput", f"{case} ({where})", "ok (not refused)"

    requests, samples, info = harness.phase("bad", seconds=settings.fault_seconds, work=work,
                                            client_options={"timeout": settings.timeout})
    good = [r for r in requests if r.expected == "ok"]
    bad = [r for r in requests if r.expected != "ok"]
    by_case: dict[str, Counter] = {}
    for r in bad:
        by_case.setdefault(r.case, Counter())[r.kind] += 1
    return {**summarize(good, info["seconds"]), "good": len(good), "good_ok": sum(r.ok for r in good),
            "bad": len(bad), "bad_refused": sum(r.kind == "InvalidInput" for r in bad),
            "bad_by_case": {case: dict(counts) for case, counts in sorted(by_case.items())},
            "server_stayed_up": harness.server.pid == pid and harness.server.exit_status is None,
            "rss": rss_summary(samples, 0.0), "events": _events(harness)}


def _label_nc(harness: Harness) -> int:
    with SpadeClient(harness.server.grpc_url) as client:
        return client.served.config.label_nc


def _fault_result(harness: Harness, requests: list[Request], samples: list[dict], info: dict[str, Any],
                  **details: Any) -> dict[str, Any]:
    fault = info["fault_at_s"]
    result = {**summarize(requests, info["seconds"]), "fault_at_s": fault, "fault_done": info["fault_done"],
              "repaired": info["repaired"],
              **details}
    if fault is None:
        return {**result, "failures": None, "recovery_s": None, "failures_after_window": None}
    result.update(recovery(requests, fault))
    window = harness.settings.window
    result["failures_before_fault"] = sum(not r.ok for r in requests if r.end < fault)
    result["failures_after_window"] = sum(not r.ok for r in requests if r.end > fault + window)
    result["rss"] = rss_summary(samples, 0.0)
    result["events"] = _events(harness)
    return result


def _events(harness: Harness) -> list[dict[str, Any]]:
    events, harness.events = harness.events, []
    return events


PHASE_RUNNERS = {"steady": _steady, "stub": _kill_stub, "hang": _hang_stub, "server": _kill_server,
                 "stop": _stop_server, "bad": _bad}


# ------------------------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    machine, settings, phases = result["machine"], result["settings"], result["phases"]
    lines = [f"# Soak and fault suite — {result['model']}", "",
             f"{machine['cpu']} ({machine['cpu_id']}, {machine['cores']} cores, load {machine['load_average_1min']} "
             f"at start), {machine['date']}, git {machine['git']}. Served {result['served']['height']}x"
             f"{result['served']['width']}, {settings['instances']} instances per model, loopback gRPC.", "",
             f"`{result['command']}`", "",
             "| phase | what | clients | s | requests | ok | errors by kind | p50 ms | p95 ms | fault at s | "
             "recovery s | first new success s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    what = {"steady": "steady load", "stub": "kill -9 a generator stub",
            "hang": f"SIGSTOP a generator stub (stall timeout {settings['stall_timeout']:.0f} s)",
            "server": "kill -9 tritonserver (retries)",
            "stop": f"SIGSTOP tritonserver {settings['stop_seconds']:.0f} s (timeout {settings['stop_timeout']} s)",
            "bad": "bad requests mixed with good (good ones counted)"}
    for name, phase in phases.items():
        errors = ", ".join(f"{kind} {count}" for kind, count in phase["errors"].items()) or "0"
        lines.append(f"| {name} | {what[name]} | {settings['clients']} | {phase['seconds']} | {phase['requests']} | "
                     f"{phase['ok']} | {errors} | {phase['p50_ms']} | {phase['p95_ms']} | "
                     f"{phase.get('fault_at_s', '')} | {phase.get('recovery_s', '')} | {phase.get('gap_s', '')} |")
    if "steady" in phases:
        lines += ["", f"RSS in the steady phase (MiB, after {settings['warmup']:.0f} s of warm-up):", "",
                  "| process | start | end | max | change |", "|---|---|---|---|---|"]
        for name, row in phases["steady"]["rss"].items():
            change = f"{row['change']:+.1%}" if row["change"] is not None else "—"
            lines.append(f"| {name} | {row['start_mb']} | {row['end_mb']} | {row['max_mb']} | {change} |")
    if "bad" in phases:
        lines += ["", "Bad requests (what each got):", "", "| case (refused by) | got |", "|---|---|"]
        for case, counts in phases["bad"]["bad_by_case"].items():
            lines.append(f"| {case} | {', '.join(f'{kind} {count}' for kind, count in counts.items())} |")
    lines += ["", "Verdicts:", ""]
    for name, verdict in result["verdicts"].items():
        lines.append(f"- {'PASS' if verdict['pass'] else 'FAIL'} `{name}`: {verdict['why']}")
    events = [(name, event) for name, phase in phases.items() for event in phase.get("events", [])]
    if events:
        lines += ["", "Supervisor events (seconds into the phase):", ""]
        lines += [f"- {name} {event['t']} s: {event['message'].splitlines()[0]}" for name, event in events]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="result folder (result.json, README.md)")
    parser.add_argument("--onnx", type=Path, help="serve this exported generator instead of the bundled demo model")
    defaults = Settings()
    for name in ("clients", "seconds", "warmup", "fault_seconds", "fault_at", "window", "stop_seconds", "stall_timeout",
                 "timeout", "stop_timeout", "retries", "instances"):
        value = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"default {value}")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"default {','.join(PHASES)}")
    args = parser.parse_args(argv)
    options = {name: value for name, value in vars(args).items() if name not in ("out", "onnx", "phases")}
    settings = Settings(**options, phases=tuple(args.phases.split(",")))
    try:
        result = run(settings, args.out, args.onnx)
    except (ServerError, ValueError) as error:
        print(f"soak: error: {error}", file=sys.stderr)
        return 2
    print((args.out / "README.md").read_text())
    return 0 if all(verdict["pass"] for verdict in result["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
