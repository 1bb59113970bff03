"""Signs of life of the python-backend stubs, for the supervisor: a stub that stopped (SIGSTOP, a frozen process) or
that is stuck inside one execution still looks alive and ready to Triton, and requests routed to it wait forever.

Each stub of our python-backend models (`triton_models/`) runs a `Heartbeat` once its model is loaded: a thread that
rewrites `<folder>/<pid>.json` every `PERIOD` seconds with the time (`time.monotonic()`, CLOCK_MONOTONIC: one clock
for every process of the machine), the start time of its process (to tell its file from one a previous process with
the same pid left), and when the execution running now began. The folder is the one `TritonServer` names in the
environment variable `ENVIRONMENT`, which the stubs inherit; without it there is no heartbeat. The supervisor reads
the files (`read`) and judges them (`hang_reason`). Torch-free.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spade_deploy.files import atomic_path

ENVIRONMENT = "SPADE_DEPLOY_HEARTBEATS"  # the folder of the heartbeat files
PERIOD = 1.0  # seconds between two beats


@dataclass(frozen=True)
class Beat:
    at: float  # time.monotonic() of the last beat
    started: int  # start time of the beating process: /proc/<pid>/stat field 22, clock ticks after boot
    busy_since: float | None  # time.monotonic() when the execution running now began; None when idle


def proc_stat(pid: int | str = "self") -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (the first is field 3, the state), or None where the
    process is gone."""
    try:
        # The command name may hold spaces and parentheses: the fields after the last ")" are safe.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(fields: list[str] | None) -> int | None:
    """A process's start time (field 22 of its stat: clock ticks after boot) from `proc_stat`'s fields."""
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


class Heartbeat:
    """Beats for this process while it lives (see the module docstring); `busy()` around each execution."""

    def __init__(self, folder: str | Path | None = None, period: float = PERIOD) -> None:
        folder = folder if folder is not None else os.environ.get(ENVIRONMENT)
        self.path = Path(folder) / f"{os.getpid()}.json" if folder else None
        self.period = period
        self._started = start_time(proc_stat())
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.path is not None:
            self._beat()
            self._thread = threading.Thread(target=self._run, name="spade-heartbeat", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def stop(self) -> None:
        """No more beats, and no file left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._beat()

    def _beat(self) -> None:
        if not self.path.parent.is_dir():
            return  # the folder went with the server's work files (a stub outliving its server): none to recreate
        beat = {"at": time.monotonic(), "started": self._started, "busy_since": self._busy_since}
        try:
            with atomic_path(self.path) as temporary:
                temporary.write_text(json.dumps(beat))
        except OSError:
            pass  # a full disk, say: this beat is missed (the next one tries again), the model keeps serving


def read(folder: Path, pid: int) -> Beat | None:
    """The last beat of process `pid`, or None where it never beat (or its file cannot be read)."""
    try:
        beat = json.loads((folder / f"{pid}.json").read_text())
        return Beat(at=float(beat["at"]), started=int(beat["started"]),
                    busy_since=None if beat["busy_since"] is None else float(beat["busy_since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hang_reason(beat: Beat | None, started: int | None, now: float, *, stall_timeout: float,
                execute_timeout: float | None) -> str | None:
    """Why a stub whose process started at `started` (its /proc start time) counts as hung at `now`, or None: its
    last beat is older than `stall_timeout` seconds, or one execution has run longer than `execute_timeout` (None:
    no limit). A stub that never beat, or whose file a previous process with its pid left, is not judged."""
    if beat is None or started is None or beat.started != started:
        return None
    if now - beat.at > stall_timeout:
        return f"has given no sign of life for {now - beat.at:.0f} s (stopped or frozen)"
    if execute_timeout is not None and beat.busy_since is not None and now - beat.busy_since > execute_timeout:
        return f"has been inside one execution for {now - beat.busy_since:.0f} s"
    return None
