"""Exponential moving average of the generator, and the batch-norm re-estimation that makes it usable.

The EMA averages the parameters only; its buffers (batch-norm statistics, spectral-norm vectors) follow the trained
generator. Averaged weights do not match those buffers, so before a save a copy gets both anew: spectral-norm vectors
converged on the averaged weights (the trained generator's underestimate their largest singular value), then batch-norm
statistics recomputed with those weights. That copy is what gets exported; training state is left untouched.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from spade_deploy.model.networks import SPADEGenerator, converge_spectral_norms

Batch = tuple[torch.Tensor, torch.Tensor | None]  # semantic [N, semantic_nc, H, W], z [N, z_dim] or None


class GeneratorEMA:
    def __init__(self, generator: SPADEGenerator, decay: float) -> None:
        self.decay = decay  # weight of the old average per step
        self.model = copy.deepcopy(generator).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        """Average in `generator`'s parameters (after an optimiser step) and copy its buffers."""
        for average, current in zip(self.model.parameters(), generator.parameters(), strict=True):
            average.lerp_(current, 1.0 - self.decay)
        self.copy_buffers(generator)

    @torch.no_grad()
    def copy_buffers(self, generator: nn.Module) -> None:
        for average, current in zip(self.model.buffers(), generator.buffers(), strict=True):
            average.copy_(current)

    def export(self, batches: Iterable[Batch]) -> SPADEGenerator:
        """An eval-mode copy of the average with its spectral norms converged and its batch-norm statistics
        recomputed on `batches`."""
        model = copy.deepcopy(self.model)
        converge_spectral_norms(model)
        recompute_batchnorm(model, batches)
        return model


@torch.no_grad()
def recompute_batchnorm(generator: SPADEGenerator, batches: Iterable[Batch]) -> None:
    """Replace every batch norm's running statistics by their plain average over `batches`.

    Only the batch norms run in training mode: the spectral-norm convs stay in eval mode and keep their vectors."""
    norms = [module for module in generator.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # instance norm: nothing to estimate
        return
    generator.eval()
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
        norm.train()
    for semantic, z in batches:
        generator(semantic, z)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    generator.eval()
