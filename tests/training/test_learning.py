"""Training fits something: on a dataset whose images are a known function of the labels (one flat colour per
class), 200 CPU steps of the real training stack teach the generator those colours on label maps it has never
seen."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spade_deploy.cli.train import build_options, build_parser
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.training.loop import train

COLOURS = np.array([[220, 40, 40], [40, 180, 60], [50, 70, 230]], np.uint8)  # class c is painted COLOURS[c]
SIZE = 32  # the smallest crop the custom preset's five upsamplings allow
STEPS = 200

# The error of a class: the mean over its pixels of |generated - class colour| in 8-bit levels (averaged over R, G,
# B); the test bounds the mean over the classes. Measured at seed 0 on x86-64 (one thread): 20.4 trained, 79.2 after
# one step. GAN trajectories amplify float differences, so the bounds were set from other trajectories too: seeds
# 0-5, with this init and with PyTorch's default init in the spectral-norm layers, gave 20.0-35.4 trained (the upper
# values when one class is still wrong on small rectangles) and 79.1-79.2 after one step. No image that ignores the
# labels gets below 56.7 here (the best constant colour), so the bound also says the colours follow the labels.
MAX_TRAINED_ERROR = 45.0
MIN_IMPROVEMENT = 1.75  # untrained / trained


def layouts(count: int, seed: int) -> np.ndarray:
    """`[count, SIZE, SIZE]` uint8 class maps: a background class under three random rectangles of random classes."""
    rng = np.random.default_rng(seed)
    maps = np.empty((count, SIZE, SIZE), np.uint8)
    for labels in maps:
        labels[:] = rng.integers(len(COLOURS))
        for _ in range(3):
            (y, x), (height, width) = rng.integers(0, SIZE - 8, 2), rng.integers(8, 20, 2)
            labels[y:y + height, x:x + width] = rng.integers(len(COLOURS))
    return maps


def write_colour_dataset(root: Path, count: int, seed: int) -> Path:
    """DATAROOT/images/*.png and labels/*.png in the custom layout, each image its label map in class colours."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index, labels in enumerate(layouts(count, seed)):
        Image.fromarray(COLOURS[labels]).save(root / "images" / f"{index:03d}.png")
        Image.fromarray(labels).save(root / "labels" / f"{index:03d}.png")
    return root


def train_run(dataroot: Path, run_dir: Path, steps: int) -> Path:
    """Train as `spade-deploy train` does with these arguments; returns the run's latest checkpoint. --load-size 32:
    no resize, so the images keep their exact colours (random flips stay on: they keep the labels -> colour map)."""
    args = ["--preset", "custom", "--label-nc", str(len(COLOURS)), "--dataroot", str(dataroot),
            "--crop-size", str(SIZE), "--load-size", str(SIZE), "--ngf", "16", "--spade-hidden", "16", "--ndf", "16",
            "--no-vgg-loss", "--batch-size", "8", "--max-steps", str(steps), "--amp", "none", "--seed", "0",
            "--device", "cpu", "--num-workers", "0", "--log-every", "100", "--run-dir", str(run_dir)]
    train(build_options(build_parser().parse_args(args)))
    return run_dir / "checkpoints" / "latest.pt"


def class_errors(checkpoint: Path, labels: np.ndarray) -> np.ndarray:
    """Per class: mean over its pixels of |generated - class colour| in 8-bit levels (mean of R, G, B)."""
    generator = load_generator(checkpoint)
    with torch.no_grad():
        generated = generator(to_semantic_input(labels, None, generator.config))  # [N, 3, H, W] in [-1, 1]
    levels = ((generated + 1) * 127.5).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    error = np.abs(levels - COLOURS[labels]).mean(-1)  # [N, H, W]
    return np.array([error[labels == c].mean() for c in range(len(COLOURS))])


def test_training_learns_each_class_colour_on_unseen_layouts(tmp_path: Path) -> None:
    dataroot = write_colour_dataset(tmp_path / "data", count=64, seed=0)
    held_out = layouts(16, seed=1)  # other layouts than the training ones
    assert all((held_out == c).any() for c in range(len(COLOURS)))
    # One step of lr 1e-4 barely moves the weights: the untrained generator, with whatever init the stack uses.
    untrained = class_errors(train_run(dataroot, tmp_path / "one-step", 1), held_out)
    trained = class_errors(train_run(dataroot, tmp_path / "run", STEPS), held_out)
    report = f"per-class error: trained {trained.round(1)}, after one step {untrained.round(1)}"
    assert trained.mean() < MAX_TRAINED_ERROR, report
    assert trained.mean() * MIN_IMPROVEMENT < untrained.mean(), report
