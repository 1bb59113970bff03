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
    except Image.DecompressionBombError as error:  # a small file can hold a huge image: PIL refuses to open it
        raise ValueError(f"{path} is too large an image to read: {error}") from None
    except OSError as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from error


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file -> `[H, W, 3]` uint8 RGB."""
    with open_image(path) as image:
        return np.array(image.convert("RGB"))


def _as_rgb(images: ArrayLike, name: str, batch: bool) -> np.ndarray:
    """uint8 `[H, W, 3]` (or also `[N, H, W, 3]` when `batch`) as a numpy array, or a `ValueError` naming `name`.
    Other dtypes are refused, not cast: a cast wraps 300 to 44 and -1 to 255, and floats have no one range."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 RGB image, got dtype {array.dtype}")
    if array.ndim not in ((3, 4) if batch else (3,)) or array.shape[-1] != 3:
        shapes = "[H, W, 3] or [N, H, W, 3]" if batch else "[H, W, 3]"
        raise ValueError(f"{name} must be {shapes} RGB, got shape {list(array.shape)}")
    return array


def as_rgb_batch(images: ArrayLike, name: str = "style") -> np.ndarray:
    """`[H, W, 3]` or `[N, H, W, 3]` uint8 -> `[N, H, W, 3]` uint8; anything else is a `ValueError`."""
    array = _as_rgb(images, name, batch=True)
    return array[None] if array.ndim == 3 else array


def check_not_empty(batch: np.ndarray, name: str = "style") -> np.ndarray:
    """`batch` (`as_rgb_batch`'s) when it holds at least one image of at least 1x1, else a `ValueError`: what an
    encoder needs (its resize has nothing to read otherwise)."""
    if min(batch.shape) < 1:
        raise ValueError(f"{name} must have every dimension >= 1 (an image of at least 1x1), got shape "
                         f"{list(batch.shape)}")
    return batch


def write_rgb(path: str | Path, image: ArrayLike) -> None:
    """`[H, W, 3]` uint8 -> PNG, written atomically; other dtypes and shapes are a `ValueError`."""
    try:
        image = _as_rgb(image, "image", batch=False)
    except ValueError as error:
        raise ValueError(f"cannot write {path}: {error}") from None
    if not image.size:
        raise ValueError(f"cannot write {path}: image must be [H, W, 3] with at least one pixel, got shape "
                         f"{list(image.shape)}")
    save_png(Image.fromarray(image, mode="RGB"), path)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically: a reader never sees a half-written file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; expected a PNG file path")
    folder = next(parent for parent in path.parents if parent.exists())  # missing folders are created
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
