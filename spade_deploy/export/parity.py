"""Parity of every export: the eager model in float64 is the reference; eager PyTorch in float32, the exported graph
run in PyTorch and its runtime session (ONNX Runtime; OpenVINO for a bf16 export) are each measured against it.

float64 rather than eager float32, because float32 rounding is no reference: on a model whose activations reach
~1e3, eager float32 itself lies ~1e-3 from the float64 result, and a faithful export may lie as far from it on the
other side. A candidate passes when it is within the tolerance of float64, or no further from it than twice eager
float32 is (its rounding is then as good as PyTorch's own). A runtime at reduced precision (a bf16 export in
OpenVINO) is not judged by that rule, which it cannot meet and its user chose not to: its quality is measured and
shown beside eager float32's (`Quality`: max |Δ|, PSNR and the share of 8-bit pixels within 1 and 2 levels of the
float64 model's), never hidden. The exported graph itself, run by PyTorch in float32, is always judged.

Run on synthetic label maps of irregular regions: in the first batch each map holds every label index (don't-care
included: every row of the sparse graph's per-class tables is used), in the others 8 + 8 i regions of classes drawn
from all of them; instance maps when the model has them, random latents for VAE generators and random style images
for the encoder.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from spade_deploy.errors import Failure
from spade_deploy.export.graphs import DeployGenerator
from spade_deploy.export.metadata import TOLERANCE
from spade_deploy.export.precision import FP32, runtime_name
from spade_deploy.export.runtime import OnnxEncoder, OnnxGenerator
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.synthetic import random_style, synthetic_batch
from spade_deploy.model.tensors import rgb_to_tensor, to_semantic_input, to_uint8_image


class ParityError(Failure):
    """An exported graph does not compute the eager model's function within the tolerance."""


EAGER = "eager float32"
ROUNDING_FACTOR = 2.0  # a candidate may lie this many times further from float64 than eager float32 does
PEAK_TO_PEAK = 2.0  # image_float spans [-1, 1]: PSNR on that scale is PSNR on the 8-bit scale before rounding


@dataclass(frozen=True)
class Quality:
    """An output `image_float` against the float64 model's on the same inputs."""
    max_abs_diff: float
    psnr_db: float | None  # 10·log10(PEAK_TO_PEAK² / MSE); None where the outputs are identical
    within_1_level: float  # share of 8-bit pixels (all three channels) within 1 level of the float64 model's
    within_2_levels: float

    def worse(self, other: Quality) -> Quality:
        """The worst of both, measure by measure."""
        psnrs = [value for value in (self.psnr_db, other.psnr_db) if value is not None]
        return Quality(max(self.max_abs_diff, other.max_abs_diff), min(psnrs) if psnrs else None,
                       min(self.within_1_level, other.within_1_level),
                       min(self.within_2_levels, other.within_2_levels))


def quality(output: np.ndarray, reference: np.ndarray) -> Quality:
    """`output` (image_float `[N, 3, H, W]`) against `reference` (the float64 model's), in float64; 8-bit pixels
    as the deployment's `image` output rounds them (`to_uint8_image`)."""
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    delta = output - reference
    mse = float(np.mean(delta ** 2))
    levels = np.abs(to_uint8_image(torch.from_numpy(output)).int() - to_uint8_image(torch.from_numpy(reference)).int())
    worst_channel = levels.amax(dim=-1)  # [N, H, W]: a pixel is as far as its furthest channel
    return Quality(max_abs_diff=float(np.abs(delta).max()),
                   psnr_db=10 * float(np.log10(PEAK_TO_PEAK ** 2 / mse)) if mse > 0 else None,
                   within_1_level=float((worst_channel <= 1).float().mean()),
                   within_2_levels=float((worst_channel <= 2).float().mean()))


@dataclass(frozen=True)
class Comparison:
    output: str  # image_float, mu, logvar
    candidate: str  # EAGER, "graph in PyTorch", "ONNX Runtime" or "OpenVINO bf16"
    max_abs: float  # against the float64 model
    rel_l2: float
    eager_max_abs: float  # eager float32's own max |Δ| from float64 on the same inputs
    precision: str = FP32  # what the candidate computes in; reduced precision is measured, not judged
    quality: Quality | None = None  # image_float only

    def bound(self, tolerance: float) -> float:
        return max(tolerance, ROUNDING_FACTOR * self.eager_max_abs)

    @property
    def judged(self) -> bool:
        """Held to the bound: every fp32 candidate but the yardstick itself."""
        return self.candidate != EAGER and self.precision == FP32

    def ok(self, tolerance: float) -> bool:
        return not self.judged or self.max_abs <= self.bound(tolerance)


def compare(output: str, reference: np.ndarray, eager: np.ndarray, candidates: dict[str, np.ndarray],
            precisions: Mapping[str, str] | None = None) -> list[Comparison]:
    """Eager float32 and each candidate (computing in `precisions[candidate]`, default fp32) against the float64
    `reference`; with the `Quality` of each where `output` is image_float."""
    reference = np.asarray(reference, np.float64)
    eager_max_abs = float(np.abs(np.asarray(eager, np.float64) - reference).max())
    comparisons = []
    for candidate, value in {EAGER: eager, **candidates}.items():
        delta = np.asarray(value, np.float64) - reference
        rel = float(np.linalg.norm(delta) / max(np.linalg.norm(reference), 1e-12))
        comparisons.append(Comparison(output, candidate, float(np.abs(delta).max()), rel, eager_max_abs,
                                      (precisions or {}).get(candidate, FP32),
                                      quality(value, reference) if output == "image_float" else None))
    return comparisons


