"""Where the randomness lives: seeded latents and the reparameterisation (never inside a network's forward).

In numpy, so that the served pipeline (which runs without torch) and the library draw the same latent for a seed on
every machine; `spade_deploy.model.tensors.sample_z` hands the same numbers to PyTorch.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np

Array = TypeVar("Array")  # a numpy array or a torch tensor


def sample_latent(batch: int, z_dim: int, seed: int | None = None) -> np.ndarray:
    """A standard-normal latent `[batch, z_dim]` float32; the same seed gives the same latent everywhere (None:
    fresh entropy). Any int64 seed is taken (as its 64-bit two's complement: numpy seeds are non-negative)."""
    for name, value in (("batch", batch), ("z_dim", z_dim)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    check_seed(seed)
    entropy = None if seed is None else int(seed) % 2 ** 64
    return np.random.default_rng(entropy).standard_normal((batch, z_dim), dtype=np.float32)


def reparameterize(mu: Array, logvar: Array, eps: Array) -> Array:
    """`mu + eps * exp(logvar / 2)`: a sample of the encoder's posterior (numpy arrays, or torch tensors with their
    gradients, as training needs)."""
    std = np.exp(0.5 * logvar) if isinstance(logvar, np.ndarray) else (0.5 * logvar).exp()
    return mu + eps * std


def style_or_seed_latent(z_dim: int, seed: int | None,
                         encoded: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """`[1, z_dim]` latent of one item by the served pipeline's rule: with a style's `encoded` = (mu, logvar), its
    mean (no seed) or a seeded sample around it; without one, a seeded standard-normal sample."""
    if encoded is None:
        return sample_latent(1, z_dim, seed)
    mu, logvar = encoded
    return mu.astype(np.float32) if seed is None else sample_posterior(mu, logvar, seed)


def sample_posterior(mu: np.ndarray, logvar: np.ndarray, seed: int | None = None) -> np.ndarray:
    """`reparameterize` with `eps = sample_latent(..., seed)`: a seeded sample around a style's mean."""
    return reparameterize(mu, logvar, sample_latent(mu.shape[0], mu.shape[1], seed)).astype(np.float32)


def check_seed(seed: object) -> None:
    """Raise `ValueError` unless `seed` is None or an int in int64's range, the seeds the served pipeline takes (a
    float or a string would otherwise be truncated or parsed into another seed's latent)."""
    if seed is None:
        return
    if not _is_int(seed):
        raise ValueError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    limits = np.iinfo(np.int64)
    if not limits.min <= int(seed) <= limits.max:  # int(): numpy compares uint64 with int64 as floats
        raise ValueError(f"seed must fit int64 ({limits.min}..{limits.max}), got {seed}")


def _is_int(value: object) -> bool:
    """A Python or numpy integer; not a bool, which Python counts as an int."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
