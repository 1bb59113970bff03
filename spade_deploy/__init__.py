"""spade-deploy: train, export and serve SPADE (GauGAN) semantic image synthesis models.

The pipeline's stages are sub-packages, each importing only the ones before it: `model` -> `training` and `export`
-> `serve` -> `client`, `bench`, `cli`. The names below are the library's front door; they load on first use, so
`import spade_deploy.client` (and the served models) never import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "spade_deploy.model.checkpoint",
    "load_encoder": "spade_deploy.model.checkpoint",
    "load_generator": "spade_deploy.model.checkpoint",
    "save_encoder": "spade_deploy.model.checkpoint",
    "save_generator": "spade_deploy.model.checkpoint",
    "EncoderConfig": "spade_deploy.model.config",
    "GeneratorConfig": "spade_deploy.model.config",
    "generator_preset": "spade_deploy.model.config",
    "ConvEncoder": "spade_deploy.model.networks",
    "SPADEGenerator": "spade_deploy.model.networks",
    "encode_style": "spade_deploy.model.tensors",
    "sample_z": "spade_deploy.model.tensors",
    "to_semantic_input": "spade_deploy.model.tensors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spade_deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
