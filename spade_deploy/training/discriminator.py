"""The official multi-scale PatchGAN discriminator (module names as in NVlabs/SPADE, so `*_net_D.pth` keys match).

Each scale is an `NLayerDiscriminator` on `cat(label map, image)`; the next scale sees the input average-pooled by 2.
Every scale returns all its intermediate activations (the last one is the patch prediction) for feature matching.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

LEAKY_SLOPE = 0.2
KERNEL = 4
PADDING = 2  # ceil((KERNEL - 1) / 2), as the official code computes it
MAX_WIDTH = 512


@dataclass(frozen=True)
class DiscriminatorConfig:
    input_nc: int  # semantic_nc + 3: the label map concatenated with the RGB image
    ndf: int = 64  # width of the first layer; doubled per layer up to 512
    n_layers: int = 4  # strided convs before the 1-channel prediction conv; the last of them has stride 1
    num_d: int = 2  # scales; each one sees the previous scale's input average-pooled by 2
    spectral: bool = True  # spectral norm on the middle convs (which are followed by instance norm)

    def __post_init__(self) -> None:
        for name in ("input_nc", "ndf", "n_layers", "num_d"):
            if getattr(self, name) < 1:
                raise ValueError(f"discriminator {name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NLayerDiscriminator(nn.Module):
    """`[N, input_nc, H, W]` -> the activations of `model0 .. model{n_layers}`; the last is `[N, 1, h, w]` logits."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        width = config.ndf
        layers = [nn.Sequential(nn.Conv2d(config.input_nc, width, KERNEL, stride=2, padding=PADDING),
                                nn.LeakyReLU(LEAKY_SLOPE))]
        for index in range(1, config.n_layers):
            previous, width = width, min(width * 2, MAX_WIDTH)
            stride = 1 if index == config.n_layers - 1 else 2
            # Bias removed because instance norm follows (the official get_nonspade_norm_layer does the same).
            conv = nn.Conv2d(previous, width, KERNEL, stride=stride, padding=PADDING, bias=False)
            normed = nn.Sequential(spectral_norm(conv) if config.spectral else conv,
                                   nn.InstanceNorm2d(width, affine=False))
            layers.append(nn.Sequential(normed, nn.LeakyReLU(LEAKY_SLOPE)))
        layers.append(nn.Sequential(nn.Conv2d(width, 1, KERNEL, stride=1, padding=PADDING)))
        for index, layer in enumerate(layers):
            self.add_module(f"model{index}", layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.children():
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """`cat(semantic, image)` `[N, semantic_nc + 3, H, W]` -> per scale, the list of activations (last = logits)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        for index in range(config.num_d):
            self.add_module(f"discriminator_{index}", NLayerDiscriminator(config))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for index, scale in enumerate(self.children()):
            if index:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs
