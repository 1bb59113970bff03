"""Parity of every export: the eager model in float64 is the reference; eager PyTorch in float32, the exported graph
run in PyTorch and its ONNX Runtime session are each measured against it.

float64 rather than eager float32, because float32 rounding is no reference: on a model whose activations reach
~1e3, eager float32 itself lies ~1e-3 from the float64 result, and a faithful export may lie as far from it on the
other side. A candidate passes when it is within the tolerance of float64, or no further from it than twice eager
float32 is (its rounding is then as good as PyTorch's own).

Run on synthetic label maps with irregular regions using every label index (don't-care included), instance maps
when the model has them, random latents for VAE generators and random style images for the encoder.
"""
from __future__ import annotations

import copy
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


EAGER = "eager float32"
ROUNDING_FACTOR = 2.0  # a candidate may lie this many times further from float64 than eager float32 does


@dataclass(frozen=True)
class Comparison:
    output: str  # image_float, mu, logvar
    candidate: str  # EAGER, "graph in PyTorch" or "ONNX Runtime"
    max_abs: float  # against the float64 model
    rel_l2: float
    eager_max_abs: float  # eager float32's own max |Δ| from float64 on the same inputs

    def bound(self, tolerance: float) -> float:
        return max(tolerance, ROUNDING_FACTOR * self.eager_max_abs)

    def ok(self, tolerance: float) -> bool:
        return self.candidate == EAGER or self.max_abs <= self.bound(tolerance)


def compare(output: str, reference: np.ndarray, eager: np.ndarray,
            candidates: dict[str, np.ndarray]) -> list[Comparison]:
    """Eager float32 and each candidate against the float64 `reference`."""
    reference = np.asarray(reference, np.float64)
    eager_max_abs = float(np.abs(np.asarray(eager, np.float64) - reference).max())
    comparisons = []
    for candidate, value in {EAGER: eager, **candidates}.items():
        delta = np.asarray(value, np.float64) - reference
        rel = float(np.linalg.norm(delta) / max(np.linalg.norm(reference), 1e-12))
        comparisons.append(Comparison(output, candidate, float(np.abs(delta).max()), rel, eager_max_abs))
    return comparisons


def float64_copy(module: nn.Module) -> nn.Module:
    """The same model in float64 (weights, statistics and spectral-norm vectors), eval mode."""
    return copy.deepcopy(module).double().eval()


@torch.no_grad()
def generator_parity(generator: SPADEGenerator, graph: DeployGenerator, onnx_path: str | Path, *, batch: int = 2,
                     samples: int = 2, seed: int = 0) -> list[Comparison]:
    """Worst case over `samples` batches of: the deployment `graph` in PyTorch and its export `onnx_path` in ONNX
    Runtime vs the eager generator."""
    runtime = OnnxGenerator(onnx_path)
    config, height, width = runtime.config, runtime.height, runtime.width
    reference_model = float64_copy(generator)
    worst: dict[str, Comparison] = {}
    for index in tqdm(range(samples), desc="parity: generator", unit="batch", leave=False):
        labels, instances = synthetic_batch(config, batch, height=height, width=width,
                                            num_regions=8 + 8 * index, seed=seed + 10 * index)
        z = torch.randn(batch, config.z_dim, generator=torch.Generator().manual_seed(seed + index)) \
            if config.use_vae else None
        semantic = to_semantic_input(labels, instances, config)
        eager = generator(semantic, z).numpy()
        reference = reference_model(semantic.double(), None if z is None else z.double()).numpy()
        inputs = runtime.feeds(labels, instances, None if z is None else z.numpy())
        _, folded_float = graph(*(torch.from_numpy(value) for value in inputs.values()))
        _, onnx_float = runtime(labels, instances, None if z is None else z.numpy())
        for result in compare("image_float", reference, eager, {"graph in PyTorch": folded_float.numpy(),
                                                                "ONNX Runtime": onnx_float}):
            _keep_worst(worst, result)
    return list(worst.values())


@torch.no_grad()
def encoder_parity(encoder: ConvEncoder, graph: nn.Module, onnx_path: str | Path, *, batch: int = 2,
                   seed: int = 0) -> list[Comparison]:
    """The encoder's deployment `graph` in PyTorch and its export in ONNX Runtime vs the eager encoder, on style
    images of two different sizes."""
    runtime = OnnxEncoder(onnx_path)
    reference_model = float64_copy(encoder)
    worst: dict[str, Comparison] = {}
    for index, (height, width) in enumerate(tqdm([(256, 256), (183, 301)], desc="parity: encoder", leave=False)):
        style = random_style(batch, height, width, seed=seed + index)
        image = rgb_to_tensor(style)
        eager = [value.numpy() for value in encoder(image)]
        references = [value.numpy() for value in reference_model(image.double())]
        folded_out = [value.numpy() for value in graph(torch.from_numpy(style))]
        onnx_out = runtime(style)
        for name, reference, eager_value, fold_value, onnx_value in zip(("mu", "logvar"), references, eager,
                                                                         folded_out, onnx_out):
            for result in compare(name, reference, eager_value, {"graph in PyTorch": fold_value,
                                                                 "ONNX Runtime": onnx_value}):
                _keep_worst(worst, result)
    return list(worst.values())


def _keep_worst(worst: dict[str, Comparison], result: Comparison) -> None:
    key = f"{result.output}/{result.candidate}"
    if key not in worst or result.max_abs > worst[key].max_abs:
        worst[key] = result


def format_table(results: list[Comparison], tolerance: float = TOLERANCE) -> str:
    lines = [f"{'output':<12} {'vs float64':<16} {'max |Δ|':>10} {'rel L2':>10}  "
             f"ok (≤ max({tolerance:g}, {ROUNDING_FACTOR:g}× eager float32's))"]
    for result in results:
        verdict = "reference" if result.candidate == EAGER else "yes" if result.ok(tolerance) else "NO"
        lines.append(f"{result.output:<12} {result.candidate:<16} {result.max_abs:>10.2e} {result.rel_l2:>10.2e}  "
                     f"{verdict}")
    return "\n".join(lines)


def check(results: list[Comparison], tolerance: float = TOLERANCE) -> None:
    failed = [result for result in results if not result.ok(tolerance)]
    if failed:
        worst = max(failed, key=lambda result: result.max_abs / result.bound(tolerance))
        raise ParityError(f"parity check failed: {worst.candidate} {worst.output} differs from the float64 model by "
                          f"max |Δ| = {worst.max_abs:.3e} > {worst.bound(tolerance):.3g} (the tolerance {tolerance:g}, "
                          f"or {ROUNDING_FACTOR:g}× eager float32's {worst.eager_max_abs:.3e})\n"
                          f"{format_table(results, tolerance)}")
