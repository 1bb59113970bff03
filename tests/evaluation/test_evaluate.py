"""`evaluate` with FID and KID (random-weight Inception) on tiny generators in each form it takes: a checkpoint, an
ONNX export and a live module agree; the distances are those of the features recomputed directly; `spade-deploy
evaluate` on an export prints them and writes them to its JSON."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from spade_deploy import cli
from spade_deploy.evaluation.evaluate import evaluate
from spade_deploy.evaluation.fid import fid, kid
from spade_deploy.evaluation.inception import FidInception
from spade_deploy.evaluation.segmenter import Segmenter, SegmenterConfig, export_segmenter
from spade_deploy.model.checkpoint import save_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import read_rgb, write_rgb
from spade_deploy.model.labels import write_instance_png, write_label_png
from spade_deploy.model.synthetic import synthetic_batch
from spade_deploy.model.tensors import sample_z, tensor_to_rgb, to_semantic_input
from tests.fixtures.serving import Exported

MAPS = 3  # per dataset: FID and KID need 2; Inception at 299 px costs about 0.1 s per image on a CPU core
KID_SUBSETS = 5


@dataclass(frozen=True)
class Case:
    exported: Exported
    checkpoint: Path  # the exported generator, saved as our checkpoint
    data: Path  # MAPS label maps at the export's size, with images (and instance maps)
    segmenter: Path  # random weights, the generator's class count


def _write_dataset(root: Path, config: GeneratorConfig, count: int, *, seed: int = 0) -> Path:
    """Synthetic label (and instance) maps at the config's size; each image paints a class one colour, plus noise."""
    labels, instances = synthetic_batch(config, count, seed=seed)
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (config.num_label_channels, 3))
    for index in range(count):
        image = colours[labels[index]] + rng.integers(-20, 21, (*labels[index].shape, 3))
        write_rgb(root / "images" / f"{index:03d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_label_png(root / "labels" / f"{index:03d}.png", labels[index], config)
        if instances is not None:
            write_instance_png(root / "instances" / f"{index:03d}.png", instances[index])
    return root


def _case(exported: Exported, root: Path) -> Case:
    save_generator(exported.generator, root / "generator.pth")
    classes = tuple(f"class{index}" for index in range(exported.config.label_nc))
    torch.manual_seed(0)
    segmenter = export_segmenter(Segmenter(SegmenterConfig(classes=classes, width=2)).eval(), root / "seg.onnx")
    return Case(exported, root / "generator.pth", _write_dataset(root / "data", exported.config, MAPS), segmenter)


@pytest.fixture(scope="module")
def segmap(exported_segmap: Exported, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _case(exported_segmap, tmp_path_factory.mktemp("segmap-evaluate"))


def _evaluate(case: Case, generator: object, inception: FidInception) -> dict:
    return evaluate(case.data, case.segmenter, generator=generator, inception=inception, kid_subsets=KID_SUBSETS,
                    batch_size=2, threads=1, progress=False)


def test_distances_are_those_of_the_features(segmap: Case, inception: FidInception) -> None:
    """Recomputed directly: the generator on every map, the Inception on generated and real images, fid and kid."""
    report = _evaluate(segmap, segmap.checkpoint, inception)
    config = segmap.exported.config
    names = sorted(path.name for path in (segmap.data / "labels").glob("*.png"))
    labels, _ = synthetic_batch(config, MAPS)  # what the dataset was written from
    with torch.inference_mode():
        generated = tensor_to_rgb(segmap.exported.generator(to_semantic_input(labels, None, config)))
    real = np.stack([read_rgb(segmap.data / "images" / name) for name in names])
    generated_features, real_features = inception.features(generated), inception.features(real)
    # Float32 features: another thread count or batch split changes their last bits, and FID's sums cancel.
    assert report["fid"] == pytest.approx(fid(generated_features, real_features), rel=1e-4)
    expected_kid = kid(generated_features, real_features, subsets=KID_SUBSETS)
    assert report["kid"] == pytest.approx({"mean": expected_kid.mean, "std": expected_kid.std, "subsets": KID_SUBSETS,
                                           "subset_size": MAPS}, rel=1e-4, abs=1e-8)
    assert report["inception_features"] == MAPS and report["inception"] == "FidInception (in memory)"
    assert report["fid"] > 0 and report["generator_kind"] == "checkpoint"
    # Real images against themselves: the distance the generated images are measured from.
    assert fid(real_features, real_features) == pytest.approx(0, abs=1e-6 * report["fid"])


def test_checkpoint_export_and_module_agree(segmap: Case, inception: FidInception) -> None:
    module = segmap.exported.generator
    module.train()  # as training hands its generator over: evaluate scores it in eval mode and gives it back
    try:
        by_module = _evaluate(segmap, module, inception)
        assert module.training
    finally:
        module.eval()
    by_checkpoint = _evaluate(segmap, segmap.checkpoint, inception)
    by_export = _evaluate(segmap, segmap.exported.generator_onnx, inception)
    assert (by_module["generator_kind"], by_export["generator_kind"]) == ("module", "onnx")
    assert by_module["generator"] == "SPADEGenerator (in memory)"
    assert by_export["generator"] == str(segmap.exported.generator_onnx)
    for key in ("fid", "kid", "real", "generated", "colour"):
        assert by_module[key] == by_checkpoint[key], key
    # The export computes the same images to 1e-4 of [-1, 1]; a pixel on a rounding edge may differ by one level.
    assert by_export["fid"] == pytest.approx(by_checkpoint["fid"], rel=1e-3)
    assert by_export["kid"]["mean"] == pytest.approx(by_checkpoint["kid"]["mean"], rel=1e-2, abs=1e-6)
    assert by_export["generated"]["pixel_accuracy"] == pytest.approx(by_checkpoint["generated"]["pixel_accuracy"],
                                                                     abs=1e-3)
    assert by_export["real"] == by_checkpoint["real"]


def test_a_vae_export_with_instances_draws_the_checkpoints_latents(exported_vae: Exported, inception: FidInception,
                                                                   tmp_path: Path) -> None:
    """Latent i = sample_latent(1, z_dim, seed=i) in both forms, whatever the batch; instance maps read and fed."""
    case = _case(exported_vae, tmp_path)
    by_checkpoint = _evaluate(case, case.checkpoint, inception)
    by_export = _evaluate(case, exported_vae.generator_onnx, inception)
    assert by_export["fid"] == pytest.approx(by_checkpoint["fid"], rel=1e-3)
    config = exported_vae.config
    labels, instances = synthetic_batch(config, MAPS)
    z = torch.cat([sample_z(1, config.z_dim, seed=index) for index in range(MAPS)])
    with torch.inference_mode():
        generated = tensor_to_rgb(exported_vae.generator(to_semantic_input(labels, instances, config), z))
    colour = by_checkpoint["colour"]["per_class"]
    assert colour  # the generated means are those of these images: the latents and instances went in as above
    for index, name in enumerate(f"class{i}" for i in range(config.label_nc)):
        if name in colour:
            np.testing.assert_allclose(colour[name]["generated_mean"], generated[labels == index].mean(axis=0),
                                       atol=0.006)


def test_cli_on_an_export_prints_and_writes_fid_kid_and_miou(segmap: Case, weights: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["evaluate", "--dataroot", str(segmap.data), "--segmenter", str(segmap.segmenter),
                         "--checkpoint", str(segmap.exported.generator_onnx), "--inception", str(weights),
                         "--kid-subset-size", "2", "--threads", "1", "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["inception"] == str(weights) and report["inception_features"] == MAPS
    assert report["kid"]["subset_size"] == 2 and report["kid"]["subsets"] == 100
    summary = out.getvalue().splitlines()[0]
    assert summary.startswith(f"generated mIoU {report['generated']['mIoU']:.3f} vs real")
    assert (f", FID {report['fid']:.2f}, KID {report['kid']['mean']:.4f} (std {report['kid']['std']:.4f}), on "
            f"{MAPS} label maps in ") in summary


def test_bad_input(segmap: Case, weights: Path, tmp_path: Path) -> None:
    larger = _write_dataset(tmp_path / "larger", GeneratorConfig(label_nc=6, ngf=8, crop_size=128), 2)
    with pytest.raises(ValueError, match=r"label map is 128x128, but the ONNX export .*generator.onnx makes 64x64 "
                                         r"only; export one at this size"):
        evaluate(larger, segmap.segmenter, generator=segmap.exported.generator_onnx, progress=False)
    with pytest.raises(ValueError, match="FID and KID compare two sets of images: they need at least 2 label maps, "
                                         "got 1"):
        evaluate(segmap.data, segmap.segmenter, generator=segmap.checkpoint, inception=weights, limit=1,
                 progress=False)
    with pytest.raises(ValueError, match="KID subset size must be at least 2"):
        evaluate(segmap.data, segmap.segmenter, generator=segmap.checkpoint, kid_subset_size=1, progress=False)
    with pytest.raises(ValueError, match="was not written by spade-deploy's generator export"):
        evaluate(segmap.data, segmap.segmenter, generator=segmap.segmenter, progress=False)
    with pytest.raises(ValueError, match="Inception weights: checkpoint not found: .*missing.pth"):
        evaluate(segmap.data, segmap.segmenter, generator=segmap.checkpoint, inception=tmp_path / "missing.pth",
                 progress=False)
