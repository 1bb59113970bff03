"""The one options tree of a training run: what `--dry-run` prints and `RUN/training_options.json` holds.

Every part is a small frozen dataclass that checks itself; the networks get their own configs out of it, never the
whole tree. `check_resumable` decides which differences a `--resume` may bring (paths, devices, the run length).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from spade_deploy.model.config import ENCODER_LATENT, EncoderConfig, GeneratorConfig
from spade_deploy.training.discriminator import DiscriminatorConfig

Preprocess = Literal["resize_and_crop", "fixed"]
Amp = Literal["none", "bf16", "fp16"]
LrDecay = Literal["epoch", "step"]
PREPROCESS_MODES = ("resize_and_crop", "fixed")
AMP_MODES = ("none", "bf16", "fp16")
LR_DECAY_MODES = ("epoch", "step")


@dataclass(frozen=True)
class DataOptions:
    dataroot: str  # dataset folder, in the layout of the generator's preset
    preprocess: Preprocess = "resize_and_crop"  # official preprocess_mode: resize square + random crop, or fixed size
    load_size: int = 286  # square size before the random crop (resize_and_crop only)
    flip: bool = True  # random horizontal flips
    num_workers: int = 2  # DataLoader worker processes per rank

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess must be one of {list(PREPROCESS_MODES)}, got {self.preprocess!r}")
        if self.load_size < 1:
            raise ValueError(f"load_size must be positive, got {self.load_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class LossOptions:
    lambda_feat: float = 10.0  # discriminator feature matching (L1), divided by the number of scales
    lambda_vgg: float = 10.0  # VGG19 perceptual loss; 0 trains without it (--no-vgg-loss)
    lambda_kld: float = 0.05  # KL divergence of the encoder's posterior (a sum over the batch)
    vgg_weights: str | None = None  # torchvision-layout VGG19 state dict (features.N.weight / bias)
    vgg_imagenet_norm: bool = False  # ImageNet-normalise VGG's input (a deviation: official feeds [-1, 1] as is)

    def __post_init__(self) -> None:
        if self.lambda_vgg > 0 and not self.vgg_weights:
            raise ValueError("the VGG perceptual loss needs VGG19 weights: pass --vgg-weights PATH (a torchvision "
                             "vgg19 state dict saved with torch.save), or train without it with --no-vgg-loss")


@dataclass(frozen=True)
class OptimOptions:
    lr_g: float = 1e-4  # TTUR: generator (and encoder) learning rate
    lr_d: float = 4e-4  # TTUR: discriminator learning rate
    beta1: float = 0.0  # Adam betas of the official TTUR setting
    beta2: float = 0.9
    decay_start: float = 0.5  # fraction of the run after which the LRs fall linearly to 0 (1.0: constant)
    lr_decay: LrDecay = "epoch"  # official: one LR step down after each epoch of the decay; "step": after every step
    ema_decay: float | None = None  # EMA of the generator per step; None: no EMA
    ema_bn_batches: int = 100  # random batches that re-estimate the EMA generator's batch-norm statistics per save

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"decay_start is a fraction of the run in [0, 1], got {self.decay_start}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), e.g. 0.999, got {self.ema_decay}")
        if self.lr_decay not in LR_DECAY_MODES:
            raise ValueError(f"lr_decay must be one of {list(LR_DECAY_MODES)}, got {self.lr_decay!r}")
        if self.ema_bn_batches < 1:
            raise ValueError(f"ema_bn_batches must be positive, got {self.ema_bn_batches}")


@dataclass(frozen=True)
class RunOptions:
    run_dir: str  # holds training_options.json, TensorBoard logs and checkpoints/
    batch_size: int = 1  # global batch: split evenly over the ranks
    max_steps: int | None = None  # run length in optimiser steps ...
    epochs: int | None = None  # ... or in passes over the dataset (exactly one of the two)
    seed: int = 0  # network init and data order; rank r seeds its own random streams with seed + r
    device: str = "auto"  # auto / cpu / cuda (torchrun: cuda:LOCAL_RANK)
    amp: Amp = "none"  # mixed precision: bf16, or fp16 with gradient scalers (CUDA only)
    save_every: int = 1000  # steps between checkpoints (and image grids); the last step is always saved
    keep: int = 3  # periodic step checkpoints kept beside latest.pt
    log_every: int = 50  # steps between TensorBoard scalars

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give the run length as exactly one of --max-steps or --epochs")
        for name in ("batch_size", "max_steps", "epochs", "save_every", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.keep < 0:
            raise ValueError(f"--keep must be >= 0, got {self.keep}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class EvalOptions:
    dataroot: str | None = None  # validation split, in the training data's layout; None: no evaluation while training
    every: int = 1  # epochs between evaluations (and one before the first step and one after the last)
    segmenter: str | None = None  # ONNX segmenter from `spade-deploy train-segmenter`; None: the bundled landscape one
    inception: str | None = None  # pt_inception-2015-12-05 weights: adds FID and KID
    limit: int | None = None  # score the first N label maps of the split only

    def __post_init__(self) -> None:
        for name in ("every", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"eval {name} must be positive, got {value}")


@dataclass(frozen=True)
class TrainingOptions:
    generator: GeneratorConfig
    encoder: EncoderConfig | None  # present exactly when generator.use_vae
    discriminator: DiscriminatorConfig
    data: DataOptions
    loss: LossOptions
    optim: OptimOptions
    run: RunOptions
    eval: EvalOptions = EvalOptions()

    def __post_init__(self) -> None:
        config = self.generator
        if config.use_vae != (self.encoder is not None):
            raise ValueError("an encoder config is needed exactly when the generator uses a VAE")
        if config.use_vae and config.z_dim != ENCODER_LATENT:
            raise ValueError(f"a VAE generator trained with the encoder needs z_dim={ENCODER_LATENT} (the encoder's "
                             f"fixed latent width), got {config.z_dim}")
        if self.discriminator.input_nc != config.semantic_nc + 3:
            raise ValueError(f"discriminator input_nc must be semantic_nc + 3 = {config.semantic_nc + 3}, "
                             f"got {self.discriminator.input_nc}")
        if self.optim.lr_decay == "epoch" and self.run.epochs is None:
            raise ValueError("the official per-epoch LR decay needs the run length in epochs (--epochs); a run of "
                             "--max-steps decays per step (--lr-decay step)")
        if self.data.preprocess == "resize_and_crop":
            if config.aspect_ratio != 1.0:
                raise ValueError(f"resize_and_crop makes square crops; aspect_ratio={config.aspect_ratio} needs "
                                 f"preprocess 'fixed'")
            if self.data.load_size < config.crop_size:
                raise ValueError(f"load_size {self.data.load_size} is smaller than crop_size {config.crop_size}")
        _check_sizes(config, self.run.batch_size)
        _check_discriminator_scales(self.discriminator, config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_sizes(config: GeneratorConfig, batch_size: int) -> None:
    """The generator trains at exactly the size asked for, and its first norm layer (SPADE in head_0, on the latent
    grid) has more than one value per channel to normalise: batch norm over batch x grid, instance norm over the grid.
    How the batch is split over processes is the loop's check (`loop.check_start`)."""
    scale = 2 ** config.num_upsamplings
    upsamplings = f"2**{config.num_upsamplings} upsamplings, num_upsampling_layers {config.num_upsampling_layers!r}"
    if not _exact(config):
        height, width = config.image_size
        aspect = f" at aspect_ratio {config.aspect_ratio:g}" if config.aspect_ratio != 1.0 else ""
        nearest = _nearest_crop_sizes(config, _exact)
        fix = (f"crop_size {' or '.join(map(str, nearest))}" if nearest
               else f"a crop_size that makes both sides multiples of {scale}")
        raise ValueError(f"crop_size {config.crop_size}{aspect} asks for {config.crop_size / config.aspect_ratio:g}x"
                         f"{config.crop_size} (HxW) images, but the generator's sides are multiples of {scale} "
                         f"({upsamplings}): it would train at {height}x{width}. Use {fix}")
    if config.latent_height * config.latent_width > 1:
        return
    # An exact crop with a 1x1 grid is square, so twice the crop (a 2x2 grid) is always found.
    grid = f"crop_size {config.crop_size} gives the generator a 1x1 latent grid (crop_size / {scale}: {upsamplings})"
    larger = _nearest_crop_sizes(config, lambda c: _exact(c) and c.latent_height * c.latent_width > 1)[-1]
    if config.norm == "instance":
        raise ValueError(f"{grid}, and its first instance norm (SPADE in head_0) cannot normalise a single value per "
                         f"channel and sample. Use crop_size {larger} or more")
    if batch_size == 1:
        raise ValueError(f"{grid}: with batch_size 1 its first batch norm (SPADE in head_0) sees 1 value per channel, "
                         f"and batch norm cannot train on one. Use crop_size {larger} or more, or batch_size 2 or more")


