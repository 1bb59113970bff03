"""RGB images: uint8 <-> [-1, 1] tensors, and PNG files written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy.model.images import as_rgb_batch, read_rgb, write_rgb
from spade_deploy.model.tensors import rgb_to_tensor, tensor_to_rgb


def test_uint8_round_trips_through_the_network_range() -> None:
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    tensor = rgb_to_tensor(image.astype(np.uint8))
    assert tensor.shape == (1, 3, 16, 16) and tensor.dtype == torch.float32
    assert float(tensor.min()) == -1.0 and float(tensor.max()) == 1.0
    assert np.array_equal(tensor_to_rgb(tensor)[0], image)


def test_tensor_to_rgb_rounds_and_clamps() -> None:
    values = torch.tensor([-2.0, -1.0, 0.0, 0.004, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert tensor_to_rgb(values)[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]


def test_png_write_read_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3)).astype(np.uint8)
    write_rgb(tmp_path / "image.png", image)
    assert np.array_equal(read_rgb(tmp_path / "image.png"), image)
    assert [path.name for path in tmp_path.iterdir()] == ["image.png"]


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4, 3), np.float32), r"style must be a uint8 RGB image, got dtype float32"),
    (np.zeros((4, 4), np.uint8), r"style must be \[H, W, 3\] or \[N, H, W, 3\] RGB, got shape \[4, 4\]"),
    (np.zeros((4, 4, 4), np.uint8), r"got shape \[4, 4, 4\]"),
])
def test_bad_rgb_input_is_refused(image: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_rgb_batch(image)


@pytest.mark.parametrize("image, message", [
    (np.full((4, 4, 3), 300.7), r"image must be a uint8 RGB image, got dtype float64"),  # a cast stored 44
    (np.full((4, 4, 3), -1), r"image must be a uint8 RGB image, got dtype int64"),  # a cast stored 255
    (np.zeros((4, 4), np.uint8), r"image must be \[H, W, 3\] RGB, got shape \[4, 4\]"),  # grey
    (np.zeros((4, 4, 4), np.uint8), r"image must be \[H, W, 3\] RGB, got shape \[4, 4, 4\]"),  # RGBA
    (np.zeros((1, 4, 4, 3), np.uint8), r"image must be \[H, W, 3\] RGB, got shape \[1, 4, 4, 3\]"),
    (np.zeros((0, 4, 3), np.uint8), r"image must be \[H, W, 3\] with at least one pixel, got shape \[0, 4, 3\]"),
])
def test_write_rgb_refuses_what_it_cannot_store_exactly(image: np.ndarray, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^cannot write .*image\.png: " + message):
        write_rgb(tmp_path / "image.png", image)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary


def test_write_rgb_refuses_a_path_it_cannot_be_written_to(tmp_path: Path) -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    (tmp_path / "out.png").mkdir()
    with pytest.raises(ValueError, match=r"cannot write .*out\.png: it is a folder; expected a PNG file path"):
        write_rgb(tmp_path / "out.png", image)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"cannot write .*file/sub/image\.png: .*file is a file, not a folder"):
        write_rgb(tmp_path / "file" / "sub" / "image.png", image)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "out.png"]
    write_rgb(tmp_path / "new" / "sub" / "image.png", image)  # missing folders are still created
    assert np.array_equal(read_rgb(tmp_path / "new" / "sub" / "image.png"), image)


def test_unreadable_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no such file"):
        read_rgb(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ValueError, match=r"cannot read .*broken.jpg as an image"):
        read_rgb(tmp_path / "broken.jpg")


def test_an_image_too_large_to_open_is_refused_by_name(tmp_path: Path) -> None:
    """A PNG of 20000x20000 zeros is a few hundred KB; PIL refuses to open an image that large (a decompression bomb),
    and the readers say so in a ValueError, as for any unreadable image."""
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    assert path.stat().st_size < 2 ** 20
    with pytest.raises(ValueError, match=r"bomb.png is too large an image to read: "):
        read_rgb(path)
