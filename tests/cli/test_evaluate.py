"""`spade-deploy train-segmenter` and `spade-deploy evaluate` end to end on a few 128 px landscapes with the bundled
generator: the report's numbers are those of the segmenter run directly, FID and KID (random-weight Inception) are
printed and written, and every bad input exits 2 with its reason."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy import cli
from spade_deploy.data.landscapes import bundled_model, bundled_segmenter, write_dataset
from spade_deploy.evaluation.metrics import ColourMoments, confusion_matrix, mean_iou, pixel_accuracy
from spade_deploy.evaluation.segmenter import (
    LANDSCAPE_CLASSES,
    OnnxSegmenter,
    Segmenter,
    SegmenterConfig,
    export_segmenter,
)
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.images import read_rgb, write_rgb
from spade_deploy.model.labels import read_png
from spade_deploy.model.tensors import tensor_to_rgb, to_semantic_input
from tests.evaluation.inception_weights import write_random_inception

MAPS = 3  # --limit: of the 4 maps written, the first 3 are scored


@dataclass(frozen=True)
class Workspace:
    root: Path
    data: Path  # 4 landscapes of 128 px, the bundled generator's size
    segmenter: Path  # trained for a few steps on them
    report: dict  # `evaluate --limit 3 --batch-size 2 --inception --json`
    stdout: str


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("evaluate")
    data, segmenter, report = root / "data", root / "seg.onnx", root / "report.json"
    assert cli.main(["landscapes", "--out", str(data), "--count", "4", "--size", "128", "--seed", "3"]) == 0
    assert cli.main(["train-segmenter", "--dataroot", str(data), "--out", str(segmenter), "--steps", "3",
                     "--batch-size", "2"]) == 0
    inception = write_random_inception(root / "pt_inception.pth")
    stdout = io.StringIO()  # capsys is per test; this output is shared by the module's tests
    with contextlib.redirect_stdout(stdout):
        assert cli.main(["evaluate", "--dataroot", str(data), "--segmenter", str(segmenter), "--limit", str(MAPS),
                         "--batch-size", "2", "--inception", str(inception), "--json", str(report)]) == 0
    return Workspace(root, data, segmenter, json.loads(report.read_text()), stdout.getvalue())


def test_report_and_summary(workspace: Workspace) -> None:
    report = workspace.report
    assert report["maps"] == MAPS and report["pixels"] == MAPS * 128 * 128
    assert report["classes"] == list(LANDSCAPE_CLASSES)
    assert report["generator"] == str(bundled_model()) and report["segmenter"] == str(workspace.segmenter)
    assert report["generator_kind"] == "checkpoint"
    for kind in ("real", "generated"):
        assert 0 <= report[kind]["mIoU"] <= 1 and 0 <= report[kind]["pixel_accuracy"] <= 1
        assert list(report[kind]["iou"]) == list(LANDSCAPE_CLASSES)
    assert report["mIoU_ratio"] == pytest.approx(report["generated"]["mIoU"] / report["real"]["mIoU"])
    assert report["machine"]["cpu"] and report["machine"]["cpu_id"].startswith("family")
    assert report["wall_s"] > 0
    assert report["fid"] > 0 and report["inception_features"] == MAPS
    assert report["kid"]["subsets"] == 100 and report["kid"]["subset_size"] == MAPS  # capped at the maps
    lines = workspace.stdout.splitlines()
    assert lines[0].startswith(f"generated mIoU {report['generated']['mIoU']:.3f} vs real "
                               f"{report['real']['mIoU']:.3f} (ratio ")
    assert (f", FID {report['fid']:.2f}, KID {report['kid']['mean']:.4f} (std {report['kid']['std']:.4f}), on "
            f"{MAPS} label maps in ") in lines[0]
    assert lines[1].split()[:4] == ["class", "pixels", "IoU", "real"]
    assert [line.split()[0] for line in lines[2:2 + len(LANDSCAPE_CLASSES)]] == list(LANDSCAPE_CLASSES)
    assert lines[-1].startswith("wrote ")


def test_report_numbers_are_the_segmenters(workspace: Workspace) -> None:
    """Recomputed directly: the generator in the same batches (2, then 1), the ONNX segmenter, the metrics."""
    generator = load_generator(bundled_model())
    segmenter = OnnxSegmenter(workspace.segmenter)
    names = sorted(path.name for path in (workspace.data / "labels").glob("*.png"))[:MAPS]
    labels = np.stack([read_png(workspace.data / "labels" / name).astype(np.int64) for name in names])
    real = np.stack([read_rgb(workspace.data / "images" / name) for name in names])
    with torch.inference_mode():
        generated = np.concatenate([tensor_to_rgb(generator(to_semantic_input(labels[part], None, generator.config)))
                                    for part in (slice(0, 2), slice(2, 3))])
    report = workspace.report
    for kind, images in (("real", real), ("generated", generated)):
        confusion = confusion_matrix(segmenter(images), labels, len(LANDSCAPE_CLASSES))
        assert report[kind]["mIoU"] == pytest.approx(mean_iou(confusion))
        assert report[kind]["pixel_accuracy"] == pytest.approx(pixel_accuracy(confusion))
    colours = {kind: ColourMoments(len(LANDSCAPE_CLASSES)) for kind in ("real", "generated")}
    colours["real"].add(real, labels)
    colours["generated"].add(generated, labels)
    present = np.flatnonzero(colours["real"].counts)
    assert sorted(report["colour"]["per_class"]) == sorted(LANDSCAPE_CLASSES[index] for index in present)
    for index in present:
        entry = report["colour"]["per_class"][LANDSCAPE_CLASSES[index]]
        assert entry["pixels"] == colours["real"].counts[index]
        np.testing.assert_allclose(entry["real_mean"], colours["real"].mean()[index], atol=0.006)
        np.testing.assert_allclose(entry["generated_mean"], colours["generated"].mean()[index], atol=0.006)
        difference = np.abs(colours["generated"].mean()[index] - colours["real"].mean()[index]).mean()
        assert entry["mean_abs_diff"] == pytest.approx(difference, abs=0.006)


def _copy(workspace: Workspace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(workspace.data, tmp_path / "data"))


def _no_labels(workspace: Workspace, tmp_path: Path) -> list[str]:
    data = _copy(workspace, tmp_path)
    for path in (data / "labels").glob("*.png"):
        path.unlink()
    return ["--dataroot", str(data)]


def _small_image(workspace: Workspace, tmp_path: Path) -> list[str]:
    data = _copy(workspace, tmp_path)
    write_rgb(data / "images" / "00001.png", np.zeros((64, 64, 3), np.uint8))
    return ["--dataroot", str(data)]


def _label_out_of_range(workspace: Workspace, tmp_path: Path) -> list[str]:
    data = _copy(workspace, tmp_path)
    Image.fromarray(np.full((128, 128), 12, np.uint8)).save(data / "labels" / "00002.png")
    return ["--dataroot", str(data)]


def _size_the_generator_cannot_make(workspace: Workspace, tmp_path: Path) -> list[str]:
    write_dataset(tmp_path / "data", count=1, size=120, seed=0, progress=False)
    return ["--dataroot", str(tmp_path / "data")]


def _three_class_segmenter(workspace: Workspace, tmp_path: Path) -> list[str]:
    path = export_segmenter(Segmenter(SegmenterConfig(classes=("sky", "ground", "water"), width=2)).eval(),
                            tmp_path / "three.onnx")
    return ["--segmenter", str(path)]


def _junk_segmenter(workspace: Workspace, tmp_path: Path) -> list[str]:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    return ["--segmenter", str(tmp_path / "junk.onnx")]


def _junk_generator_export(workspace: Workspace, tmp_path: Path) -> list[str]:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    return ["--checkpoint", str(tmp_path / "junk.onnx")]


@pytest.mark.parametrize("setup, reason", [
    (lambda workspace, tmp_path: ["--dataroot", str(tmp_path / "missing")], "no such dataset folder: .*missing"),
    (_no_labels, r"no label maps at .*labels/\*\.png"),
    (_small_image, r"label map is 128x128 \(WxH\) but its image 00001.png is 64x64"),
    (_label_out_of_range, r"00002.png: labels must lie in \[0, 9\] .* e.g. \[12\]"),
    (_size_the_generator_cannot_make, "label map is 120x120; both sides must be positive multiples of 32"),
    (_three_class_segmenter, "predicts 3 classes but the generator .* has label_nc=10"),
    (_junk_segmenter, "junk.onnx is not a readable ONNX model"),
    (_junk_generator_export, "junk.onnx is not a readable ONNX model"),
    (lambda workspace, tmp_path: ["--inception", str(tmp_path / "missing.pth")],
     ("Inception weights: checkpoint not found: .*missing.pth; FID needs pytorch-fid's "
      "pt_inception-2015-12-05-6726825d.pth")),
], ids=["missing-folder", "no-label-maps", "size-mismatch", "label-range", "generator-size", "class-count",
        "not-onnx", "generator-not-onnx", "no-inception-weights"])
def test_bad_input_exits_2_with_the_reason(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture,
                                           setup: Callable[[Workspace, Path], list[str]], reason: str) -> None:
    arguments = {"--dataroot": str(workspace.data), "--segmenter": str(workspace.segmenter)}
    changed = setup(workspace, tmp_path)
    arguments.update(zip(changed[::2], changed[1::2]))
    assert cli.main(["evaluate", *(word for pair in arguments.items() for word in pair)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("spade-deploy evaluate: error: ")
    assert len(error.strip().splitlines()) <= 2, error
    assert re.search(reason, error), error


def test_train_segmenter_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train-segmenter", "--dataroot", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "seg.onnx")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "seg.onnx").exists()
    (tmp_path / "taken.onnx").mkdir()  # checked before training, not after it
    assert cli.main(["train-segmenter", "--dataroot", str(tmp_path), "--out", str(tmp_path / "taken.onnx")]) == 2
    assert "--out " + str(tmp_path / "taken.onnx") + " is a folder; expected the path of a file to write" in \
        capsys.readouterr().err


def test_evaluate_checks_its_json_path_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    assert cli.main(["evaluate", "--dataroot", str(tmp_path / "missing"), "--json",
                     str(tmp_path / "file" / "r.json")]) == 2
    assert ": " + str(tmp_path / "file") + " is a file, not a folder" in capsys.readouterr().err


def test_the_bundled_segmenter_is_the_default(workspace: Workspace, tmp_path: Path) -> None:
    """Without --segmenter: the shipped segmenter, which reads the bundled model's real landscapes well."""
    assert cli.main(["evaluate", "--dataroot", str(workspace.data), "--limit", "2", "--json",
                     str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["segmenter"] == str(bundled_segmenter()) and report["real"]["pixel_accuracy"] > 0.9
    assert report["fid"] is None and report["kid"] is None  # no --inception: no distances
