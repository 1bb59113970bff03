"""Tiny synthetic datasets and option sets shared by the training tests (64 px, ngf 8, 8 classes).

The helpers reach the tests as fixtures, so test modules need no imports from here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.train import build_options, build_parser

LABEL_NC = 8


def write_dataset(root: Path, count: int = 6, size: tuple[int, int] = (40, 48), instances: bool = True,
                  seed: int = 0) -> Path:
    """DATAROOT/images/*.png, labels/*.png (values < LABEL_NC) and instances/*.png (uint16), H x W = `size`."""
    rng = np.random.default_rng(seed)
    height, width = size
    for folder in ("images", "labels") + (("instances",) if instances else ()):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        labels = np.zeros(size, np.uint8)
        labels[:, : width // 2] = rng.integers(0, LABEL_NC)
        labels[height // 2:, :] = rng.integers(0, LABEL_NC)
        image = np.stack([labels * 30, 255 - labels * 30, rng.integers(0, 255, size)], -1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"sample{index}.png")
        Image.fromarray(labels).save(root / "labels" / f"sample{index}.png")
        if instances:
            Image.fromarray((np.arange(width)[None, :] // 16 + labels * 100).astype(np.uint16)).save(
                root / "instances" / f"sample{index}.png")
    return root


def tiny_args(dataroot: Path, run_dir: Path, *extra: str) -> list[str]:
    """CLI arguments of a tiny CPU run (a flag repeated in `extra` wins; --vgg-weights / --epochs replace
    --no-vgg-loss / --max-steps)."""
    return ["--preset", "custom", "--label-nc", str(LABEL_NC), "--dataroot", str(dataroot), "--crop-size", "64",
            "--ngf", "8", "--spade-hidden", "16", "--ndf", "8", "--batch-size", "2", "--device", "cpu",
            "--num-workers", "0", "--log-every", "1", "--run-dir", str(run_dir),
            *(() if "--vgg-weights" in extra else ("--no-vgg-loss",)),
            *(() if "--epochs" in extra else ("--max-steps", "2")), *extra]


def tiny_options(dataroot: Path, run_dir: Path, *extra: str):
    return build_options(build_parser().parse_args(tiny_args(dataroot, run_dir, *extra)))


def _write_vgg19(path: Path) -> Path:
    """A random-weight VGG19 state dict in torchvision's key layout (features.N.*, classifier.*)."""
    from training.losses import VGG19Features

    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(value.shape, generator=generator) * 0.05
             for key, value in VGG19Features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too: ignored
    torch.save(state, path)
    return path


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny convolutions run several times faster on one thread than on two fighting for a busy machine (restored
    for the other test packages)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_vgg19(tmp_path_factory.mktemp("vgg") / "vgg19.pth")


@pytest.fixture(name="write_dataset", scope="session")
def write_dataset_fixture():
    return write_dataset


@pytest.fixture(name="tiny_args", scope="session")
def tiny_args_fixture():
    return tiny_args


@pytest.fixture(name="tiny_options", scope="session")
def tiny_options_fixture():
    return tiny_options
