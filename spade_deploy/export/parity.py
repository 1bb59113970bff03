"""Parity of every export: eager PyTorch (unfolded) vs the exported graph run in PyTorch vs ONNX Runtime.

Run on synthetic label maps with irregular regions using every label index (don't-care included), instance maps
when the model has them, random latents for VAE generators and random style images for the encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from spade_deploy.errors import Failure
from spade_deploy.export.graphs import DeployGenerator
from spade_deploy.export.metadata import TOLERANCE
from spade_deploy.export.runtime import OnnxEncoder, OnnxGenerator
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.synthetic import random_style, synthetic_batch
from spade_deploy.model.tensors import rgb_to_tensor, to_semantic_input


class ParityError(Failure):
    """An exported graph does not compute the eager model's function within the tolerance."""


@dataclass(frozen=True)
class Comparison:
    output: str  # image_float, mu, logvar
    candidate: str  # "graph in PyTorch" or "ONNX Runtime"
    max_abs: float
    rel_l2: float

    def ok(self, tolerance: float) -> bool:
        return self.max_abs <= tolerance


def compare(output: str, candidate: str, reference: np.ndarray, value: np.ndarray) -> Comparison:
    reference, value = np.asarray(reference, np.float64), np.asarray(value, np.float64)
    delta = value - reference
    rel = float(np.linalg.norm(delta) / max(np.linalg.norm(reference), 1e-12))
    return Comparison(output, candidate, float(np.abs(delta).max()), rel)


@torch.no_grad()
def generator_parity(generator: SPADEGenerator, graph: DeployGenerator, onnx_path: str | Path, *, batch: int = 2,
                     samples: int = 2, seed: int = 0) -> list[Comparison]:
    """Worst case over `samples` batches of: the deployment `graph` in PyTorch and its export `onnx_path` in ONNX
    Runtime vs the eager generator."""
    runtime = OnnxGenerator(onnx_path)
    config, height, width = runtime.config, runtime.height, runtime.width
    worst: dict[str, Comparison] = {}
    for index in tqdm(range(samples), desc="parity: generator", unit="batch", leave=False):
        labels, instances = synthetic_batch(config, batch, height=height, width=width,
                                            num_regions=8 + 8 * index, seed=seed + 10 * index)
        z = torch.randn(batch, config.z_dim, generator=torch.Generator().manual_seed(seed + index)) \
            if config.use_vae else None
        eager = generator(to_semantic_input(labels, instances, config), z).numpy()
        inputs = runtime.feeds(labels, instances, None if z is None else z.numpy())
        _, folded_float = graph(*(torch.from_numpy(value) for value in inputs.values()))
        _, onnx_float = runtime(labels, instances, None if z is None else z.numpy())
        for result in (compare("image_float", "graph in PyTorch", eager, folded_float.numpy()),
                       compare("image_float", "ONNX Runtime", eager, onnx_float)):
            _keep_worst(worst, result)
    return list(worst.values())


@torch.no_grad()
def encoder_parity(encoder: ConvEncoder, graph: nn.Module, onnx_path: str | Path, *, batch: int = 2,
                   seed: int = 0) -> list[Comparison]:
    """The encoder's deployment `graph` in PyTorch and its export in ONNX Runtime vs the eager encoder, on style
    images of two different sizes."""
    runtime = OnnxEncoder(onnx_path)
    worst: dict[str, Comparison] = {}
    for index, (height, width) in enumerate(tqdm([(256, 256), (183, 301)], desc="parity: encoder", leave=False)):
        style = random_style(batch, height, width, seed=seed + index)
        eager = [value.numpy() for value in encoder(rgb_to_tensor(style))]
        folded_out = [value.numpy() for value in graph(torch.from_numpy(style))]
        onnx_out = runtime(style)
        for name, reference, fold_value, onnx_value in zip(("mu", "logvar"), eager, folded_out, onnx_out):
            _keep_worst(worst, compare(name, "graph in PyTorch", reference, fold_value))
            _keep_worst(worst, compare(name, "ONNX Runtime", reference, onnx_value))
    return list(worst.values())


def _keep_worst(worst: dict[str, Comparison], result: Comparison) -> None:
    key = f"{result.output}/{result.candidate}"
    if key not in worst or result.max_abs > worst[key].max_abs:
        worst[key] = result


def format_table(results: list[Comparison], tolerance: float = TOLERANCE) -> str:
    lines = [f"{'output':<12} {'vs eager PyTorch':<16} {'max |Δ|':>10} {'rel L2':>10}  ok (≤ {tolerance:g})"]
    for result in results:
        lines.append(f"{result.output:<12} {result.candidate:<16} {result.max_abs:>10.2e} {result.rel_l2:>10.2e}  "
                     f"{'yes' if result.ok(tolerance) else 'NO'}")
    return "\n".join(lines)


def check(results: list[Comparison], tolerance: float = TOLERANCE) -> None:
    failed = [result for result in results if not result.ok(tolerance)]
    if failed:
        worst = max(failed, key=lambda result: result.max_abs)
        raise ParityError(f"parity check failed: {worst.candidate} {worst.output} differs from eager PyTorch by "
                          f"max |Δ| = {worst.max_abs:.3e} > {tolerance:g}\n{format_table(results, tolerance)}")
