"""RGB images as numpy arrays: reading style references, checking batches, writing PNGs (no torch here)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from spade_deploy.files import atomic_path


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """`PIL.Image.open` whose failures (missing file, not an image) are `ValueError`s naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected an image file")
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    try:
        with Image.open(path) as image:
            yield image
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file -> `[H, W, 3]` uint8 RGB."""
    with open_image(path) as image:
        return np.array(image.convert("RGB"))


def as_rgb_batch(images: ArrayLike, name: str = "style") -> np.ndarray:
    """`[H, W, 3]` or `[N, H, W, 3]` uint8 -> `[N, H, W, 3]` uint8; anything else is a `ValueError`."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 RGB image, got dtype {array.dtype}")
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"{name} must be [H, W, 3] or [N, H, W, 3] RGB, got shape {list(array.shape)}")
    return array[None] if array.ndim == 3 else array


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """`[H, W, 3]` uint8 -> PNG, written atomically."""
    save_png(Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB"), path)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically: a reader never sees a half-written file."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
