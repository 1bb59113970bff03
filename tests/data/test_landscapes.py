"""The procedural landscape dataset: deterministic, labels and image agree, textured, written atomically and
reproducibly; bad arguments are refused by name."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spade_deploy.data import landscapes
from spade_deploy import cli
from spade_deploy.data.landscapes import CLASSES, colorize, render, write_dataset

SKY, CLOUD, MOUNTAIN, ROCK, SNOW, GRASS, TREE, WATER, SAND, FLOWER = range(10)
SEEDS = range(40)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [render(seed, 64) for seed in SEEDS]


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_class_table() -> None:
    assert len(CLASSES) == 10
    assert [c.name for c in CLASSES][:3] == ["sky", "cloud", "mountain"]
    assert len({c.colour for c in CLASSES}) == 10  # distinct preview colours


def test_render_is_deterministic_and_seeds_differ() -> None:
    labels, image = render(7, 64)
    again_labels, again_image = render(7, 64)
    assert labels.dtype == np.uint8 and labels.shape == (64, 64)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(image, again_image)
    other_labels, other_image = render(8, 64)
    assert not np.array_equal(image, other_image) and not np.array_equal(labels, other_labels)


def test_every_class_appears_and_values_are_class_indices(samples) -> None:
    seen: set[int] = set()
    for labels, _ in samples:
        assert labels.max() < len(CLASSES)
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(len(CLASSES)))
    assert sum(WATER in labels for labels, _ in samples) < len(samples)  # compositions vary: not always a lake


def test_pixel_colours_follow_their_class(samples) -> None:
    accuracies = []
    for labels, image in samples:
        lum, rgb = luminance(image), image.astype(np.float64)
        top = labels[:6] == SKY
        if top.any():  # the sky's top is blue (day, haze and evening alike)
            assert (rgb[:6][top][:, 2] - rgb[:6][top][:, 0]).mean() > 20
        cloud = labels == CLOUD
        if cloud.sum() > 10:  # clouds are lighter than the sky in their rows
            rows = np.isin(np.arange(64), np.nonzero(cloud)[0])[:, None] & (labels == SKY)
            assert lum[cloud].mean() > lum[rows].mean() + 10
        grass = labels == GRASS
        assert (rgb[grass][:, 1] - rgb[grass][:, 2]).mean() > 10  # green over blue
        if (labels == SAND).any():
            assert (rgb[labels == SAND][:, 0] - rgb[labels == SAND][:, 2]).mean() > 20
        if (labels == SNOW).any():
            assert lum[labels == SNOW].mean() > lum[labels == MOUNTAIN].mean() + 10
        # Colour predicts the class: nearest per-class mean colour recovers most labels.
        flat, classes = rgb.reshape(-1, 3), labels.ravel()
        present = np.unique(classes)
        means = np.stack([flat[classes == k].mean(axis=0) for k in present])
        nearest = present[((flat[:, None] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)]
        accuracies.append((nearest == classes).mean())
    assert np.mean(accuracies) > 0.7


def test_water_mirrors_the_scene_above(samples) -> None:
    lakes = 0
    for labels, image in samples:
        water = labels == WATER
        if not water.any():
            continue
        lum = luminance(image)
        horizon, band = int(np.nonzero(water.any(axis=1))[0][0]), 8
        below, above = lum[horizon:horizon + band], lum[horizon - band:horizon][::-1]  # above: mirrored
        mask = water[horizon:horizon + band]
        columns = mask.all(axis=0)  # columns whose whole band is water
        if np.isin(labels[horizon - band:horizon], (SKY, CLOUD)).mean() > 0.7 or columns.sum() < 8:
            continue  # open sky above: only a smooth gradient to mirror, which ripples scramble
        lakes += 1
        # The silhouette above (mountains, tree line) comes back in the water, rippled but column for column...
        assert np.corrcoef(below[:, columns].mean(axis=0), above[:, columns].mean(axis=0))[0, 1] > 0.25
        assert below[mask].mean() < above[mask].mean() + 5  # ...and darkened
    assert lakes >= 5


def test_regions_are_textured_not_flat(samples) -> None:
    for labels, image in samples:
        lum = luminance(image)
        for cls in (MOUNTAIN, GRASS):
            pairs = (labels[:, 1:] == cls) & (labels[:, :-1] == cls)
            if pairs.sum() >= 100:
                assert np.abs(np.diff(lum, axis=1))[pairs].mean() > 2, (CLASSES[cls].name, "no pixel texture")
                assert lum[labels == cls].std() > 5, (CLASSES[cls].name, "no shading")


def test_colorize() -> None:
    labels = np.arange(10, dtype=np.uint8).reshape(2, 5)
    preview = colorize(labels)
    assert preview.dtype == np.uint8 and preview.shape == (2, 5, 3)
    assert tuple(preview[1, 0]) == CLASSES[5].colour
    with pytest.raises(ValueError, match="0..9"):
        colorize(np.array([[0, 10]]))


def test_write_dataset_layout_and_reproducibility(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_dataset(first, count=3, size=32, seed=5, progress=False)
    write_dataset(second, count=3, size=32, seed=5, progress=True)
    keys = ["00000", "00001", "00002"]
    for out in (first, second):
        assert sorted(p.stem for p in (out / "images").iterdir()) == keys
        assert sorted(p.stem for p in (out / "labels").iterdir()) == keys
        table = json.loads((out / "classes.json").read_text())
        assert [entry["index"] for entry in table] == list(range(10))
        assert [entry["name"] for entry in table] == [c.name for c in CLASSES]
        assert table[0]["colour"] == list(CLASSES[0].colour)
    for i, key in enumerate(keys):
        image = Image.open(first / "images" / f"{key}.png")
        label = Image.open(first / "labels" / f"{key}.png")
        assert (image.mode, image.size, label.mode, label.size) == ("RGB", (32, 32), "L", (32, 32))
        expected_labels, expected_image = render(5 * 1_000_003 + i, 32)  # the documented per-sample seed
        np.testing.assert_array_equal(np.asarray(label), expected_labels)
        np.testing.assert_array_equal(np.asarray(image), expected_image)
        assert (first / "labels" / f"{key}.png").read_bytes() == (second / "labels" / f"{key}.png").read_bytes()
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(second / "images" / f"{key}.png")))
    assert not [p for p in first.rglob("*") if p.name.startswith(".")]  # no temporary files left behind


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count must be .* got 0"),
    ({"size": 30}, "size must be a multiple of 8 and at least 32, got 30"),
    ({"size": 36}, "size .* got 36"),
    ({"size": 24}, "size .* got 24"),
    ({"seed": -1}, "seed must be .* got -1"),
])
def test_write_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path, **{"count": 1, "size": 32, "seed": 0, "progress": False, **kwargs})
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_write_dataset_refuses_a_folder_that_holds_a_dataset(tmp_path: Path) -> None:
    """A second dataset (another size or seed) would mix with the first: refused, the first untouched."""
    write_dataset(tmp_path, count=2, size=32, seed=0, progress=False)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=r"already holds a dataset \(4 files in images/ and labels/\), which this one "
                                         r"would mix with; choose a new or empty folder"):
        write_dataset(tmp_path, count=1, size=40, seed=5, progress=False)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("argv, message", [
    (["--size", "36"], "argument --size: expected a multiple of 8 of at least 32, got 36"),
    (["--seed", "-1"], "argument --seed: expected a seed from 0 to 2**64 - 1, got -1"),
])
def test_the_command_checks_its_arguments(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["landscapes", "--out", str(tmp_path / "out"), "--count", "1", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["landscapes", "--out", str(tmp_path / "file"), "--count", "1", "--size", "32"]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file; expected a folder" in capsys.readouterr().err


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size .* got 8"):
        render(0, 8)
    with pytest.raises(ValueError, match="seed .* got -3"):
        render(-3, 64)


def test_module_does_not_import_torch() -> None:
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('landscapes', {landscapes.__file__!r})\n"
            "module = sys.modules['landscapes'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "module.render(0, 32)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
