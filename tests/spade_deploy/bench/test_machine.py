"""The machine record's folder name."""
from __future__ import annotations

import re

from spade_deploy.bench.machine import describe_machine, machine_slug


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
