"""Scoring a generator as the SPADE paper does: synthesize an image from every label map of a folder dataset, segment
it, and compare the segmentation with the label map it was made from (mIoU, pixel accuracy).

The same segmenter also runs on the dataset's real image of each map: its score there is the ceiling the generated
images are measured against (a segmenter's own errors are not the generator's), hence the generated/real ratio.
Per-class colour statistics (mean and spread of RGB over each class's pixels, generated vs real) show *which* classes
a generator paints wrongly when the scores say that it does. Given the FID Inception's weights, FID and KID of the
generated images against the real images of the same maps measure how real they look, class labels aside.

The generator is a checkpoint, an ONNX export or a live `SPADEGenerator` (training's, say); each becomes one
"labels, instances, z -> uint8 images" function, so the three are scored by the same loop.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from spade_deploy.bench.machine import describe_machine
from spade_deploy.data.landscapes import bundled_model
from spade_deploy.evaluation.fid import KID_SUBSET_SIZE, KID_SUBSETS, check_kid_options, fid, kid
from spade_deploy.evaluation.inception import FidInception, load_inception
from spade_deploy.evaluation.metrics import ColourMoments, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from spade_deploy.evaluation.segmenter import OnnxSegmenter, torch_threads
from spade_deploy.export.precision import FP32
from spade_deploy.export.runtime import OnnxGenerator
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import read_rgb
from spade_deploy.model.labels import check_label_size, read_label_png, read_png
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.sampling import sample_latent
from spade_deploy.model.tensors import tensor_to_rgb, to_semantic_input
from spade_deploy.training.data import LAYOUTS, Sample, check_samples, find_samples, raise_problems

BATCH_SIZE = 8  # label maps per generator call

# labels int64 [B, H, W], instance ids [B, H, W] or None, z float32 [B, z_dim] or None -> uint8 RGB [B, H, W, 3]
Synthesize = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class _Generator:
    """A generator to score, whatever its form."""
    name: str  # in the report: the file, or "SPADEGenerator (in memory)"
    kind: str  # "checkpoint", "onnx" or "module"
    config: GeneratorConfig
    size: tuple[int, int] | None  # (H, W): the one size an ONNX export makes; None: any the config allows
    device: torch.device  # where it runs, and so where a loaded Inception runs
    synthesize: Synthesize
    precision: str = FP32  # what it computes in: an ONNX export's runtime reports it (bf16 exports run in OpenVINO)

    def check_size(self, height: int, width: int) -> None:
        check_label_size(height, width, self.config)
        if self.size is not None and (height, width) != self.size:
            raise ValueError(f"label map is {height}x{width}, but the ONNX export {self.name} makes "
                             f"{self.size[0]}x{self.size[1]} only; export one at this size (spade-deploy export "
                             f"--height {height} --width {width}) or score the checkpoint")


def evaluate(dataroot: str | Path, segmenter_onnx: str | Path, *,
             generator: str | Path | SPADEGenerator | None = None,
             inception: str | Path | FidInception | None = None, kid_subsets: int = KID_SUBSETS,
             kid_subset_size: int = KID_SUBSET_SIZE, limit: int | None = None, batch_size: int = BATCH_SIZE,
             threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score `generator` on the first `limit` (default: all) label maps of `dataroot`, sorted by name, with the ONNX
    segmenter `segmenter_onnx`, and with FID and KID when `inception` is given; see the module docstring.

    `generator`: a checkpoint (ours or an official `*_net_G.pth`), an ONNX export (`.onnx`, from `spade-deploy
    export`; label maps must have its size) or a `SPADEGenerator`, run on its device in eval mode (its mode is
    restored after); default: the bundled landscape model. `inception`: pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth` (loaded on the generator's device) or a loaded `FidInception`. KID is
    averaged over `kid_subsets` subsets of `kid_subset_size` images (at most the number of maps).

    The dataset has the layout of the generator's preset (landscapes: DATAROOT/images/*, DATAROOT/labels/*.png).
    A VAE generator's latent for map i is `sample_latent(1, z_dim, seed=i)`, whatever the batch it falls in.
    `threads` caps PyTorch's and ONNX Runtime's threads (default: theirs). Returns a JSON-ready dict."""
    start = time.perf_counter()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_kid_options(kid_subsets, kid_subset_size)
    with _opened(generator, threads) as source:
        segmenter = OnnxSegmenter(segmenter_onnx, threads=threads)
        classes = segmenter.config.classes
        config = source.config
        if len(classes) != config.label_nc:
            raise ValueError(f"the segmenter {segmenter_onnx} predicts {len(classes)} classes but the generator "
                             f"{source.name} has label_nc={config.label_nc}; train a segmenter on this generator's "
                             f"dataset")
        samples = _samples(dataroot, source, limit)
        if inception is not None and len(samples) < 2:
            raise ValueError(f"FID and KID compare two sets of images: they need at least 2 label maps, got "
                             f"{len(samples)}")
        network = load_inception(inception, device=source.device) if isinstance(inception, (str, Path)) else inception

        ignore = config.label_nc if config.contain_dontcare_label else None  # don't-care pixels have no right answer
        kinds = ("real", "generated")
        confusions = {kind: np.zeros((len(classes), len(classes)), np.int64) for kind in kinds}
        colours = {kind: ColourMoments(config.num_label_channels) for kind in kinds}
        features: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
        with torch_threads(threads), torch.inference_mode():
            bar = tqdm(total=len(samples), desc="evaluate", unit="map", disable=not progress)
            for first, batch in _batches(samples, batch_size):
                labels, instances, z = _inputs(batch, first, config)
                images = {"real": np.stack([read_rgb(sample.image) for sample in batch]),  # [B, H, W, 3] uint8
                          "generated": source.synthesize(labels, instances, z)}
                for kind, image in images.items():
                    confusions[kind] += confusion_matrix(segmenter(image), labels, len(classes), ignore_index=ignore)
                    colours[kind].add(image, labels)
                    if network is not None:
                        features[kind].append(network.features(image))
                bar.update(len(batch))
            bar.close()

    scores = {kind: _scores(confusion, classes) for kind, confusion in confusions.items()}
    real, generated = scores["real"]["mIoU"], scores["generated"]["mIoU"]
    return {
        "dataroot": str(dataroot),
        "generator": source.name,
        "generator_kind": source.kind,
        "generator_precision": source.precision,
        "segmenter": str(segmenter_onnx),
        "maps": len(samples),
        "pixels": int(confusions["real"].sum()),  # scored pixels per kind (don't-care excluded)
        "classes": list(classes),
        "real": scores["real"],
        "generated": scores["generated"],
        "mIoU_ratio": generated / real if real > 0 else None,  # generated / real
        "colour": _colour_report(colours["real"], colours["generated"], classes),
        **_distances(features, inception, kid_subsets, kid_subset_size),
        "machine": describe_machine(torch.get_num_threads() if threads is None else threads),
        "wall_s": round(time.perf_counter() - start, 2),
    }


