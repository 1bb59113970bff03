"""Keep a `TritonServer` serving: reload a model whose python-backend stub died or hung, restart a server that died.

Why it is needed (Triton 2.51's python backend): when a stub process is killed (by the kernel's OOM killer, say),
nothing restarts it and nothing marks the model unready. Every request routed to that instance fails with "Stub
process ... is not healthy" while the model and the server keep reporting ready. A server that dies stays dead.

What the supervisor does, every `interval` seconds:
- tritonserver ended → restart it on the same ports (`restart_limit` deaths within `restart_window` seconds end
  supervision with a `ServerError`); a restart that fails (a port taken meanwhile, say) is tried again with a growing
  pause, as a model load is, and is not counted as a death;
- an instance has no live stub (gone, or a zombie) → unload the model and the models that call it (the pipeline
  calls the generator and the encoder), so that their readiness and the server's say "not ready" while they cannot
  serve, then load them again, callee first. A load that fails is retried with a growing pause (up to a minute).
- a stub hangs: alive to Triton, which keeps routing requests to it, but it has not beaten for `stall_timeout`
  seconds (stopped, frozen) or has been inside one execution for `execute_timeout` seconds
  (`spade_deploy.serve.heartbeat`) → end it (SIGKILL), and the round after brings its model back as above.

What Triton leaves behind, and how it is handled: a request that reached the dead instance keeps the replaced
model version referenced, so Triton never finishes unloading it. Its surviving stubs keep a copy of the model in
memory (ended after `linger` seconds), and Triton's clean shutdown waits on it until its exit timeout. So after such
an incident `stop()` lets the shutdown finish the in-flight requests and unload every current model, and then ends
the server instead of waiting; the leftover shared memory is removed either way.

The supervisor restarts the server from the thread that calls `run()`/`check()`: let that be the thread that
started it and outlives it (the main thread), since the server is tied to its launching thread (`_die_with_parent`).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from spade_deploy.model import io_spec
from spade_deploy.serve import heartbeat
from spade_deploy.serve.server import ServerError, Stub, TritonServer, python_stubs

_logger = logging.getLogger(__name__)
MAX_RETRY_PAUSE = 60.0  # seconds: the longest pause between two attempts to load a model, or start the server
SHUTDOWN_GRACE = 3.0  # seconds a server gets to exit by itself once its current models are unloaded
# Seconds without a heartbeat after which a stub counts as hung: 10 beats missed, far beyond any pause of a busy
# machine (a stub beats from a thread of its own, also while it runs a model). Triton itself gives up on a stopped
# stub within about a second and fails every request routed to it ("Stub process ... is not healthy") while it keeps
# reporting the model ready, so every second of waiting here is a second of failed requests.
STALL_TIMEOUT = 10.0
# Seconds one execution may run before its stub counts as hung: far above a full dynamic batch of the largest preset
# on a 2-core CPU (Cityscapes 512x256: 4.3 s per image for the plain graph in ONNX Runtime on a Zen 3, so about 35 s
# for a batch of 8; the served sparse graph takes half that); None: no limit.
EXECUTE_TIMEOUT = 600.0


def spade_dependents(repository: str | Path) -> dict[str, list[str]]:
    """Which models call which, in a repository of spade_deploy.serve.repository: the pipeline model calls every
    other model (BLS), so it cannot serve while one of them is out. {model: [models that call it]}."""
    models = sorted(path.parent.name for path in Path(repository).glob("*/config.pbtxt"))
    if io_spec.PIPELINE_MODEL not in models:
        return {}
    return {model: [io_spec.PIPELINE_MODEL] for model in models if model != io_spec.PIPELINE_MODEL}


class Supervisor:
    """Watches a started `TritonServer` and repairs it; reports each event (a line of text) through `report`."""

    def __init__(self, server: TritonServer, *, dependents: Mapping[str, Sequence[str]] | None = None,
                 interval: float = 0.5, linger: float = 30.0, restart_limit: int = 5, restart_window: float = 600.0,
                 stall_timeout: float = STALL_TIMEOUT, execute_timeout: float | None = EXECUTE_TIMEOUT,
                 report: Callable[[str], None] | None = None) -> None:
        if interval <= 0 or linger <= 0:
            raise ValueError(f"interval and linger must be positive (seconds), got {interval} and {linger}")
        if stall_timeout <= 0 or (execute_timeout is not None and execute_timeout <= 0):
            raise ValueError(f"stall_timeout and execute_timeout must be positive (seconds), got {stall_timeout} and "
                             f"{execute_timeout}")
        if restart_limit < 1:
            raise ValueError(f"restart_limit must be at least 1, got {restart_limit}")
        self.server = server
        self.dependents = dict(dependents) if dependents is not None else spade_dependents(server.repository)
        self.interval = interval  # seconds between two checks
        self.linger = linger  # seconds a stub of a replaced model version may outlive the reload
        self.restart_limit = restart_limit  # server deaths within restart_window that end supervision
        self.restart_window = restart_window  # seconds
        self.stall_timeout = stall_timeout  # seconds without a heartbeat after which a stub counts as hung
        self.execute_timeout = execute_timeout  # seconds in one execution after which it does; None: no limit
        self.hangs = 0  # hung stubs ended
        self.report = report if report is not None else _logger.warning
        self.restarts: list[float] = []  # monotonic times of the server restarts
        self.recoveries = 0  # models brought back after a stub died
        self._instances: dict[str, set[str]] = {}  # model -> the instance names it had when all was well
        self._retry: dict[str, tuple[float, float]] = {}  # model that failed to load -> (next attempt at, pause)
        self._replaced: dict[int, float] = {}  # stub pid of a replaced model version -> when it was replaced
        self._reloaded = False  # a model was reloaded since the server started: Triton may hold a replaced version
        # A server whose restart failed: (its exit status, when to try again, the pause before that try).
        self._down: tuple[int, float, float] | None = None
        if server.pid is not None:
            self._learn_instances()  # now, before anything can die unseen

    # ------------------------------------------------------------------------------------------- the loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Check every `interval` seconds until `stop` is set (or forever: end it with KeyboardInterrupt).
        Raises `ServerError` when the server cannot be kept running."""
        stop = stop if stop is not None else threading.Event()
        while not stop.is_set():
            self.check()
            stop.wait(self.interval)

    def check(self) -> None:
        """One round: restart a dead server, reload the models that lost a stub, end hung stubs (reloaded the round
        after) and stubs left by a reload."""
        if self._down is None and self.server.pid is None:
            raise ServerError("the supervised server is not running; start it first")
        if self._down is not None:
            if time.monotonic() >= self._down[1]:
                self._start_again(self._down[0])
            return
        status = self.server.exit_status
        if status is not None:
            self._restart_server(status)
            return
        if not self._instances:
            self._learn_instances()
        now = time.monotonic()
        broken = self._broken_models()
        if broken and self.server.exit_status is not None:
            # Stubs vanish with a killed server before it is reaped: that is a server restart, not a reload.
            self._restart_server(self.server.exit_status)
            return
        for model in broken:
            if model not in self._retry or self._retry[model][0] <= now:
                self._recover(model)
        self._end_hung_stubs()
        self._end_lingering_stubs()

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server cleanly and without the wait Triton would add after a stub died (see the module
        docstring). The exit status of tritonserver (-9 when it was ended after its shutdown had done all it can)."""
        if self._down is not None or self.server.pid is None or self.server.exit_status is not None:
            return self.server.stop(timeout)
        broken = self._broken_models()
        for model in broken:
            try:
                self.server.unload_model(model)
            except ServerError as error:
                self.report(f"before stopping: {error}")
        if not broken and not self._reloaded:
            return self.server.stop(timeout)  # nothing Triton could wait on: its own clean shutdown
        server_pid = self.server.pid
        current = {stub.pid for stub in self.server.stubs() if stub.alive and stub.pid not in self._replaced}
        drained: float | None = None  # when the last current stub ended

        def finished() -> bool:
            # The current models' stubs end once Triton has finished their in-flight requests and unloaded them;
            # what still runs after a grace is the version Triton cannot unload.
            nonlocal drained
            if any(stub.pid in current and stub.alive for stub in python_stubs(server_pid)):
                return False
            drained = drained if drained is not None else time.monotonic()
            return time.monotonic() - drained > SHUTDOWN_GRACE

        code = self.server.stop(timeout, finished=finished)
        if code == -signal.SIGKILL and drained is not None:
            self.report("every current model was unloaded; tritonserver was then ended, since it would wait for a "
                        "replaced model version that a request to a dead stub keeps referenced")
        return code

    # ------------------------------------------------------------------------------------------- stubs
    def serving_stubs(self) -> list[Stub]:
        """The live stubs of the current model versions: not those of a version a reload replaced, which may linger
        (see the module docstring)."""
        return [stub for stub in self.server.stubs() if stub.alive and stub.pid not in self._replaced]

    def _learn_instances(self) -> None:
        """What a healthy server runs: every instance of every python-backend model, seen once all are ready."""
        self._instances = {}
        for stub in self.server.stubs():
            if stub.alive:
                self._instances.setdefault(stub.model, set()).add(stub.instance)

    def _broken_models(self) -> list[str]:
        """Models with an instance that has no live stub, and models still waiting for a load to succeed."""
        live: dict[str, set[str]] = {}
        for stub in self.serving_stubs():
            live.setdefault(stub.model, set()).add(stub.instance)
        broken = {model for model, instances in self._instances.items() if not instances <= live.get(model, set())}
        return sorted(broken | set(self._retry))

    def _recover(self, model: str) -> None:
        callers = [name for name in self.dependents.get(model, ()) if name != model]
        group = [*callers, model]
        if model not in self._retry:
            live = {stub.instance for stub in self.server.stubs() if stub.alive and stub.model == model}
            missing = sorted(self._instances.get(model, set()) - live)
            self.report(f"model {model!r}: stub of {', '.join(missing) or 'an instance'} is gone; taking "
                        f"{', '.join(repr(name) for name in group)} out of service and loading again")
        started = time.monotonic()
        self._replaced.update((stub.pid, started) for stub in self.server.stubs() if stub.model in group)
        self._reloaded = True
        try:
            # Callers first, so that their requests are refused as "not ready" instead of failing inside; unload
            # returns at once, and from then on the model's readiness (and the server's) says not ready.
            for name in group:
                self.server.unload_model(name)
            for name in reversed(group):
                self.server.load_model(name)
        except ServerError as error:
            pause = min(2 * self._retry[model][1], MAX_RETRY_PAUSE) if model in self._retry else 1.0
            self._retry[model] = (time.monotonic() + pause, pause)
            self.report(f"model {model!r} could not be brought back ({error}); trying again in {pause:.0f} s")
            return
        self._retry.pop(model, None)
        self.recoveries += 1
        self.report(f"model {model!r} serving again ({', '.join(reversed(group))} reloaded in "
                    f"{time.monotonic() - started:.1f} s)")

    def _end_hung_stubs(self) -> None:
        """End the current stubs that hang (see the module docstring): dead, the next round brings them back."""
        now = time.monotonic()
        for stub in self.serving_stubs():
            why = heartbeat.hang_reason(heartbeat.read(self.server.heartbeat_dir, stub.pid), stub.started, now,
                                        stall_timeout=self.stall_timeout, execute_timeout=self.execute_timeout)
            if why is None:
                continue
            try:
                os.kill(stub.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it ended by itself meanwhile: the next round sees it gone
            self.hangs += 1
            self.report(f"model {stub.model!r}: stub {stub.pid} of {stub.instance} {why}; ended it, to load the "
                        f"model again")

    def _end_lingering_stubs(self) -> None:
        """A replaced version's stubs normally end within seconds of the reload; one that lingers belongs to a
        version Triton cannot unload, and holds a copy of the model in memory for nothing."""
        now = time.monotonic()
        stubs = self.server.stubs()  # only our server's stubs: a pid we remember may have been reused since
        for stub in stubs:
            replaced = self._replaced.get(stub.pid)
            if stub.alive and replaced is not None and now - replaced > self.linger:
                os.kill(stub.pid, signal.SIGKILL)
                self.report(f"ended stub {stub.pid} of a replaced version of {stub.model!r} ({stub.instance}): "
                            f"{self.linger:.0f} s after it was replaced, Triton still has not unloaded that version")
        running = {stub.pid for stub in stubs}
        self._replaced = {pid: moment for pid, moment in self._replaced.items() if pid in running}

    # ------------------------------------------------------------------------------------------- the server
    def _restart_server(self, status: int) -> None:
        """The server died (exit `status`): restart it, unless it died too often."""
        now = time.monotonic()
        self.restarts = [moment for moment in self.restarts if now - moment < self.restart_window]
        tail = self.server.log_tail(8)
        if len(self.restarts) >= self.restart_limit:
            raise ServerError(f"tritonserver died {len(self.restarts) + 1} times within {self.restart_window:.0f} s "
                              f"(last exit status {status}); not restarting it again. Last lines of its log:\n{tail}")
        self.report(f"tritonserver exited by itself (status {status}); restarting it on the same ports. Last lines "
                    f"of its log:\n{tail}")
        self.restarts.append(now)
        self._start_again(status)

    def _start_again(self, status: int) -> None:
        """Start the dead server (exit `status`) again; where that fails, try again after a growing pause."""
        started = time.monotonic()
        try:
            self.server.restart()
        except ServerError as error:  # a port taken meanwhile, a model that no longer loads
            pause = min(2 * self._down[2], MAX_RETRY_PAUSE) if self._down is not None else 1.0
            self._down = (status, time.monotonic() + pause, pause)
            self.report(f"tritonserver did not start again: {error}; trying again in {pause:.0f} s")
            return
        self._down = None
        self._instances, self._retry, self._replaced, self._reloaded = {}, {}, {}, False
        self._learn_instances()
        self.report(f"tritonserver restarted (pid {self.server.pid}) and ready in {time.monotonic() - started:.1f} s")
