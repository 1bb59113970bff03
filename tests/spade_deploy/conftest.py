"""Tiny generator variants shared by the model and checkpoint tests, each with an official-format state dict and the
official functional forward's output on a synthetic label map (built once per session)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from spade_deploy.config import GeneratorConfig
from spade_deploy.labels import to_semantic_input
from spade_deploy.sampling import sample_z
from spade_deploy.synthetic import random_generator, synthetic_batch
from tests.official import (official_generator_forward, official_options, official_state_dict, save_official,
                            write_opt_txt)

TINY = dict(ngf=8, z_dim=16, crop_size=64, spade_hidden=16)  # SPADE hidden 16 instead of 128 keeps them fast

# Together these cover every value of every axis: VAE / segmap; batch / syncbatch / instance norm; normal / more /
# most; spectral or not; don't-care and instance-edge channels; a 5x5 SPADE kernel; a 2:1 aspect ratio.
VARIANTS: dict[str, dict] = {
    "segmap-syncbatch-normal-spectral-dontcare-edges": dict(label_nc=5, contain_dontcare_label=True,
                                                            use_instance=True),
    "segmap-batch-more-plain-edges-k5-wide": dict(label_nc=6, use_instance=True, norm="batch", spectral=False,
                                                  num_upsampling_layers="more", crop_size=128, aspect_ratio=2.0,
                                                  spade_kernel=5),
    "segmap-instance-more-spectral-dontcare": dict(label_nc=5, contain_dontcare_label=True, norm="instance",
                                                   num_upsampling_layers="more", crop_size=128),
    "segmap-syncbatch-most-plain": dict(label_nc=4, spectral=False, num_upsampling_layers="most", crop_size=128),
    "vae-syncbatch-normal-spectral-dontcare": dict(label_nc=5, contain_dontcare_label=True, use_vae=True),
    "vae-instance-normal-plain-edges": dict(label_nc=4, use_instance=True, use_vae=True, norm="instance",
                                            spectral=False),
    "vae-batch-most-spectral": dict(label_nc=3, use_vae=True, norm="batch", num_upsampling_layers="most",
                                    crop_size=128),
    "vae-batch-more-plain-wide": dict(label_nc=4, use_vae=True, norm="batch", spectral=False,
                                      num_upsampling_layers="more", crop_size=128, aspect_ratio=2.0),
}


@dataclass(frozen=True)
class Variant:
    name: str
    config: GeneratorConfig
    state: OrderedDict[str, torch.Tensor]  # official key names, non-trivial statistics and u, v
    semantic: torch.Tensor  # [1, semantic_nc, H, W] at the configured size
    z: torch.Tensor | None
    reference: torch.Tensor  # official_generator_forward(state, semantic, z)

    def write_official(self, directory: Path, *, with_opt_txt: bool) -> Path:
        """`directory/latest_net_G.pth`, and the official `opt.txt` beside it if asked."""
        path = save_official(self.state, directory)
        if with_opt_txt:
            write_opt_txt(directory, official_options(self.config))
        return path


@pytest.fixture(scope="session", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Variant:
    seed = sorted(VARIANTS).index(request.param)
    config = GeneratorConfig(**{**TINY, **VARIANTS[request.param]})
    state = official_state_dict(random_generator(config, seed=seed, calibration_batches=1), seed=seed)
    labels, instances = synthetic_batch(config, 1, seed=seed)
    semantic = to_semantic_input(labels, instances, config)
    z = sample_z(1, config.z_dim, seed) if config.use_vae else None
    with torch.no_grad():
        reference = official_generator_forward(state, semantic, z, official_options(config))
    # A comparison on saturated or flat outputs would prove little.
    assert 0.1 < float(reference.std()) and float((reference.abs() > 0.99).float().mean()) < 0.2, request.param
    return Variant(request.param, config, state, semantic, z, reference)