@contextlib.contextmanager
def _opened(generator: str | Path | SPADEGenerator | None, threads: int | None) -> Iterator[_Generator]:
    """The `_Generator` of a checkpoint, an ONNX export or a module; a module is in eval mode inside the block (batch
    norm on its running statistics, as exported and served) and back in its own mode after it."""
    if isinstance(generator, SPADEGenerator):
        was_training = generator.training
        generator.eval()
        try:
            yield _torch_generator(generator, "SPADEGenerator (in memory)", "module")
        finally:
            generator.train(was_training)
        return
    path = Path(generator) if generator is not None else bundled_model()
    if path.suffix.lower() == ".onnx":
        export = OnnxGenerator(path, threads=threads)
        yield _Generator(str(path), "onnx", export.config, (export.height, export.width), torch.device("cpu"),
                         lambda labels, instances, z: export(labels, instances, z)[0], export.precision)
    else:
        yield _torch_generator(load_generator(path), str(path), "checkpoint")


def _torch_generator(module: SPADEGenerator, name: str, kind: str) -> _Generator:
    """Images as `spade-deploy synthesize` makes them, on the module's device."""
    device = next(module.parameters()).device

    def synthesize(labels: np.ndarray, instances: np.ndarray | None, z: np.ndarray | None) -> np.ndarray:
        semantic = to_semantic_input(labels, instances, module.config, device=device)
        return tensor_to_rgb(module(semantic, None if z is None else torch.from_numpy(z).to(device)))

    return _Generator(name, kind, module.config, None, device, synthesize)


