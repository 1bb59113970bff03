"""Synthetic data and random-weight models that behave like trained ones, for demos, tests and benchmarks.

No pretrained weights or datasets can be downloaded, so parity checks need stand-ins that exercise every rewrite:
label maps with irregular regions (the boundary share decides the sparse path's speed), and models whose batch-norm
statistics and spectral-norm vectors are non-trivial yet realistic (calibrated on data, as training leaves them),
with outputs spread over [-1, 1] instead of saturated or collapsed to 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator, converge_spectral_norms, init_weights
from spade_deploy.model.tensors import to_semantic_input


def synthetic_label_map(height: int, width: int, *, num_regions: int = 16, num_classes: int = 8,
                        seed: int = 0) -> np.ndarray:
    """`[H, W]` int64 class indices: `num_regions` irregular regions (`_regions`), each given a class in
    `[0, num_classes)`; neighbouring regions may share a class, as in real maps."""
    rng = np.random.default_rng(seed)
    region = _regions(height, width, num_regions, rng)
    classes = rng.integers(0, num_classes, size=num_regions)
    return classes[region].astype(np.int64)


def _regions(height: int, width: int, num_regions: int, rng: np.random.Generator) -> np.ndarray:
    """`[H, W]` region indices: a Voronoi partition of a noise-warped grid (some regions may come out empty)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    # Smooth random warps make region borders wander instead of being straight Voronoi edges.
    warp = max(height, width) / 10.0
    for frequency in (1.0, 2.0, 4.0):
        phase = rng.uniform(0, 2 * np.pi, size=4)
        amplitude = warp / frequency
        ys_w = ys + amplitude * np.sin(2 * np.pi * frequency * xs / width + phase[0]) * np.cos(
            2 * np.pi * frequency * ys / height + phase[1])
        xs = xs + amplitude * np.sin(2 * np.pi * frequency * ys / height + phase[2]) * np.cos(
            2 * np.pi * frequency * xs / width + phase[3])
        ys = ys_w
    centres = rng.uniform((0, 0), (height, width), size=(num_regions, 2))
    # The nearest centre, one centre at a time (hundreds of regions at full size: no [regions, H, W] array); the
    # first of equally near ones, as an argmin.
    nearest, region = np.full((height, width), np.inf), np.zeros((height, width), np.int64)
    for index, (y, x) in enumerate(centres):
        distance = (ys - y) ** 2 + (xs - x) ** 2
        closer = distance < nearest
        nearest[closer], region[closer] = distance[closer], index
    return region


