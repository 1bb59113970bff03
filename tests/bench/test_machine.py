"""The machine record: its folder name, and how much of the CPU others took during a run."""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from spade_deploy.bench import report
from spade_deploy.bench.machine import CpuTimes, cpu_competition, cpu_times, describe_machine, machine_slug

CHILD_CPU_S = 1.0  # CPU time the competing child spins for
# Spins until it has used CHILD_CPU_S of CPU (or a deadline passes, on a machine too busy to give it that), says
# so, then blocks until its stdin closes and exits at once: meanwhile it is another process, not yet our reaped child.
SPIN = f"""
import os, sys, time
deadline = time.monotonic() + 120
while time.process_time() < {CHILD_CPU_S} and time.monotonic() < deadline:
    pass
print(flush=True)
sys.stdin.read()
os._exit(0)
"""
SLACK_S = 0.1  # /proc/stat counts in clock ticks (10 ms), per CPU and field


def test_the_slug_tells_cpu_generations_apart() -> None:
    """Virtual machines may name two CPU generations alike ("AMD EPYC"); family and model keep their results apart."""
    zen3 = {"cpu": "AMD EPYC", "cpu_id": "family 25 model 1", "cores": 2}
    zen4 = zen3 | {"cpu_id": "family 25 model 17"}
    assert machine_slug(zen3) == "amd-epyc-f25m1-2c"
    assert machine_slug(zen4) == "amd-epyc-f25m17-2c"
    unknown = {"cpu": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "cpu_id": "family ? model ?", "cores": 8}
    assert machine_slug(unknown) == "intel-xeon-platinum-8480-8c"


def test_the_slug_of_this_machine_is_a_folder_name() -> None:
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*-\d+c", machine_slug(describe_machine(2)))


def test_a_competing_process_shows_and_our_children_do_not() -> None:
    """A process spinning for CHILD_CPU_S of CPU is another's (not waited for) until it is reaped, then ours, like a
    benchmark's Triton server. Judged against the CPU time the child actually got, whatever else runs here."""
    cores = os.cpu_count()
    start = cpu_times()
    child = subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([child.stdout], [], [], 180)[0], "the spinning child never reported"
        child.stdout.readline()
        child_s = _cpu_seconds(child.pid)
        competing_low, competing_high = _others_s(start, cores)
        gap_start = time.monotonic()
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    reaped_low, _ = _others_s(start, cores)
    gap_s = time.monotonic() - gap_start
    assert child_s >= 0.5 * CHILD_CPU_S
    assert competing_high >= child_s - SLACK_S  # every second the child ran counts as another's
    # Once reaped, its seconds move to ours: only what others ran meanwhile (at most every core) can be added.
    assert reaped_low <= competing_high - child_s + cores * gap_s + SLACK_S
    assert 0.0 <= cpu_competition(start, cores)["cpu_steal_share"] <= 1.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc/PID/stat (fields 14 and 15, after the name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _others_s(start: CpuTimes, cores: int) -> tuple[float, float]:
    """CPU seconds others took since `start` by `cpu_competition`, as (low, high): its share is of cores x a wall
    time that the clock before and after the call brackets, rounded to 3 decimals."""
    before = time.monotonic()
    share = cpu_competition(start, cores)["cpu_others_share"]
    after = time.monotonic()
    return (share - 5e-4) * cores * (before - start.wall_s), (share + 5e-4) * cores * (after - start.wall_s)


def test_the_gpus_are_recorded_where_nvidia_smi_lists_them(tmp_path: Path, monkeypatch) -> None:
    """A bench run on a GPU machine says which GPU and driver it ran on (here nvidia-smi is a script saying what
    one H200 machine's says); without nvidia-smi the list is empty."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert describe_machine(2)["gpus"] == []
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H200, 570.124.06'\n")
    fake.chmod(0o755)
    machine = describe_machine(2)
    assert machine["gpus"] == ["NVIDIA H200, 570.124.06"]
    assert "GiB; GPU NVIDIA H200, 570.124.06, Linux" in report.machine_line(machine)
