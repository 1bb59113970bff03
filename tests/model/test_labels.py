"""Label maps: the one-hot + instance-edge input, raw dataset PNG values per preset, PNG files, palettes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy.model.config import GeneratorConfig, generator_preset
from spade_deploy.model.labels import (as_label_batch, check_semantic_input, colorize, palette, raw_to_labels,
                                       read_label_png, read_png, write_instance_png, write_label_png)
from spade_deploy.model.tensors import to_semantic_input

EDGES = GeneratorConfig(label_nc=4, contain_dontcare_label=True, use_instance=True, crop_size=64)


def direct_semantic_input(labels: np.ndarray, instances: np.ndarray | None, config: GeneratorConfig) -> np.ndarray:
    """The official construction written out pixel by pixel: one-hot scatter, then a pixel is an edge when any
    4-neighbour has another instance id."""
    batch, height, width = labels.shape
    channels = config.num_label_channels + int(instances is not None)
    semantic = np.zeros((batch, channels, height, width), np.float32)
    for n in range(batch):
        for y in range(height):
            for x in range(width):
                semantic[n, labels[n, y, x], y, x] = 1.0
                if instances is None:
                    continue
                neighbours = [(y + dy, x + dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                              if 0 <= y + dy < height and 0 <= x + dx < width]
                if any(instances[n, ny, nx] != instances[n, y, x] for ny, nx in neighbours):
                    semantic[n, -1, y, x] = 1.0
    return semantic


def test_semantic_input_matches_direct_construction() -> None:
    rng = np.random.default_rng(0)
    # Blocky random maps: long same-id runs, and boundaries in both directions.
    labels = np.kron(rng.integers(0, 5, (2, 8, 16)), np.ones((1, 4, 4), np.int64))  # [2, 32, 64], 4 = don't-care
    instances = np.kron(rng.integers(0, 3, (2, 16, 8)), np.ones((1, 2, 8), np.int64)).astype(np.int32)
    semantic = to_semantic_input(labels, instances, EDGES)
    assert semantic.dtype == torch.float32 and semantic.shape == (2, EDGES.semantic_nc, 32, 64)
    assert np.array_equal(semantic.numpy(), direct_semantic_input(labels, instances, EDGES))
    no_edges = EDGES.replace(use_instance=False)
    assert np.array_equal(to_semantic_input(labels, None, no_edges).numpy(),
                          direct_semantic_input(labels, None, no_edges))


def test_instance_edges_mark_both_sides_of_a_boundary() -> None:
    instances = np.zeros((32, 32), np.int32)
    instances[:, 16:] = 7  # a vertical boundary between columns 15 and 16
    instances[20:, :] = 9  # a horizontal one between rows 19 and 20
    edges = to_semantic_input(np.zeros((32, 32), np.int64), instances, EDGES)[0, -1]
    expected = np.zeros((32, 32), np.float32)
    expected[:20, 15:17] = 1
    expected[19:21, :] = 1
    assert np.array_equal(edges.numpy(), expected)


@pytest.mark.parametrize("preset, raw, labels", [
    ("ade20k", [0, 1, 2, 150], [150, 0, 1, 149]),  # classes stored 1..150, 0 = unlabelled -> don't-care
    ("coco", [0, 1, 181, 255], [0, 1, 181, 182]),  # 255 = unlabelled -> don't-care (index 182)
    ("cityscapes", [0, 7, 26, 34], [0, 7, 26, 34]),  # labelIds as they are
])
def test_raw_png_values_map_to_indices_per_preset(preset: str, raw: list[int], labels: list[int],
                                                   tmp_path: Path) -> None:
    config = generator_preset(preset)
    raw_map = np.array([raw], np.uint8)
    assert raw_to_labels(raw_map, config).tolist() == [labels]
    Image.fromarray(raw_map, mode="L").save(tmp_path / "raw.png")
    assert read_label_png(tmp_path / "raw.png", config).tolist() == [labels]
    # And back: our writer stores the preset's raw values.
    write_label_png(tmp_path / "written.png", np.array([labels]), config)
    assert np.array(Image.open(tmp_path / "written.png")).tolist() == [raw]


@pytest.mark.parametrize("preset", ["ade20k", "coco", "cityscapes"])
def test_label_png_round_trip(preset: str, tmp_path: Path) -> None:
    config = generator_preset(preset)
    labels = np.random.default_rng(1).integers(0, config.num_label_channels, (40, 56))
    write_label_png(tmp_path / "labels.png", labels, config)
    read = read_label_png(tmp_path / "labels.png", config)
    assert read.dtype == np.int64 and np.array_equal(read, labels)


def test_instance_png_round_trip_keeps_16_bit_ids(tmp_path: Path) -> None:
    instances = np.random.default_rng(2).integers(0, 65_536, (24, 40))  # cityscapes ids are class * 1000 + k
    write_instance_png(tmp_path / "instances.png", instances)
    assert np.array_equal(read_png(tmp_path / "instances.png"), instances)


def test_palette_and_colorize() -> None:
    colours = palette(256)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert len({tuple(colour) for colour in colours}) == 256
    config = generator_preset("ade20k")
    preview = colorize(np.array([[0, 1], [149, 150]]), config)
    assert preview.shape == (2, 2, 3) and preview.dtype == np.uint8
    assert preview[1, 1].tolist() == [0, 0, 0]  # don't-care is black
    assert len({tuple(preview[y, x]) for y in range(2) for x in range(2)}) == 4
    assert not (preview[:1] == 0).all(axis=-1).any()  # no class is black


# ---------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("labels, instances, message", [
    (np.full((32, 32), 5), np.zeros((32, 32)), r"labels must lie in \[0, 4\] \(index 4 is don't-care\) .* found "
                                               r"1024 values outside, e.g. \[5\]"),
    (np.full((32, 32), -1), np.zeros((32, 32)), r"labels must lie in \[0, 4\].* e.g. \[-1\]"),
    (np.zeros((32, 32), np.float32), np.zeros((32, 32)), r"labels must hold integers \(class indices\), got dtype "
                                                         r"float32"),
    (np.zeros((32, 32), bool), np.zeros((32, 32)), r"labels must hold integers .* got dtype bool"),
    (np.zeros(32, np.int64), np.zeros(32), r"labels must be \[H, W\] or \[N, H, W\], got shape \[32\]"),
    (np.zeros((1, 1, 32, 32), np.int64), np.zeros((1, 1, 32, 32)), r"got shape \[1, 1, 32, 32\]"),
    (np.zeros((32, 32), np.int64), np.zeros((32, 64), np.int32), r"instances have shape \[1, 32, 64\] but labels "
                                                                 r"have \[1, 32, 32\]"),
    (np.zeros((32, 32), np.int64), np.zeros((32, 32), np.float64), r"instances must hold integers"),
    (np.zeros((32, 32), np.int64), None, r"this model uses instance edges \(use_instance=True\)"),
    (np.zeros((32, 48), np.int64), np.zeros((32, 48), np.int32), r"label map is 32x48; both sides must be positive "
                                                                 r"multiples of 32"),
    (np.zeros((0, 32), np.int64), np.zeros((0, 32), np.int32), r"label map is 0x32"),
])
def test_bad_label_input_is_refused(labels: np.ndarray, instances: np.ndarray | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_semantic_input(labels, instances, EDGES)


def test_instances_for_a_model_without_edges_are_refused() -> None:
    with pytest.raises(ValueError, match=r"this model takes no instance map \(use_instance=False\)"):
        to_semantic_input(np.zeros((32, 32), np.int64), np.zeros((32, 32), np.int32),
                          EDGES.replace(use_instance=False))


def test_instance_norm_generator_needs_more_than_one_latent_position() -> None:
    config = EDGES.replace(use_instance=False, norm="instance")
    with pytest.raises(ValueError, match=r"label map is 32x32, a 1x1 latent grid, which instance norm cannot "
                                         r"normalise; this instance-norm generator needs at least 64 pixels"):
        to_semantic_input(np.zeros((32, 32), np.int64), None, config)
    assert to_semantic_input(np.zeros((32, 64), np.int64), None, config).shape == (1, 5, 32, 64)


def test_vae_generator_takes_only_its_own_size() -> None:
    config = EDGES.replace(use_vae=True, use_instance=False)
    with pytest.raises(ValueError, match=r"label map is 32x32, but this VAE generator's latent grid fixes its "
                                         r"output at 64x64"):
        to_semantic_input(np.zeros((32, 32), np.int64), None, config)


def test_bad_label_files_are_refused(tmp_path: Path) -> None:
    config = generator_preset("cityscapes")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png is an image of mode RGB; a label or instance map must be a "
                                         r"single-channel PNG"):
        read_label_png(tmp_path / "rgb.png", config)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "void.png")
    with pytest.raises(ValueError, match=r"void.png: labels must lie in \[0, 34\] .* e.g. \[255\]"):
        read_label_png(tmp_path / "void.png", config)  # cityscapes has no don't-care index
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*text.png as an image"):
        read_label_png(tmp_path / "text.png", config)
    with pytest.raises(ValueError, match=r"no such file: .*missing.png"):
        read_label_png(tmp_path / "missing.png", config)
    with pytest.raises(ValueError, match=r"raw label values must hold integers \(a label PNG's pixel values\), got "
                                         r"dtype float32"):
        raw_to_labels(np.zeros((2, 2), np.float32), config)


def test_low_bit_depth_pngs_read_as_their_stored_values(tmp_path: Path) -> None:
    # A 1-bit PNG is single-channel too (Pillow mode "1", bools); 2- and 4-bit grey ones Pillow scales to 0..255.
    Image.fromarray(np.array([[0, 1, 1, 0]], bool)).save(tmp_path / "1.png")
    assert Image.open(tmp_path / "1.png").mode == "1"
    read = read_png(tmp_path / "1.png")
    assert read.dtype == np.uint8 and read.tolist() == [[0, 1, 1, 0]]
    assert read_label_png(tmp_path / "1.png", generator_preset("cityscapes")).tolist() == [[0, 1, 1, 0]]
    for bits in (2, 4):
        stored = np.array([[0, 1, 2, 3, 2 ** bits - 1]], np.uint8)
        Image.fromarray(stored, mode="L").save(tmp_path / f"{bits}.png", bits=bits)
        assert (tmp_path / f"{bits}.png").read_bytes()[24] == bits  # the IHDR bit depth: Pillow wrote what we test
        read = read_png(tmp_path / f"{bits}.png")
        assert read.dtype == np.uint8 and np.array_equal(read, stored)


CITYSCAPES = generator_preset("cityscapes")  # 35 classes, no don't-care


@pytest.mark.parametrize("labels, message", [
    (np.array([[1.7, 2.9]]), r"labels must hold integers \(class indices\), got dtype float64"),  # not truncated
    (np.array([[True, False]]), r"labels must hold integers \(class indices\), got dtype bool"),
    (np.full((4, 4), 200), r"labels must lie in \[0, 34\] for this model .* found 16 values outside, e.g. \[200\]"),
    (np.array([[0, -1]]), r"labels must lie in \[0, 34\] .* e.g. \[-1\]"),
    (np.zeros(4, np.int64), r"labels must be \[H, W\], got shape \[4\]"),
    (np.zeros((1, 4, 4), np.int64), r"labels must be \[H, W\], got shape \[1, 4, 4\]"),
    (np.zeros((0, 4), np.int64), r"labels must be \[H, W\] with at least one pixel, got shape \[0, 4\]"),
    ([[1, 2], [3]], r"labels must be a rectangular array \(nested lists of equal length\); numpy could not make "
                    r"one: .*inhomogeneous shape"),
])
def test_write_label_png_refuses_what_it_cannot_store_exactly(labels: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^cannot write .*labels\.png: " + message):
        write_label_png(tmp_path / "labels.png", labels, CITYSCAPES)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary


def test_write_label_png_checks_the_uint8_encoding_of_models_with_many_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"labels 0\.\.299 do not fit a uint8 label PNG"):
        write_label_png(tmp_path / "labels.png", np.array([[0, 299]]), GeneratorConfig(label_nc=300))
    write_label_png(tmp_path / "labels.png", [[0, 1], [2, 255]], GeneratorConfig(label_nc=300))  # lists are arrays
    assert read_png(tmp_path / "labels.png").tolist() == [[0, 1], [2, 255]]


@pytest.mark.parametrize("instances, message", [
    (np.array([[1.9, 3.5]]), r"instances must hold integers \(instance ids\), got dtype float64"),
    (np.zeros((4, 4), bool), r"instances must hold integers \(instance ids\), got dtype bool"),
    (np.array([[-1, 3]]), r"instance ids -1\.\.3 do not fit a 16-bit PNG \(0\.\.65535\)"),
    (np.array([[0, 70_000]]), r"instance ids 0\.\.70000 do not fit a 16-bit PNG"),
    (np.zeros(4, np.int32), r"instances must be \[H, W\], got shape \[4\]"),
    (np.zeros((2, 4, 4), np.int32), r"instances must be \[H, W\], got shape \[2, 4, 4\]"),
    (np.zeros((4, 0), np.int32), r"instances must be \[H, W\] with at least one pixel, got shape \[4, 0\]"),
    ([[1], [2, 3]], r"instances must be a rectangular array \(nested lists of equal length\)"),
])
def test_write_instance_png_refuses_what_it_cannot_store_exactly(instances: object, message: str,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^cannot write .*instances\.png: " + message):
        write_instance_png(tmp_path / "instances.png", instances)
    assert not list(tmp_path.iterdir())


def test_map_writers_refuse_a_folder_as_the_file(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()
    with pytest.raises(ValueError, match=r"cannot write .*out\.png: it is a folder; expected a PNG file path"):
        write_label_png(tmp_path / "out.png", np.zeros((4, 4), np.int64), CITYSCAPES)
    with pytest.raises(ValueError, match=r"cannot write .*out\.png: it is a folder"):
        write_instance_png(tmp_path / "out.png", np.zeros((4, 4), np.int32))
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"] and not list((tmp_path / "out.png").iterdir())


@pytest.mark.parametrize("labels, message", [
    (np.array([[-1]]), r"labels must lie in \[0, 34\] .* e.g. \[-1\]"),  # was the last class's colour
    (np.array([[500]]), r"labels must lie in \[0, 34\] .* e.g. \[500\]"),
    (np.array([[1.0]]), r"labels must hold integers \(class indices\), got dtype float64"),
    ([[1, 2], [3]], r"labels must be a rectangular array"),
])
def test_colorize_refuses_what_is_no_class_of_the_model(labels: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        colorize(labels, CITYSCAPES)


def test_ragged_label_lists_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^labels must be a rectangular array \(nested lists of equal length\); "
                                         r"numpy could not make one: .*inhomogeneous shape"):
        as_label_batch([[0, 1], [2]])
    with pytest.raises(ValueError, match=r"^instances must be a rectangular array"):
        check_semantic_input(np.zeros((32, 32), np.int64), [[0, 1], [2]], EDGES)
    with pytest.raises(ValueError, match=r"^labels must be a rectangular array"):
        to_semantic_input([np.zeros((32, 32), np.int64), np.zeros((32, 16), np.int64)], None,
                          EDGES.replace(use_instance=False))
    with pytest.raises(ValueError, match=r"^raw label values must be a rectangular array"):
        raw_to_labels([[0, 1], [2]], CITYSCAPES)
