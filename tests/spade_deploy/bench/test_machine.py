"""The machine record: its folder name, and how much of the CPU others took during a run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from spade_deploy.bench.machine import cpu_competition, cpu_times, describe_machine, machine_slug

SPIN = "import time\nend = time.perf_counter() + 1.0\nwhile time.perf_counter() < end: pass"


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
    """A process spinning for 1 s of a 1.5 s window on this machine: another's (not waited for) until it is reaped,
    then ours, like a benchmark's Triton server."""
    start = cpu_times()
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    time.sleep(1.5)
    cores = os.cpu_count()
    competing = cpu_competition(start, cores)
    child.wait()
    reaped = cpu_competition(start, cores)
    assert competing["cpu_others_share"] >= 0.5 / (1.5 * cores)  # at least half a core for its second
    assert reaped["cpu_others_share"] <= competing["cpu_others_share"] - 0.4 / (1.5 * cores)
    assert 0.0 <= reaped["cpu_steal_share"] <= 1.0
