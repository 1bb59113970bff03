"""The evaluation tests' random-weight FID Inception: its weight file and the network loaded from it, once per
session."""
from __future__ import annotations

from pathlib import Path

import pytest

from spade_deploy.evaluation.inception import FidInception, load_inception
from tests.evaluation.inception_weights import write_random_inception


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / "pt_inception.pth")


@pytest.fixture(scope="session")
def inception(weights: Path) -> FidInception:
    return load_inception(weights)
