"""RGB images: reading style references, converting between uint8 HWC and the networks' [-1, 1] NCHW, writing PNGs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """`PIL.Image.open` whose failures (missing file, not an image) are `ValueError`s naming the file."""
    path = Path(path)
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


def as_rgb_batch(images: np.ndarray | torch.Tensor, name: str = "style") -> np.ndarray:
    """`[H, W, 3]` or `[N, H, W, 3]` uint8 -> `[N, H, W, 3]` uint8; anything else is a `ValueError`."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 RGB image, got dtype {array.dtype}")
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"{name} must be [H, W, 3] or [N, H, W, 3] RGB, got shape {list(array.shape)}")
    return array[None] if array.ndim == 3 else array


def rgb_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [-1, 1] (the official ToTensor + Normalize(0.5, 0.5))."""
    array = torch.from_numpy(np.ascontiguousarray(as_rgb_batch(images)))
    return array.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_rgb(images: torch.Tensor) -> np.ndarray:
    """float `[N, 3, H, W]` in [-1, 1] -> uint8 `[N, H, W, 3]`: `round((x + 1) * 127.5)` clamped to 0..255."""
    scaled = torch.round((images.detach().float() + 1.0) * 127.5).clamp(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """`[H, W, 3]` uint8 -> PNG, written atomically."""
    save_png(Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB"), path)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically: a reader never sees a half-written file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="PNG")
    temporary.replace(path)
