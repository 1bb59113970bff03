"""A tiny in-process benchmark result (ngf 8, 64 px, every runtime available here), computed once per session."""
from __future__ import annotations

from typing import Any

import pytest

from spade_deploy.bench.inprocess import Options, run_inprocess
from spade_deploy.config import GeneratorConfig

TINY = GeneratorConfig(label_nc=6, contain_dontcare_label=True, ngf=8, spade_hidden=16, crop_size=64)


@pytest.fixture(scope="session")
def inprocess_result() -> dict[str, Any]:
    return run_inprocess(TINY, options=Options(batches=(1, 2), repeats=2, warmup=1))
