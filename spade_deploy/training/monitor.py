"""What a run shows on rank 0: a tqdm bar with losses and images/s, TensorBoard scalars and image grids in RUN/."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import colorize
from spade_deploy.model.tensors import tensor_to_rgb


class Monitor:
    """Progress and logs of the main rank; on every other rank each method does nothing."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, start: int, total: int, images_per_step: int) -> None:
        self.enabled = enabled
        self.images_per_step = images_per_step  # global batch, to turn steps/s into images/s
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=not enabled)
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # needs the `train` extra (tensorboard)
            self.writer = SummaryWriter(log_dir=str(run_dir))

    def step(self, step: int, losses: dict[str, torch.Tensor], lr_factor: float, log: bool) -> None:
        """Advance the bar; with `log`, show the losses on it and write them as TensorBoard scalars."""
        if not self.enabled:
            return
        self.bar.update(1)
        if not log:
            return
        values = {name: float(value) for name, value in losses.items()}
        rate = self.bar.format_dict["rate"]
        images_per_second = rate * self.images_per_step if rate else 0.0
        self.bar.set_postfix({**{name: f"{value:.3f}" for name, value in values.items()},
                              "img/s": f"{images_per_second:.1f}"}, refresh=False)
        for name, value in values.items():
            self.writer.add_scalar(f"loss/{name}", value, step)
        self.writer.add_scalar("train/lr_factor", lr_factor, step)
        self.writer.add_scalar("train/images_per_second", images_per_second, step)

    def scalars(self, step: int, group: str, values: dict[str, float]) -> None:
        """TensorBoard scalars `group/name`, and a line under the bar."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, step)
        self.writer.flush()
        self.bar.write(f"step {step} {group}: " + ", ".join(f"{name} {value:.4g}" for name, value in values.items()))

    def images(self, step: int, labels: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
               config: GeneratorConfig) -> None:
        """One grid: rows label colours / generated / real, one column per sample."""
        if not self.enabled:
            return
        rows = [np.concatenate([colorize(item, config) for item in labels.cpu().numpy()], axis=1),
                np.concatenate(list(tensor_to_rgb(fake)), axis=1),
                np.concatenate(list(tensor_to_rgb(real)), axis=1)]
        self.writer.add_image("samples/label_generated_real", np.concatenate(rows, axis=0), step,
                              dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.writer.close()
