"""spade_deploy.serve.heartbeat: what a stub writes, what the supervisor reads and judges (the supervised server's
own hang test is in test_supervision.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spade_deploy.serve import heartbeat
from spade_deploy.serve.heartbeat import Beat, Heartbeat, hang_reason, proc_stat, start_time

PERIOD = 0.05


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(PERIOD / 2)


def test_beats_name_the_process_and_the_running_execution(tmp_path: Path) -> None:
    beats = Heartbeat(tmp_path, period=PERIOD)
    try:
        assert beats.path == tmp_path / f"{os.getpid()}.json"
        first = heartbeat.read(tmp_path, os.getpid())
        assert first is not None and first.busy_since is None
        assert first.started == start_time(proc_stat(os.getpid())) is not None
        wait_until(lambda: heartbeat.read(tmp_path, os.getpid()).at > first.at)  # it beats on its own
        with beats.busy():
            began = time.monotonic()
            wait_until(lambda: heartbeat.read(tmp_path, os.getpid()).busy_since is not None)
            assert heartbeat.read(tmp_path, os.getpid()).busy_since <= began
        wait_until(lambda: heartbeat.read(tmp_path, os.getpid()).busy_since is None)
    finally:
        beats.stop()
    assert not beats.path.exists()
    time.sleep(3 * PERIOD)
    assert not beats.path.exists(), "a beat after stop()"


def test_without_a_folder_nothing_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(heartbeat.ENVIRONMENT, raising=False)
    beats = Heartbeat(period=PERIOD)
    assert beats.path is None
    with beats.busy():
        pass
    beats.stop()


def test_the_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(heartbeat.ENVIRONMENT, str(tmp_path))
    beats = Heartbeat(period=PERIOD)
    try:
        assert heartbeat.read(tmp_path, os.getpid()) is not None
    finally:
        beats.stop()


def test_unreadable_beats_are_none(tmp_path: Path) -> None:
    assert heartbeat.read(tmp_path, 123) is None
    (tmp_path / "123.json").write_text("{not json")
    assert heartbeat.read(tmp_path, 123) is None
    (tmp_path / "123.json").write_text('{"at": 1.0}')
    assert heartbeat.read(tmp_path, 123) is None


def test_a_gone_process_has_no_stat() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert proc_stat(child.pid) is None and start_time(None) is None


@pytest.mark.parametrize("beat, started, expected", [
    (None, 7, None),  # never beat: not judged (loading, or not one of our models)
    (Beat(at=100.0, started=6, busy_since=None), 7, None),  # a previous process with this pid left the file
    (Beat(at=100.0, started=7, busy_since=None), None, None),  # the process is gone
    (Beat(at=95.0, started=7, busy_since=None), 7, None),  # 5 s since the last beat
    (Beat(at=60.0, started=7, busy_since=None), 7, "has given no sign of life for 40 s (stopped or frozen)"),
    (Beat(at=99.0, started=7, busy_since=50.0), 7, None),  # busy for 50 s
    (Beat(at=99.0, started=7, busy_since=10.0), 7, "has been inside one execution for 90 s"),
])
def test_hang_reason(beat: Beat | None, started: int | None, expected: str | None) -> None:
    assert hang_reason(beat, started, 100.0, stall_timeout=30.0, execute_timeout=60.0) == expected


def test_no_execute_limit_judges_only_the_beat() -> None:
    busy = Beat(at=99.0, started=7, busy_since=0.0)
    assert hang_reason(busy, 7, 100.0, stall_timeout=30.0, execute_timeout=None) is None


def test_a_removed_folder_is_not_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "heartbeats"
    folder.mkdir()
    beats = Heartbeat(folder, period=PERIOD)
    try:
        shutil.rmtree(folder)  # the server's work files removed while the stub runs on
        time.sleep(4 * PERIOD)
        assert not folder.exists()
        assert beats._thread.is_alive()  # still beating, should the folder come back
    finally:
        beats.stop()
