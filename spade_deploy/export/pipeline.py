"""The export pipeline: load a checkpoint -> deployment graph -> ONNX -> parity against the float64 model.

`export_onnx` is what `spade-deploy export onnx` (and `python -m export.onnx`) runs; the CLI adds the Triton
repository (a later stage) and TensorRT engines on top of what it returns.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from spade_deploy.export.graphs import DeployGenerator, encoder_graph, generator_graph
from spade_deploy.export.metadata import TOLERANCE
from spade_deploy.export.onnx import write_encoder_onnx, write_generator_onnx
from spade_deploy.export.parity import Comparison, check, encoder_parity, format_table, generator_parity
from spade_deploy.model import io_spec
from spade_deploy.model.checkpoint import load_encoder, load_generator
from spade_deploy.model.labels import check_label_size
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator

GENERATOR_FILE = "generator.onnx"
ENCODER_FILE = "encoder.onnx"


@dataclass
class Exported:
    generator: SPADEGenerator  # the eager model that was exported
    generator_graph: DeployGenerator  # the module written to generator_onnx
    generator_onnx: Path
    encoder: ConvEncoder | None = None
    encoder_graph: nn.Module | None = None
    encoder_onnx: Path | None = None
    parity: list[Comparison] = field(default_factory=list)  # the worst comparisons with float64, all passed


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a long step and report its duration (stderr, so stdout stays clean for tables)."""
    print(f"• {title} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def export_onnx(checkpoint: str | Path, out: str | Path, *, encoder: str | Path | None = None,
                preset: str | None = None, num_upsampling_layers: str | None = None, graph: str = "sparse",
                height: int | None = None, width: int | None = None, parity_samples: int = 2,
                tolerance: float = TOLERANCE) -> Exported:
    """Load a generator checkpoint (and encoder), write `out/generator.onnx` (and `out/encoder.onnx`) as the
    deployment `graph` at height x width (default: the config's), and check parity of the very modules written
    against the float64 model (see `parity`). Raises `ValueError` on bad input and `ParityError` when it fails."""
    if (height is None) != (width is None):
        raise ValueError("give height and width together (or neither, for the config's size)")
    if parity_samples < 1:
        raise ValueError(f"parity_samples must be at least 1, got {parity_samples}")
    out = Path(out)
    overrides = {"num_upsampling_layers": num_upsampling_layers} if num_upsampling_layers else {}
    with step(f"loading {checkpoint}"):
        generator = load_generator(checkpoint, preset=preset, **overrides)
        if encoder is not None:
            io_spec.check_encoder_fits(generator.config)
        style_encoder = load_encoder(encoder) if encoder is not None else None
    print(f"  generator: {generator.config}", file=sys.stderr)
    default_height, default_width = generator.config.image_size
    height, width = height or default_height, width or default_width
    with step(f"folding and exporting the generator to ONNX ({graph} graph)"):
        check_label_size(height, width, generator.config)
        module = generator_graph(generator, graph=graph, height=height, width=width)
        exported = Exported(generator, module, write_generator_onnx(module, out / GENERATOR_FILE, height=height,
                                                                    width=width))
    with step("parity: eager, deployment graph and ONNX Runtime vs float64 (generator)"):
        exported.parity += generator_parity(generator, module, exported.generator_onnx, samples=parity_samples)
    if style_encoder is not None:
        with step("exporting the encoder to ONNX"):
            exported.encoder, exported.encoder_graph = style_encoder, encoder_graph(style_encoder)
            exported.encoder_onnx = write_encoder_onnx(exported.encoder_graph, out / ENCODER_FILE)
        with step("parity: eager, deployment graph and ONNX Runtime vs float64 (encoder)"):
            exported.parity += encoder_parity(style_encoder, exported.encoder_graph, exported.encoder_onnx)
    print(format_table(exported.parity, tolerance))
    check(exported.parity, tolerance)
    return exported
