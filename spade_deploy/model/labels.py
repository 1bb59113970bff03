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
# Pillow scales 2- and 4-bit grey PNGs to 0..255 for display (stored 1 reads as 85 or 17); a map wants stored values.
LOW_BIT_GREY_SCALE = {"L;2": 85, "L;4": 17}


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


def _as_integers(values: ArrayLike, name: str, meaning: str, ndims: tuple[int, ...] = ()) -> np.ndarray:
    """`values` as a numpy integer array (bool is refused: a mask is no map of ids) with one of `ndims` dimensions
    (any when empty), or a `ValueError` naming `name`."""
    try:
        array = np.asarray(values)
    except ValueError as error:  # a ragged nested list; numpy's message names no argument
        raise ValueError(f"{name} must be a rectangular array (nested lists of equal length); numpy could not make "
                         f"one: {error}") from None
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers ({meaning}), got dtype {array.dtype}")
    if ndims and array.ndim not in ndims:
        shapes = " or ".join(("[H, W]", "[N, H, W]")[ndim - 2] for ndim in ndims)
        raise ValueError(f"{name} must be {shapes}, got shape {list(array.shape)}")
    return array


def _as_png_map(values: ArrayLike, name: str, meaning: str) -> np.ndarray:
    """An integer map `[H, W]` of at least one pixel (a PNG cannot be empty), or a `ValueError` naming `name`."""
    array = _as_integers(values, name, meaning, (2,))
    if not array.size:
        raise ValueError(f"{name} must be [H, W] with at least one pixel, got shape {list(array.shape)}")
    return array


def as_label_batch(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    """`[H, W]` or `[N, H, W]` integers (numpy, or anything `np.asarray` takes: CPU tensors, lists) -> `[N, H, W]`
    of the same integer dtype; anything else is a `ValueError` naming `name`."""
    array = _as_integers(labels, name, "class indices", (2, 3))
    return array[None] if array.ndim == 2 else array


def check_label_range(labels: ArrayLike, config: GeneratorConfig) -> None:
    """Raise `ValueError` unless `labels` are integers and every value is a class index of this model (don't-care
    included)."""
    count = config.num_label_channels
    labels = _as_integers(labels, "labels", "class indices")
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
    labels = as_label_batch(labels)
    if labels.shape[0] == 0:
        raise ValueError("labels: an empty batch (0 label maps); pass at least one")
    check_label_range(labels, config)  # before the cast: uint64 values beyond int64 would read as negative
    labels = labels.astype(np.int64)
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
    raw = _as_integers(raw, "raw label values", "a label PNG's pixel values")
    labels = raw.astype(np.int64)
    if config.contain_dontcare_label:
        labels[raw == RAW_DONTCARE] = config.label_nc
    if config.preset == "ade20k":
        # ADE20K stores classes as 1..150 and "unlabelled" as 0.
        labels = labels - 1
        labels[labels == -1] = config.label_nc
    return labels


def labels_to_raw(labels: ArrayLike, config: GeneratorConfig) -> np.ndarray:
    """Inverse of `raw_to_labels`: class indices of this model (range-checked, so that `read_label_png` takes what
    is written) -> the dataset's raw PNG values (uint8)."""
    check_label_range(labels, config)
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
    """A PNG's stored values as an integer array (uint8 for 1- to 8-bit PNGs, uint16, or int32 for 32-bit instance
    maps); RGB images are refused."""
    with open_image(path) as image:
        if image.mode not in ("1", "L", "P", "I", "I;16"):
            raise ValueError(f"{path} is an image of mode {image.mode}; a label or instance map must be a "
                             f"single-channel PNG (mode 1, L, P, I or I;16)")
        decoder = image.tile[0][3] if image.format == "PNG" and image.tile else None  # before np.array loads it
        values = np.array(image)
    if image.mode == "1":
        return values.astype(np.uint8)  # bool -> 0 and 1
    if decoder in LOW_BIT_GREY_SCALE:
        return values // LOW_BIT_GREY_SCALE[decoder]
    return values


def read_label_png(path: str | Path, config: GeneratorConfig) -> np.ndarray:
    """A dataset label PNG in the model's preset encoding -> class indices `[H, W]` int64, range-checked."""
    labels = raw_to_labels(read_png(path), config)
    try:
        check_label_range(labels, config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return labels


def write_label_png(path: str | Path, labels: ArrayLike, config: GeneratorConfig) -> None:
    """Class indices `[H, W]` of this model -> a label PNG in the preset's raw encoding (read back by
    `read_label_png`); floats, other shapes and values outside the model's classes are a `ValueError`."""
    try:
        raw = labels_to_raw(_as_png_map(labels, "labels", "class indices"), config)
    except ValueError as error:
        raise ValueError(f"cannot write {path}: {error}") from None
    save_png(Image.fromarray(raw, mode="L"), path)


def write_instance_png(path: str | Path, instances: ArrayLike) -> None:
    """Instance ids `[H, W]` -> a 16-bit PNG, as Cityscapes stores them (PNG has no 32-bit grey, Pillow no mode I);
    floats, other shapes and ids outside 0..65535 are a `ValueError`."""
    try:
        instances = _as_png_map(instances, "instances", "instance ids")
    except ValueError as error:
        raise ValueError(f"cannot write {path}: {error}") from None
    if instances.min() < 0 or instances.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"cannot write {path}: instance ids {instances.min()}..{instances.max()} do not fit a "
                         f"16-bit PNG (0..65535)")
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


def colorize(labels: ArrayLike, config: GeneratorConfig) -> np.ndarray:
    """Class indices of this model `[H, W]` (any shape) -> an RGB preview `[H, W, 3]` uint8 (don't-care is black)."""
    check_label_range(labels, config)
    colours = palette(config.num_label_channels + 1)[1:]  # skip black for class 0
    if config.contain_dontcare_label:
        colours[config.label_nc] = 0
    return colours[np.asarray(labels)]