def float64_copy(module: nn.Module) -> nn.Module:
    """The same model in float64 (weights, statistics and spectral-norm vectors), eval mode."""
    return copy.deepcopy(module).double().eval()


@torch.no_grad()
def generator_parity(generator: SPADEGenerator, graph: DeployGenerator, onnx_path: str | Path, *, batch: int = 2,
                     samples: int = 2, seed: int = 0, tolerance: float = TOLERANCE) -> list[Comparison]:
    """Worst case (`_keep_worst`, judged by `tolerance`) over `samples` batches of: the deployment `graph` in PyTorch
    and its export `onnx_path`, run the way it will run (`OnnxGenerator`: ONNX Runtime, or OpenVINO at bf16 for a
    bf16 export), vs the eager generator."""
    runtime = OnnxGenerator(onnx_path)
    runtime_label = runtime_name(runtime.runtime, runtime.precision)
    config, height, width = runtime.config, runtime.height, runtime.width
    reference_model = float64_copy(generator)
    worst: dict[str, Comparison] = {}
    for index in tqdm(range(samples), desc="parity: generator", unit="batch", leave=False):
        labels, instances = synthetic_batch(config, batch, height=height, width=width, num_regions=8 + 8 * index,
                                            seed=seed + 10 * index, every_class=index == 0)
        z = torch.randn(batch, config.z_dim, generator=torch.Generator().manual_seed(seed + index)) \
            if config.use_vae else None
        semantic = to_semantic_input(labels, instances, config)
        eager = generator(semantic, z).numpy()
        reference = reference_model(semantic.double(), None if z is None else z.double()).numpy()
        inputs = runtime.feeds(labels, instances, None if z is None else z.numpy())
        _, folded_float = graph(*(torch.from_numpy(value) for value in inputs.values()))
        _, onnx_float = runtime(labels, instances, None if z is None else z.numpy())
        for result in compare("image_float", reference, eager, {"graph in PyTorch": folded_float.numpy(),
                                                                runtime_label: onnx_float},
                              {runtime_label: runtime.precision}):
            _keep_worst(worst, result, tolerance)
    return list(worst.values())


@torch.no_grad()
def encoder_parity(encoder: ConvEncoder, graph: nn.Module, onnx_path: str | Path, *, batch: int = 2,
                   seed: int = 0, tolerance: float = TOLERANCE) -> list[Comparison]:
    """The encoder's deployment `graph` in PyTorch and its export in ONNX Runtime vs the eager encoder, on style
    images of two different sizes (the worst case, as `generator_parity`)."""
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
                _keep_worst(worst, result, tolerance)
    return list(worst.values())


def _keep_worst(worst: dict[str, Comparison], result: Comparison, tolerance: float) -> None:
    """The worst row per output and candidate, and the worst quality measure by measure. A judged row's bound comes
    from its own batch (eager float32's distance there), so the worst is the one nearest its bound, or furthest past
    it (max |Δ| / bound): a batch where eager float32 strayed far has a loose bound, and its larger max |Δ| must not
    hide a batch that fails its own. Rows not judged: the largest max |Δ|."""
    key = f"{result.output}/{result.candidate}"
    kept = worst.get(key)
    if kept is None:
        worst[key] = result
        return
    merged = kept.quality if result.quality is None else result.quality.worse(kept.quality)
    badness = ((lambda row: row.max_abs / row.bound(tolerance)) if result.judged else (lambda row: row.max_abs))
    worst[key] = replace(max(kept, result, key=badness), quality=merged)


def format_table(results: list[Comparison], tolerance: float = TOLERANCE) -> str:
    lines = [f"{'output':<12} {'vs float64':<16} {'max |Δ|':>10} {'rel L2':>10}  "
             f"ok (≤ max({tolerance:g}, {ROUNDING_FACTOR:g}× eager float32's))"]
    for result in results:
        verdict = ("reference" if result.candidate == EAGER else f"not judged ({result.precision}: see its quality)"
                   if not result.judged else "yes" if result.ok(tolerance) else "NO")
        lines.append(f"{result.output:<12} {result.candidate:<16} {result.max_abs:>10.2e} {result.rel_l2:>10.2e}  "
                     f"{verdict}")
    return "\n".join(lines)


def format_quality(results: list[Comparison]) -> str:
    """The image quality of every image_float row against the float64 model (the worst over the batches)."""
    lines = [f"{'image vs float64':<20} {'precision':<9} {'max |Δ|':>10} {'PSNR dB':>9} {'pixels ≤ 1 level':>17} "
             f"{'≤ 2 levels':>11}"]
    for result in results:
        if result.quality is not None:
            measured = result.quality
            psnr = "identical" if measured.psnr_db is None else f"{measured.psnr_db:.1f}"
            lines.append(f"{result.candidate:<20} {result.precision:<9} {measured.max_abs_diff:>10.2e} {psnr:>9} "
                         f"{measured.within_1_level:>17.2%} {measured.within_2_levels:>11.2%}")
    return "\n".join(lines)


def check(results: list[Comparison], tolerance: float = TOLERANCE) -> None:
    failed = [result for result in results if not result.ok(tolerance)]
    if failed:
        worst = max(failed, key=lambda result: result.max_abs / result.bound(tolerance))
        raise ParityError(f"parity check failed: {worst.candidate} {worst.output} differs from the float64 model by "
                          f"max |Δ| = {worst.max_abs:.3e} > {worst.bound(tolerance):.3g} (the tolerance {tolerance:g}, "
                          f"or {ROUNDING_FACTOR:g}× eager float32's {worst.eager_max_abs:.3e})\n"
                          f"{format_table(results, tolerance)}")
