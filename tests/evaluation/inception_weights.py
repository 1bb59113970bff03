"""A random-weight FID Inception in the layout of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (which cannot
be downloaded here), for the Inception, FID and `evaluate` tests."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from spade_deploy.evaluation.inception import FidInception


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The weight file's keys (no `num_batches_tracked`, as in a converted file) with random values that keep the
    activations' scale through the 90-odd layers (He-normal convolutions, batch norm near the identity), so the
    features differ from image to image as a trained network's do."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std + mean

    def uniform(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    state = {}
    for key, value in FidInception().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("conv.weight"):
            state[key] = normal(value.shape, math.sqrt(2 / value[0].numel()))
        elif key.endswith(("bn.weight", "bn.running_var")):
            state[key] = uniform(value.shape, 0.8, 1.2)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            state[key] = normal(value.shape, 0.1)
        else:  # fc.weight, fc.bias
            state[key] = normal(value.shape, 0.01)
    return state


def write_random_inception(path: Path, seed: int = 0) -> Path:
    torch.save(random_inception_state(seed), path)
    return path
