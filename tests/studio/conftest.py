"""The studio servers the API and browser tests share: one `spade-deploy paint` process per model for the session."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.fixtures.serving import Exported
from tests.studio.process import Studio


@pytest.fixture(scope="session")
def bundled_studio() -> Iterator[Studio]:
    """The studio over the bundled landscape model (PyTorch in the server process), as `spade-deploy paint` starts."""
    studio = Studio()
    yield studio
    status, output = studio.stop()
    assert status == 0, output


@pytest.fixture(scope="session")
def vae_studio(exported_vae: Exported) -> Iterator[Studio]:
    """The studio over the serving tests' tiny VAE export and its encoder (ONNX Runtime): seed and style controls,
    a don't-care class, instance edges."""
    studio = Studio("--onnx", str(exported_vae.generator_onnx), "--onnx-encoder", str(exported_vae.encoder_onnx))
    yield studio
    status, output = studio.stop()
    assert status == 0, output