def _exact(config: GeneratorConfig) -> bool:
    """Whether the generator's images are the crop: crop_size wide and crop_size / aspect_ratio high."""
    height, width = config.image_size
    return width == config.crop_size and height == config.crop_size / config.aspect_ratio


def _nearest_crop_sizes(config: GeneratorConfig, fits: Callable[[GeneratorConfig], bool]) -> list[int]:
    """The nearest crop sizes below and above `config.crop_size` for which `fits` holds: multiples of the generator's
    scale, up to 64 of them above (an aspect ratio that no multiple satisfies gets none)."""
    scale = 2 ** config.num_upsamplings
    multiple = config.crop_size // scale
    found = []
    for candidates in (range(multiple, 0, -1), range(multiple + 1, multiple + 65)):
        for crop in (candidate * scale for candidate in candidates):
            try:
                candidate = config.replace(crop_size=crop)
            except ValueError:  # an empty latent grid
                continue
            if crop != config.crop_size and fits(candidate):
                found.append(crop)
                break
    return found


def _check_discriminator_scales(discriminator: DiscriminatorConfig, config: GeneratorConfig) -> None:
    """Each scale average-pools the previous one's input by 2 (rounding up); the instance norms of the middle layers
    (present from n_layers 2) need more than one value per channel, so the last scale must see more than 1x1."""
    if discriminator.n_layers < 2:
        return
    largest = max(config.image_size)
    smallest = [-(-side // 2 ** (discriminator.num_d - 1)) for side in config.image_size]
    if smallest == [1, 1]:
        usable = next(scales for scales in range(1, discriminator.num_d) if largest <= 2 ** scales)
        raise ValueError(f"the discriminator's num_d={discriminator.num_d} scales pool the {config.image_size[0]}x"
                         f"{config.image_size[1]} images down to 1x1, where its instance norms have a single value "
                         f"per channel: use num_d {usable} or less, or a larger crop_size")


# Options a resumed run may change: where things are, how fast they run, what a save exports, how long training goes
# on (the last only with --reschedule: see the loop).
RESUMABLE_CHANGES = {"data.dataroot", "data.num_workers", "loss.vgg_weights", "optim.ema_bn_batches", "run.run_dir",
                     "run.device", "run.max_steps", "run.epochs", "run.save_every", "run.keep", "run.log_every",
                     *(f"eval.{field.name}" for field in dataclasses.fields(EvalOptions))}
# What runs saved before an option existed did in its place: such a run resumes only with that behaviour.
LEGACY_VALUES = {"optim.lr_decay": "step", "loss.vgg_imagenet_norm": True}


def check_resumable(options: TrainingOptions, saved: dict[str, Any]) -> None:
    """Raise `ValueError` listing every option that differs from the checkpoint's and would change the training."""
    current = _flatten(options.to_dict())
    before = {**LEGACY_VALUES, **_flatten(saved)}
    differing = sorted(key for key in current.keys() | before.keys()
                       if key not in RESUMABLE_CHANGES and current.get(key) != before.get(key))
    if differing:
        listing = ", ".join(f"{key}: {before.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise ValueError(f"--resume continues the checkpoint's run, but these options differ from it: {listing}. "
                         f"Rerun with the original options (only {sorted(RESUMABLE_CHANGES)} may change), or "
                         f"start a new --run-dir")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
