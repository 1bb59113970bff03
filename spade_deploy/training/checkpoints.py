"""Run-directory checkpoints: `RUN/checkpoints/latest.pt` plus the last K `step-NNNNNNNNN.pt`, and RNG states.

Every file appears atomically (`spade_deploy.model.checkpoint.write_checkpoint` writes a temporary file, fsyncs and
renames; step files are hard links to that file, or copies renamed into place), so a run killed mid-save leaves the
previous `latest.pt` intact. Everything in a checkpoint loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spade_deploy.model.checkpoint import write_checkpoint

LATEST = "latest.pt"
STEP_PREFIX = "step-"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_path(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / LATEST


def step_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"{STEP_PREFIX}{step:09d}.pt"


def save(entries: dict[str, Any], run_dir: str | Path, step: int, keep: int) -> None:
    """Write `latest.pt`; with `keep` > 0 also publish it as this step's file and delete all but the last `keep`."""
    latest = latest_path(run_dir)
    write_checkpoint(entries, latest)
    if keep == 0:
        return
    _publish(latest, step_path(run_dir, step))
    for old in sorted(checkpoint_dir(run_dir).glob(f"{STEP_PREFIX}*.pt"))[:-keep]:
        old.unlink()


def _publish(source: Path, target: Path) -> None:
    """`target` becomes a second name of `source` (a copy where hard links are not supported), atomically."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
    os.replace(temporary, target)


def rng_state(noise: torch.Generator) -> dict[str, Any]:
    """This process's random streams (python, numpy, torch CPU/CUDA, the latent noise) as tensors and lists."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "noise": noise.get_state(),
    }
    if noise.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(noise.device)
    return state


def set_rng_state(state: dict[str, Any], noise: torch.Generator) -> str | None:
    """Restore what `rng_state` captured. The latent noise and CUDA streams only where `noise` is on the kind of
    device they were saved on (a CUDA stream's state is not a CPU one's): otherwise they keep the seeding they have,
    and the returned line says so (None where everything was restored)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    saved_on = "cuda" if "cuda" in state else "cpu"  # rng_state saves a CUDA stream exactly where noise was on CUDA
    if saved_on != noise.device.type:
        return (f"the checkpoint's latent-noise stream was saved on {saved_on} and this run is on "
                f"{noise.device.type}: it restarts from the run's seed, so the resumed run is not bit-exact")
    noise.set_state(state["noise"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], noise.device)
    return None


def seed_everything(seed: int, noise: torch.Generator) -> None:
    """Seed python, numpy, torch and the latent noise stream of this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    noise.manual_seed(seed)
