"""Scoring a generator as the SPADE paper does: synthesize an image from every label map of a folder dataset, segment
it, and compare the segmentation with the label map it was made from (mIoU, pixel accuracy).

The same segmenter also runs on the dataset's real image of each map: its score there is the ceiling the generated
images are measured against (a segmenter's own errors are not the generator's), hence the generated/real ratio.
Per-class colour statistics (mean and spread of RGB over each class's pixels, generated vs real) show *which* classes
a generator paints wrongly when the scores say that it does.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from spade_deploy.bench.machine import describe_machine
from spade_deploy.data.landscapes import bundled_model
from spade_deploy.evaluation.metrics import ColourMoments, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from spade_deploy.evaluation.segmenter import OnnxSegmenter, torch_threads
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.images import read_rgb
from spade_deploy.model.labels import check_label_size, read_label_png, read_png
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.tensors import sample_z, tensor_to_rgb, to_semantic_input
from spade_deploy.training.data import LAYOUTS, Sample, check_samples, find_samples, raise_problems

BATCH_SIZE = 8  # label maps per generator call


def evaluate(dataroot: str | Path, segmenter_onnx: str | Path, *, checkpoint: str | Path | None = None,
             limit: int | None = None, batch_size: int = BATCH_SIZE, threads: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Score the generator `checkpoint` (default: the bundled landscape model) on the first `limit` (default: all)
    label maps of `dataroot`, sorted by name, with the ONNX segmenter `segmenter_onnx`; see the module docstring.

    The dataset has the layout of the generator's preset (landscapes: DATAROOT/images/*, DATAROOT/labels/*.png).
    A VAE generator's latent for map i is `sample_z(1, z_dim, seed=i)`, whatever the batch it falls in.
    `threads` caps PyTorch's and ONNX Runtime's threads (default: theirs). Returns a JSON-ready dict."""
    start = time.perf_counter()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator_path = Path(checkpoint) if checkpoint is not None else bundled_model()
    generator = load_generator(generator_path)
    config = generator.config
    segmenter = OnnxSegmenter(segmenter_onnx, threads=threads)
    classes = segmenter.config.classes
    if len(classes) != config.label_nc:
        raise ValueError(f"the segmenter {segmenter_onnx} predicts {len(classes)} classes but the generator "
                         f"{generator_path} has label_nc={config.label_nc}; train a segmenter on this generator's "
                         f"dataset")
    samples = _samples(dataroot, config, limit)

    ignore = config.label_nc if config.contain_dontcare_label else None  # don't-care pixels have no right answer
    confusions = {kind: np.zeros((len(classes), len(classes)), np.int64) for kind in ("real", "generated")}
    colours = {kind: ColourMoments(config.num_label_channels) for kind in ("real", "generated")}
    with torch_threads(threads), torch.inference_mode():
        bar = tqdm(total=len(samples), desc="evaluate", unit="map", disable=not progress)
        for first, batch in _batches(samples, batch_size):
            labels = np.stack([read_label_png(sample.label, config) for sample in batch])  # [B, H, W] int64
            images = {"real": np.stack([read_rgb(sample.image) for sample in batch]),  # [B, H, W, 3] uint8
                      "generated": _synthesize(generator, batch, labels, first)}
            for kind, image in images.items():
                confusions[kind] += confusion_matrix(segmenter(image), labels, len(classes), ignore_index=ignore)
                colours[kind].add(image, labels)
            bar.update(len(batch))
        bar.close()

    scores = {kind: _scores(confusion, classes) for kind, confusion in confusions.items()}
    real, generated = scores["real"]["mIoU"], scores["generated"]["mIoU"]
    return {
        "dataroot": str(dataroot),
        "generator": str(generator_path),
        "segmenter": str(segmenter_onnx),
        "maps": len(samples),
        "pixels": int(confusions["real"].sum()),  # scored pixels per kind (don't-care excluded)
        "classes": list(classes),
        "real": scores["real"],
        "generated": scores["generated"],
        "mIoU_ratio": generated / real if real > 0 else None,  # generated / real
        "colour": _colour_report(colours["real"], colours["generated"], classes),
        "machine": describe_machine(torch.get_num_threads() if threads is None else threads),
        "wall_s": round(time.perf_counter() - start, 2),
    }


def _samples(dataroot: str | Path, config: GeneratorConfig, limit: int | None) -> list[Sample]:
    """The dataset's first `limit` pairs, every one checked (pairing, sizes, label range) before any is scored."""
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
            check_label_size(height, width, config)
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


def _synthesize(generator: SPADEGenerator, batch: list[Sample], labels: np.ndarray, first: int) -> np.ndarray:
    """uint8 `[B, H, W, 3]` images of one batch of label maps, as `spade-deploy synthesize` makes them."""
    config = generator.config
    instances = np.stack([read_png(sample.instance) for sample in batch]) if config.use_instance else None
    z = torch.cat([sample_z(1, config.z_dim, seed=first + i) for i in range(len(batch))]) if config.use_vae else None
    return tensor_to_rgb(generator(to_semantic_input(labels, instances, config), z))


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