def synthetic_instance_map(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """`[H, W]` int32 instance ids: each class region split into a few instances along random vertical cuts."""
    rng = np.random.default_rng(seed)
    width = labels.shape[1]
    cuts = np.sort(rng.integers(1, width, size=3))
    column_part = np.searchsorted(cuts, np.arange(width), side="right")
    return (labels.astype(np.int64) * 1000 + column_part[None, :]).astype(np.int32)


def every_class_map(height: int, width: int, num_classes: int, *, seed: int = 0) -> np.ndarray:
    """A `synthetic_label_map` in which every class of `[0, num_classes)` appears: twice as many regions as classes,
    the regions that came out non-empty given the classes in turn (shuffled)."""
    rng = np.random.default_rng(seed)
    region = _regions(height, width, 2 * num_classes, rng)
    present = np.unique(region)
    if len(present) < num_classes:
        raise ValueError(f"a {height}x{width} map holds too few regions ({len(present)}) for all {num_classes} "
                         f"classes")
    classes = np.zeros(2 * num_classes, np.int64)
    classes[present] = rng.permutation(np.resize(np.arange(num_classes), len(present)))
    return classes[region]


def synthetic_batch(config: GeneratorConfig, batch: int, *, height: int | None = None, width: int | None = None,
                    num_regions: int = 16, seed: int = 0,
                    every_class: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Label maps `[N, H, W]` of `num_regions` regions with classes drawn from every one-hot index incl. don't-care
    (with `every_class`: each map holds every index, `every_class_map`), and instance maps if the model uses them."""
    default_height, default_width = config.image_size
    height, width = height or default_height, width or default_width
    classes = config.num_label_channels
    labels = np.stack([every_class_map(height, width, classes, seed=seed + item) if every_class else
                       synthetic_label_map(height, width, num_regions=num_regions, num_classes=classes,
                                           seed=seed + item)
                       for item in range(batch)])
    instances = (np.stack([synthetic_instance_map(labels[item], seed=seed + item) for item in range(batch)])
                 if config.use_instance else None)
    return labels, instances


@torch.no_grad()
def random_generator(config: GeneratorConfig, *, seed: int = 0, calibration_batches: int = 2,
                     output_std: float = 0.5, modulation_gain: float = 1.0) -> SPADEGenerator:
    """An eval-mode generator with random official-init weights, calibrated like a trained one: batch-norm running
    statistics are the exact statistics of synthetic batches, the spectral-norm u, v are converged,
    and the last conv is scaled so outputs spread over [-1, 1] (std about `output_std`).

    `modulation_gain` multiplies SPADE's gamma and beta convs: a gain of 1e4 gives activations of ~1e3 before the last
    conv, as in trained models that modulate strongly, where float32 rounding starts to show."""
    torch.manual_seed(seed)
    generator = SPADEGenerator(config)
    init_weights(generator)
    converge_spectral_norms(generator)  # the calibration passes below then keep them converged
    for module in generator.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            # Zero biases would hide bias-folding mistakes; biases on the scale of the weights' contribution keep
            # batch-norm inputs from being a near-constant offset (which no trained model has).
            weight = module.weight
            if hasattr(module, "weight_orig"):  # what the layer applies: weight_orig over its largest singular value
                weight = module.weight_orig / torch.linalg.matrix_norm(module.weight_orig.flatten(1), ord=2)
            fan_in = weight[0].numel()
            module.bias.normal_(0.0, 0.5 * float(weight.std()) * fan_in ** 0.5)
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: running stats = the calibration data's statistics
    for name, module in generator.named_modules():
        if name.endswith(("mlp_gamma", "mlp_beta")):
            module.weight.mul_(modulation_gain)
            module.bias.mul_(modulation_gain)
    generator.train()
    for index in range(calibration_batches):
        # Enough maps that no channel is constant over the calibration set, even on a 1x1 latent grid.
        labels, instances = synthetic_batch(config, 4, seed=seed * 100 + index)
        generator(to_semantic_input(labels, instances, config),
                  torch.randn(4, config.z_dim) if config.use_vae else None)
    for module in generator.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    generator.eval()
    labels, instances = synthetic_batch(config, 2, seed=seed * 100 + 99)
    pre_tanh = torch.atanh(generator(to_semantic_input(labels, instances, config),
                                     torch.randn(2, config.z_dim) if config.use_vae else None)
                           .clamp(-0.999999, 0.999999))
    # Scale what the weights contribute; the bias is a per-channel constant that would otherwise dominate the std.
    signal = pre_tanh - generator.conv_img.bias.view(1, -1, 1, 1)
    generator.conv_img.weight.mul_(output_std / max(float(signal.std()), 1e-6))
    return generator


@torch.no_grad()
def random_encoder(config: EncoderConfig, *, seed: int = 0) -> ConvEncoder:
    """An eval-mode encoder with official-init weights and power-iterated spectral-norm vectors."""
    torch.manual_seed(seed)
    encoder = ConvEncoder(config)
    init_weights(encoder)
    for module in encoder.modules():
        if isinstance(module, nn.Linear):
            module.bias.normal_(0.0, 0.05)
    encoder.train()
    for _ in range(3):
        encoder(torch.rand(2, 3, 256, 256) * 2 - 1)
    return encoder.eval()


def random_style(batch: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """`[N, H, W, 3]` uint8 smooth random images (style references)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(height // 16, 2), max(width // 16, 2), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
