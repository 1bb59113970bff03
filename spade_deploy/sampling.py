"""Where the randomness lives: seeded latent sampling and style encoding (never inside a network's forward)."""
from __future__ import annotations

import torch

from spade_deploy.networks import ConvEncoder


def sample_z(batch: int, z_dim: int, seed: int | None = None) -> torch.Tensor:
    """A standard-normal latent `[batch, z_dim]`; the same seed gives the same latent on every machine."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(batch, z_dim, generator=generator)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """`mu + eps * exp(logvar / 2)` with `eps` drawn from `seed`."""
    eps = sample_z(mu.shape[0], mu.shape[1], seed).to(mu)
    return mu + eps * torch.exp(0.5 * logvar)


@torch.no_grad()
def encode_style(encoder: ConvEncoder, image: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
    """Latent of a style image `[N, 3, h, w]` in [-1, 1]: `mu` without a seed, else a reparameterised sample."""
    mu, logvar = encoder(image)
    return mu if seed is None else reparameterize(mu, logvar, seed)
