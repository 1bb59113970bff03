"""Label maps as numpy arrays: validation, raw dataset PNG values <-> class indices, PNG files, colour previews.

No torch here: the client and the served models read label maps with these functions too. The generator's one-hot
input is built from them in `spade_deploy.model.tensors`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import open_image, save_png

RAW_DONTCARE = 255  # raw PNG value the official datasets map to the don't-care index


def check_label_size(height: int, width: int, config: GeneratorConfig) -> None:
    """Raise `ValueError` unless the generator can produce an image of this size."""
    scale = 2 ** config.num_upsamplings
    if config.use_vae:
        if (height, width) != config.image_size:
            raise ValueError(f"label map is {height}x{width}, but this VAE generator's latent grid fixes its output "
                             f"at {config.image_size[0]}x{config.image_size[1]}")
    elif height % scale or width % scale or height < scale or width < scale:
        raise ValueError(f"label map is {height}x{width}; both sides must be positive multiples of {scale} "
                         f"(2**{config.num_upsamplings} for num_upsampling_layers={config.num_upsampling_layers!r})")
    if config.norm == "instance" and height * width == scale * scale:
        # Instance norm of a 1x1 latent grid is undefined (torch refuses it; so does the official code).
        raise ValueError(f"label map is {height}x{width}, a 1x1 latent grid, which instance norm cannot normalise; "
                         f"this instance-norm generator needs at least {2 * scale} pixels along one side")


def as_label_batch(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    """`[H, W]` or `[N, H, W]` integers (numpy, or anything `np.asarray` takes: CPU tensors, lists) -> `[N, H, W]`
    of the same integer dtype; anything else is a `ValueError` naming `name`."""
    array = np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers (class indices), got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must be [H, W] or [N, H, W], got shape {list(array.shape)}")
    return array


def check_label_range(labels: np.ndarray, config: GeneratorConfig) -> None:
    """Raise `ValueError` unless every value is a class index of this model (don't-care included)."""
    count = config.num_label_channels
    labels = np.asarray(labels)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= count):
        bad = np.unique(labels[(labels < 0) | (labels >= count)])
        dontcare = f" (index {config.label_nc} is don't-care)" if config.contain_dontcare_label else ""
        raise ValueError(f"labels must lie in [0, {count - 1}]{dontcare} for this model (label_nc={config.label_nc}"
                         f", contain_dontcare_label={config.contain_dontcare_label}); found "
                         f"{int(np.isin(labels, bad).sum())} values outside, e.g. {bad[:5].tolist()}")


def check_semantic_input(labels: ArrayLike, instances: ArrayLike | None,
                         config: GeneratorConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Everything the generator's input needs, checked without building it (to validate many maps before a long
    run): int64 `[N, H, W]` labels and instances (None for models without instance edges), or a `ValueError`."""
    labels = as_label_batch(labels).astype(np.int64)
    check_label_range(labels, config)
    check_label_size(labels.shape[1], labels.shape[2], config)
    if not config.use_instance:
        if instances is not None:
            raise ValueError("this model takes no instance map (use_instance=False); pass instances=None")
        return labels, None
    if instances is None:
        raise ValueError("this model uses instance edges (use_instance=True); pass an instance-id map of the "
                         "label map's size")
    instances = as_label_batch(instances, "instances").astype(np.int64)
    if instances.shape != labels.shape:
        raise ValueError(f"instances have shape {list(instances.shape)} but labels have {list(labels.shape)}; "
                         f"they must match")
    return labels, instances


def raw_to_labels(raw: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Raw values of a dataset label PNG -> class indices, as the official dataset loaders map them."""
    raw = np.asarray(raw)
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"raw label values must be integers, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if config.contain_dontcare_label:
        labels[raw == RAW_DONTCARE] = config.label_nc
    if config.preset == "ade20k":
        # ADE20K stores classes as 1..150 and "unlabelled" as 0.
        labels = labels - 1
        labels[labels == -1] = config.label_nc
    return labels


def labels_to_raw(labels: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Inverse of `raw_to_labels`: class indices -> the dataset's raw PNG values (uint8)."""
    labels = np.asarray(labels).astype(np.int64)
    raw = labels.copy()
    if config.preset == "ade20k":
        raw = labels + 1
        raw[labels == config.label_nc] = 0
    elif config.contain_dontcare_label:
        raw[labels == config.label_nc] = RAW_DONTCARE
    if raw.min(initial=0) < 0 or raw.max(initial=0) > 255:
        raise ValueError(f"labels {raw.min()}..{raw.max()} do not fit a uint8 label PNG")
    return raw.astype(np.uint8)


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as an integer array (uint8, uint16 or int32 for 32-bit instance maps); RGB images are refused."""
    with open_image(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path} is a {image.mode} image; a label or instance map must be a single-channel "
                             f"PNG (mode L, P, I or I;16)")
        return np.array(image)


def read_label_png(path: str | Path, config: GeneratorConfig) -> np.ndarray:
    """A dataset label PNG in the model's preset encoding -> class indices `[H, W]` int64, range-checked."""
    labels = raw_to_labels(read_png(path), config)
    try:
        check_label_range(labels, config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return labels


def write_label_png(path: str | Path, labels: np.ndarray, config: GeneratorConfig) -> None:
    """Class indices `[H, W]` -> a label PNG in the preset's raw encoding (read back by `read_label_png`)."""
    save_png(Image.fromarray(labels_to_raw(labels, config), mode="L"), path)


def write_instance_png(path: str | Path, instances: np.ndarray) -> None:
    """Instance ids `[H, W]` -> a 16-bit PNG, as Cityscapes stores them (PNG has no 32-bit grey, Pillow no mode I)."""
    instances = np.asarray(instances)
    if instances.min(initial=0) < 0 or instances.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"instance ids {instances.min()}..{instances.max()} do not fit a 16-bit PNG (0..65535)")
    save_png(Image.fromarray(instances.astype(np.uint16)), path)


def palette(count: int) -> np.ndarray:
    """`[count, 3]` uint8 colours, distinct per index: each index's bits spread over the three channels."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for index in range(count):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[index] = (red, green, blue)
    return colours


def colorize(labels: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    """Class indices `[H, W]` -> an RGB preview `[H, W, 3]` uint8 (don't-care is black)."""
    colours = palette(config.num_label_channels + 1)[1:]  # skip black for class 0
    if config.contain_dontcare_label:
        colours[config.label_nc] = 0
    return colours[np.asarray(labels)]