def _samples(dataroot: str | Path, source: _Generator, limit: int | None) -> list[Sample]:
    """The dataset's first `limit` pairs, every one checked (pairing, sizes, label range) before any is scored."""
    config = source.config
    root = Path(dataroot)
    if not root.is_dir():
        raise ValueError(f"no such dataset folder: {root}")
    layout = LAYOUTS[config.preset]
    if not any(root.glob(layout.labels)):
        raise ValueError(f"no label maps at {root / layout.labels} (the {config.preset!r} layout of this generator)")
    samples = find_samples(root, config)[:limit]
    problems = check_samples(samples, config)  # image/label sizes, label values outside the generator's classes
    for sample in samples:
        width, height = _png_size(sample.label)
        try:
            source.check_size(height, width)
        except ValueError as error:
            problems.append(f"{sample.label}: {error}")
    raise_problems(root, problems)
    return samples


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header: the pixels are read once, in the batch."""
    with Image.open(path) as image:
        return image.size


def _batches(samples: list[Sample], batch_size: int) -> Iterator[tuple[int, list[Sample]]]:
    """`(index of the first, samples)` runs of at most `batch_size` consecutive samples whose label maps share one
    size, so each run is one generator call."""
    batch: list[Sample] = []
    size: tuple[int, int] | None = None
    first = 0
    for index, sample in enumerate(samples):
        sample_size = _png_size(sample.label)
        if batch and (len(batch) == batch_size or sample_size != size):
            yield first, batch
            batch, first = [], index
        batch.append(sample)
        size = sample_size
    if batch:
        yield first, batch


def _inputs(batch: list[Sample], first: int,
            config: GeneratorConfig) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Label maps int64 `[B, H, W]`, instance ids (or None) and latents (or None) of the batch whose first map is
    map `first`: map i's latent is `sample_latent(1, z_dim, seed=i)`, whatever the batch it falls in."""
    labels = np.stack([read_label_png(sample.label, config) for sample in batch])
    instances = np.stack([read_png(sample.instance) for sample in batch]) if config.use_instance else None
    z = (np.concatenate([sample_latent(1, config.z_dim, seed=first + i) for i in range(len(batch))])
         if config.use_vae else None)
    return labels, instances, z


def _distances(features: dict[str, list[np.ndarray]], inception: str | Path | FidInception | None, kid_subsets: int,
               kid_subset_size: int) -> dict[str, Any]:
    """The report's FID and KID of the generated images against the real ones; None without an Inception."""
    if inception is None:
        return {"fid": None, "kid": None, "inception": None, "inception_features": None}
    real, generated = np.concatenate(features["real"]), np.concatenate(features["generated"])
    return {"fid": fid(generated, real),
            "kid": asdict(kid(generated, real, subsets=kid_subsets, subset_size=kid_subset_size)),
            "inception": str(inception) if isinstance(inception, (str, Path)) else "FidInception (in memory)",
            "inception_features": len(real)}  # images per kind


def _optional(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _scores(confusion: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    return {"mIoU": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion),
            "iou": {name: _optional(value) for name, value in zip(classes, iou_per_class(confusion))}}


def _colour_report(real: ColourMoments, generated: ColourMoments, classes: tuple[str, ...]) -> dict[str, Any]:
    """Per class with pixels: its pixel count, mean and std RGB of the real and the generated images, and the mean
    over R, G, B of |generated mean - real mean|; plus that difference averaged over those classes."""
    per_class: dict[str, Any] = {}
    differences = np.abs(generated.mean() - real.mean()).mean(axis=1)
    for index, name in enumerate(classes):
        if real.counts[index] == 0:
            continue
        per_class[name] = {"pixels": int(real.counts[index]),
                           "real_mean": np.round(real.mean()[index], 2).tolist(),
                           "generated_mean": np.round(generated.mean()[index], 2).tolist(),
                           "real_std": np.round(real.std()[index], 2).tolist(),
                           "generated_std": np.round(generated.std()[index], 2).tolist(),
                           "mean_abs_diff": round(float(differences[index]), 2)}
    present = [entry["mean_abs_diff"] for entry in per_class.values()]
    return {"per_class": per_class, "mean_abs_diff": round(float(np.mean(present)), 2) if present else None}
