"""The training tests run their tiny convolutions on one thread."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny convolutions run several times faster on one thread than on two fighting for a busy machine (restored
    for the other test packages)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
