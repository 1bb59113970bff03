"""Between numpy and the networks' tensors: images in [-1, 1], the one-hot + instance-edge input, latents.

The semantic input is built exactly as the official code does: a one-hot map over `label_nc (+1 don't-care)`
channels, then (with instance maps) one channel that is 1 wherever a 4-neighbour has another instance id. These
functions are traceable, so the exported graphs use the very same code.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import as_rgb_batch, check_not_empty
from spade_deploy.model.labels import check_semantic_input
from spade_deploy.model.networks import ConvEncoder
from spade_deploy.model.sampling import check_seed, sample_latent, sample_posterior


def rgb_to_tensor(images: ArrayLike) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` (or `[H, W, 3]`) -> float `[N, 3, H, W]` in [-1, 1] (the official ToTensor +
    Normalize(0.5, 0.5))."""
    batch = check_not_empty(as_rgb_batch(images))
    array = torch.from_numpy(np.ascontiguousarray(batch))
    return array.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """float `[N, 3, H, W]` in [-1, 1] -> uint8 `[N, H, W, 3]`: `round((x + 1) * 127.5)` clamped to 0..255."""
    # Cast last: TensorRT takes uint8 only at a network's edges, not as the input of another layer (a Transpose).
    return torch.round((image + 1.0) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8)


def tensor_to_rgb(images: torch.Tensor) -> np.ndarray:
    """float `[N, 3, H, W]` in [-1, 1] -> uint8 `[N, H, W, 3]` numpy (see `to_uint8_image`)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (float [N, 3, H, W] in [-1, 1]), got "
                         f"{type(images).__name__}")
    if not images.is_floating_point() or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a float tensor [N, 3, H, W] in [-1, 1] (the generator's output), got "
                         f"dtype {images.dtype}, shape {list(images.shape)}")
    return to_uint8_image(images.detach().float().cpu()).contiguous().numpy()


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """`[N, H, W]` ids -> `[N, 1, H, W]` float, 1 on both sides of every 4-neighbour id change (pads, no scatter:
    the same code runs eagerly and in the exported graph)."""
    ids = instance.long().unsqueeze(1)
    horizontal = (ids[:, :, :, 1:] != ids[:, :, :, :-1]).float()  # [N, 1, H, W-1]
    vertical = (ids[:, :, 1:, :] != ids[:, :, :-1, :]).float()  # [N, 1, H-1, W]
    edge = (F.pad(horizontal, (1, 0)) + F.pad(horizontal, (0, 1)) + F.pad(vertical, (0, 0, 1, 0))
            + F.pad(vertical, (0, 0, 0, 1)))
    return (edge > 0).float()


def one_hot_input(label: torch.Tensor, instance: torch.Tensor | None, config: GeneratorConfig) -> torch.Tensor:
    """Label indices `[N, H, W]` (and instance ids) -> `[N, semantic_nc, H, W]` float32, unchecked (traceable)."""
    semantic = F.one_hot(label.long(), config.num_label_channels).permute(0, 3, 1, 2).float()
    if not config.use_instance:
        return semantic
    return torch.cat([semantic, instance_edges(instance)], dim=1)


def to_semantic_input(labels: ArrayLike, instances: ArrayLike | None, config: GeneratorConfig,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Label indices `[N, H, W]` (and instance ids; numpy, lists or CPU tensors), checked on the CPU -> the generator
    input `[N, semantic_nc, H, W]`, built on `device` (default: the CPU): the indices travel, not the one-hot map."""
    labels, instances = check_semantic_input(labels, instances, config)
    return one_hot_input(torch.from_numpy(labels).to(device),
                         None if instances is None else torch.from_numpy(instances).to(device), config)


def sample_z(batch: int, z_dim: int, seed: int | None = None) -> torch.Tensor:
    """A standard-normal latent `[batch, z_dim]` (`spade_deploy.model.sampling.sample_latent` as a tensor)."""
    return torch.from_numpy(sample_latent(batch, z_dim, seed))


@torch.no_grad()
def encode_style(encoder: ConvEncoder, image: torch.Tensor, *, seed: int | None = None) -> torch.Tensor:
    """Latent of a style image `[N, 3, h, w]` in [-1, 1]: `mu` without a seed, else a seeded sample around it.
    `encoder.forward` checks `image` (a float tensor of its parameters' dtype, every dimension >= 1)."""
    check_seed(seed)  # before the encoder runs
    mu, logvar = encoder(image)
    if seed is None:
        return mu
    return torch.from_numpy(sample_posterior(mu.cpu().numpy(), logvar.cpu().numpy(), seed)).to(mu.device)
