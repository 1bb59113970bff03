"""`python -m export.onnx CKPT [--encoder E.pth] [--preset P] [--num-upsampling-layers M] [--height H --width W]
--out DIR`: fold, export `DIR/generator.onnx` (and `DIR/encoder.onnx`), and check parity against eager PyTorch.

Exit status: 0 on success, 1 when the parity check fails, 2 on bad input (missing file, wrong size, …).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from export.parity import TOLERANCE, ParityError, check, encoder_parity, format_table, generator_parity
from spade_deploy.checkpoint import load_encoder, load_generator
from spade_deploy.config import NUM_UPSAMPLINGS, PRESETS
from spade_deploy.networks import ConvEncoder, SPADEGenerator
from spade_deploy.onnx_export import GRAPHS, export_encoder_onnx, export_generator_onnx
from spade_deploy.triton_repo import VARIANTS, write_repository

GENERATOR_FILE = "generator.onnx"
ENCODER_FILE = "encoder.onnx"


@dataclass
class Exported:
    generator: SPADEGenerator
    generator_onnx: Path
    encoder: ConvEncoder | None = None
    encoder_onnx: Path | None = None


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a long step and report its duration (stderr, so stdout stays clean for tables)."""
    print(f"• {title} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser, graphs: tuple[str, ...] = ("sparse", "sparse-tensorrt", "dense"),
                  default_graph: str = "sparse", default_variant: str = "cpu") -> None:
    """Arguments shared by `export.onnx` and `export.trt` (which offers only the graphs TensorRT builds)."""
    parser.add_argument("checkpoint", type=Path, help="generator checkpoint: ours, a training run's, or an "
                                                        "official *_net_G.pth")
    parser.add_argument("--encoder", type=Path, help="style encoder checkpoint (ours or an official *_net_E.pth)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="dataset preset for official checkpoints "
                                                                  "without opt.txt")
    parser.add_argument("--num-upsampling-layers", choices=sorted(NUM_UPSAMPLINGS),
                        help="override what the weights cannot reveal (normal vs more)")
    parser.add_argument("--height", type=int, help="export height (default: the config's)")
    parser.add_argument("--width", type=int, help="export width (default: the config's)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    graph = parser.add_mutually_exclusive_group()
    graph.add_argument("--graph", choices=graphs, default=default_graph,
                       help="; ".join(f"{name}: {GRAPHS[name]}" for name in graphs)
                       + f" (default here: {default_graph})")
    graph.add_argument("--dense", dest="graph", action="store_const", const="dense", help="same as --graph dense")
    parser.add_argument("--repository", type=Path,
                        help="also write a Triton model repository here (serve it with `spade-deploy serve`)")
    parser.add_argument("--variant", choices=VARIANTS, default=default_variant,
                        help=f"Triton repository variant: cpu = python backend + ONNX Runtime (runs anywhere); "
                             f"gpu = NVIDIA's Triton container (default here: {default_variant})")
    parser.add_argument("--parity-samples", type=int, default=2, help="random label-map batches in the parity check")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |Δ| allowed by the parity check")


def export_onnx(args: argparse.Namespace) -> Exported:
    """Load, export and check; raises `ValueError` on bad input and `ParityError` on a mismatch."""
    if (args.height is None) != (args.width is None):
        raise ValueError("give --height and --width together (or neither, for the config's size)")
    overrides = {"num_upsampling_layers": args.num_upsampling_layers} if args.num_upsampling_layers else {}
    with step(f"loading {args.checkpoint}"):
        generator = load_generator(args.checkpoint, preset=args.preset, **overrides)
        config = generator.config
        if args.encoder and not config.use_vae:
            raise ValueError(f"--encoder given, but {args.checkpoint} is not a VAE generator: it takes no style "
                             f"latent")
        encoder = load_encoder(args.encoder) if args.encoder else None
    print(f"  generator: {config}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with step(f"folding and exporting the generator to ONNX ({args.graph} graph)"):
        generator_onnx = export_generator_onnx(generator, args.out / GENERATOR_FILE, height=args.height,
                                               width=args.width, graph=args.graph)
    results = []
    with step("parity: eager vs folded vs ONNX Runtime (generator)"):
        results += generator_parity(generator, generator_onnx, graph=args.graph, samples=args.parity_samples)
    encoder_onnx = None
    if encoder is not None:
        with step("exporting the encoder to ONNX"):
            encoder_onnx = export_encoder_onnx(encoder, args.out / ENCODER_FILE)
        with step("parity: eager vs folded vs ONNX Runtime (encoder)"):
            results += encoder_parity(encoder, encoder_onnx)
    print(format_table(results, args.tolerance))
    check(results, args.tolerance)
    for path in (generator_onnx, encoder_onnx):
        if path is not None:
            print(f"wrote {path}")
    if args.repository:
        with step(f"writing the Triton model repository ({args.variant})"):
            write_repository(args.repository, generator_onnx, encoder_onnx, variant=args.variant)
        print(f"wrote {args.repository} (serve it: spade-deploy serve --repository {args.repository})")
    return Exported(generator, generator_onnx, encoder, encoder_onnx)


def run(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run an export entry point, turning expected failures into messages and exit codes."""
    try:
        main(args)
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # includes CheckpointError: bad input the user can fix
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(export_onnx, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
