"""`spade-deploy export onnx|trt CKPT --out DIR` (also `python -m export.onnx` / `python -m export.trt` from the
repository root): fold, export `DIR/generator.onnx` (and `DIR/encoder.onnx`), check parity against eager PyTorch,
optionally write a Triton repository; `trt` first builds TensorRT engines where TensorRT and a CUDA GPU exist, and its
gpu repository serves them as `tensorrt_plan` models (where none could be built, it holds the portable ONNX Runtime +
TensorRT-accelerator configs, and a line says so); `--max-batch` sets both the engines' profile and `max_batch_size`.
`--precision`: `onnx` fp32 (exact, the default) or bf16 (OpenVINO on CPUs with AMX or AVX512-BF16; elsewhere it says
so and exports fp32), with the graph fastest at it on this CPU; `trt` the engines' fp16 (default) or fp32.

Exit status: 0 on success, 1 when the parity check fails, 2 on bad input (missing file, wrong size, …); `trt
--require-engine` exits 3 when engines cannot be built here. Without `--require-engine` the engine step is skipped
with the reason and the ONNX files are still written and checked. `--out` gets the new files only once everything
succeeded, and then holds nothing of an earlier export that this one did not write again; a failed export leaves it as
it was (one that failed its parity check is kept in `--out/failed-export` to inspect).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spade_deploy.cli.arguments import (add_model_arguments, byte_size, check_output_folder, non_negative_number,
                                        positive_int, size_of)
from spade_deploy.export.metadata import GRAPHS, TOLERANCE
from spade_deploy.export.precision import CPU_PRECISIONS, FP16, FP32, choose
from spade_deploy.model import io_spec
from spade_deploy.model.config import NUM_UPSAMPLINGS
from spade_deploy.serve.repository import DEFAULT_MAX_BATCH, VARIANTS, check_replaceable, unservable_reason

EXIT_NO_ENGINE = 3
ONNX_GRAPHS = ("sparse", "sparse-bf16", "sparse-tensorrt", "dense")
# Dense by default on GPUs: they have compute to spare, and the sparse graph's data-dependent shapes (NonZero) cost
# a device sync per resolution. TensorRT builds NonZero but not Unique, hence `sparse-tensorrt`.
TRT_GRAPHS = ("dense", "sparse-tensorrt")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to ONNX (and TensorRT), checked for parity",
                                   description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="export_kind", required=True, metavar="KIND")
    onnx = kinds.add_parser("onnx", help="ONNX graphs (+ a Triton repository)",
                            description="Fold, export and check ONNX graphs (+ a Triton repository).")
    add_arguments(onnx, graphs=ONNX_GRAPHS, default_graph=None, default_variant="cpu")
    onnx.add_argument("--precision", choices=(*CPU_PRECISIONS, FP16), default=FP32,
                      help="fp32: exact, the sparse graph in ONNX Runtime (default); bf16: OpenVINO at bf16 (pip "
                           "install \"spade-deploy[openvino]\") with the sparse-bf16 graph, the fastest of ours "
                           "there as measured, its quality against float64 reported, not failed by --tolerance; on a "
                           "CPU without bf16 hardware, fp32; fp16: see `export trt`")
    onnx.set_defaults(run=run_onnx)
    trt = kinds.add_parser("trt", help="everything `onnx` does, with TensorRT engines",
                           description="Everything `export onnx` does, with TensorRT engines for the generator (and "
                                       "encoder) where TensorRT and a CUDA GPU exist, served by the gpu repository.")
    add_arguments(trt, graphs=TRT_GRAPHS, default_graph="dense", default_variant="gpu")
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--precision", choices=(FP16, FP32), default=FP16,
                           help="of the engines: fp16 with normalisation, the last conv and tanh in fp32 (default), "
                                "or fp32 (TF32 convs on Ampere and newer); the ONNX files stay fp32")
    precision.add_argument("--fp16", dest="precision", action="store_const", const=FP16,
                           help="same as --precision fp16")
    precision.add_argument("--fp32", dest="precision", action="store_const", const=FP32,
                           help="same as --precision fp32")
    trt.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                     help="largest batch of the optimisation profile, and the repository's max_batch_size")
    trt.add_argument("--require-engine", action="store_true",
                     help="fail (exit 3) when TensorRT or a CUDA GPU is missing instead of skipping the engines")
    trt.set_defaults(run=run_trt)


def add_arguments(parser: argparse.ArgumentParser, *, graphs: tuple[str, ...], default_graph: str | None,
                  default_variant: str) -> None:
    parser.add_argument("checkpoint", type=Path, help="generator checkpoint: ours, a training run's, or an "
                                                        "official *_net_G.pth")
    parser.add_argument("--encoder", type=Path, help="style encoder checkpoint (ours or an official *_net_E.pth)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    add_model_arguments(parser, size_help="the config's; the export's size is fixed")
    parser.add_argument("--num-upsampling-layers", choices=sorted(NUM_UPSAMPLINGS),
                        help="override what the weights cannot reveal (normal vs more)")
    graph = parser.add_mutually_exclusive_group()
    graph.add_argument("--graph", choices=graphs, default=default_graph,
                       help="; ".join(f"{name}: {GRAPHS[name]}" for name in graphs)
                       + " (default here: " + (default_graph or "the one fastest at --precision on this CPU; dense "
                                                                 "for a gpu repository") + ")")
    graph.add_argument("--dense", dest="graph", action="store_const", const="dense", help="same as --graph dense")
    parser.add_argument("--repository", type=Path,
                        help="also write a Triton model repository here (serve it with `spade-deploy serve`)")
    parser.add_argument("--variant", choices=VARIANTS, default=default_variant,
                        help=f"Triton repository variant: cpu = python backend + ONNX Runtime (runs anywhere); "
                             f"gpu = NVIDIA's Triton container (default here: {default_variant})")
    parser.add_argument("--max-request-memory", type=byte_size, metavar="SIZE",
                        help="cpu repository: memory one served request may use (e.g. 4GiB), by spade-deploy's "
                             "estimate; larger batches and style images are refused before any work (default: what "
                             "a full batch of label maps needs)")
    parser.add_argument("--parity-samples", type=positive_int, default=2,
                        help="random label-map batches in the parity check")
    parser.add_argument("--tolerance", type=non_negative_number, default=TOLERANCE,
                        help="max |Δ| from the float64 model allowed by the parity check (or up to twice eager "
                             "float32's own, when that is larger); a runtime at bf16 is measured, not held to it")


def run_onnx(args: argparse.Namespace) -> int:
    from spade_deploy.export.pipeline import staged

    _check_outputs(args)
    reason = args.repository and unservable_reason(choose(args.precision).precision, args.variant)
    if reason:  # fail before minutes of export, not after
        raise ValueError(f"--repository: {reason}")
    if args.repository and args.variant == "gpu":
        # ONNX Runtime's TensorRT accelerator builds one engine per graph from a fixed profile of the graph's inputs;
        # a sparse graph's data-dependent shapes (NonZero, Unique) split it between TensorRT and CUDA, and the
        # profile cannot cover the pieces.
        if args.graph not in (None, "dense"):
            raise ValueError(f"--graph {args.graph} cannot be served by the gpu repository (ONNX Runtime's TensorRT "
                             f"accelerator needs the dense graph's fixed shapes): leave --graph out (dense), or "
                             f"build TensorRT engines with `spade-deploy export trt`")
        args.graph = "dense"
    with staged(args.out) as folder:  # --out gets the files only when everything here succeeded
        exported = export(args, args.precision, folder)
        if args.repository:
            _repository(args, exported)
    _wrote(args.out, exported.generator_onnx, exported.encoder_onnx)
    return 0


def run_trt(args: argparse.Namespace) -> int:
    from spade_deploy.export.pipeline import ENGINE_SUFFIX, staged, step
    from spade_deploy.export.tensorrt import EngineOptions, build_engine, unavailable_reason

    _check_outputs(args)
    reason = unavailable_reason()
    if reason and args.require_engine:  # fail before minutes of export, not after
        print(f"spade-deploy export trt: error: TensorRT engines are required (--require-engine), but {reason}",
              file=sys.stderr)
        return EXIT_NO_ENGINE
    with staged(args.out) as folder:  # --out gets the files only when everything here succeeded
        exported = export(args, FP32, folder)  # the ONNX files run in ONNX Runtime at fp32; the engines at --precision
        engines: dict[str, Path] = {}
        if reason:
            print(f"TensorRT engine step skipped: {reason}. The ONNX files in {args.out} are ready for it.",
                  file=sys.stderr)
        else:
            options = EngineOptions(fp16=args.precision == FP16, max_batch=args.max_batch)
            for name, onnx_path in ((io_spec.GENERATOR_MODEL, exported.generator_onnx),
                                    (io_spec.ENCODER_MODEL, exported.encoder_onnx)):
                if onnx_path is not None:
                    engine = onnx_path.with_suffix(ENGINE_SUFFIX)
                    with step(f"building the TensorRT engine for {onnx_path.name} ({args.precision})"):
                        build_engine(onnx_path, engine, options)
                    engines[name] = engine
        if args.repository:
            if args.variant == "gpu" and not engines:
                print(f"The gpu repository serves the ONNX graphs (ONNX Runtime + TensorRT accelerator, the portable "
                      f"configs), not tensorrt_plan models: {reason}.", file=sys.stderr)
            _repository(args, exported, max_batch_size=args.max_batch,
                        engines=engines if args.variant == "gpu" else None)
    _wrote(args.out, exported.generator_onnx, exported.encoder_onnx, *engines.values())
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: `--out` and `--repository` can be written, the repository would replace nothing but an
    earlier spade repository (`write_repository` replaces it as a whole), and neither folder holds the other's
    files; `--max-request-memory` comes with a cpu repository."""
    check_output_folder(args.out, "--out")
    if args.max_request_memory is not None and (args.repository is None or args.variant != "cpu"):
        raise ValueError("--max-request-memory sets the budget of a cpu Triton repository: give it with --repository "
                         "and --variant cpu")
    if args.max_request_memory is not None:
        _check_memory_budget(args)
    if args.repository is None:
        return
    check_output_folder(args.repository, "--repository")
    out, repository = args.out.resolve(), args.repository.resolve()
    if repository == out or repository in out.parents:
        where = "is the --out folder" if repository == out else f"holds --out {args.out}"
        raise ValueError(f"--repository {args.repository} {where}, and a repository is replaced as a whole: give it "
                         f"a folder of its own")
    try:
        check_replaceable(args.repository)
    except ValueError as error:
        raise ValueError(f"--repository: {error}") from None


def _check_memory_budget(args: argparse.Namespace) -> None:
    """`--max-request-memory` against the model's estimate for one label map, from the checkpoint's config (a load
    of a few seconds), before minutes of export: `write_repository` checks the same."""
    from spade_deploy.model.checkpoint import load_generator
    from spade_deploy.serve.repository import memory_budget

    overrides = {"num_upsampling_layers": args.num_upsampling_layers} if args.num_upsampling_layers else {}
    config = load_generator(args.checkpoint, preset=args.preset, **overrides).config
    height, width = size_of(args) or config.image_size
    try:
        memory_budget(args.max_request_memory, args.variant, config, height, width,
                      getattr(args, "max_batch", None) or DEFAULT_MAX_BATCH)
    except ValueError as error:
        raise ValueError(f"--max-request-memory: {error}") from None


def export(args: argparse.Namespace, precision: str, folder: Path):  # -> spade_deploy.export.pipeline.Exported
    """The ONNX export of the parsed arguments at `precision`, written to `folder` (staged for `--out`)."""
    from spade_deploy.export.pipeline import write_export

    size = size_of(args)
    height, width = size if size else (None, None)
    return write_export(args.checkpoint, folder, encoder=args.encoder, preset=args.preset,
                        num_upsampling_layers=args.num_upsampling_layers, graph=args.graph, precision=precision,
                        height=height, width=width, parity_samples=args.parity_samples, tolerance=args.tolerance)


def _wrote(out: Path, *paths: Path | None) -> None:
    """Name the files of a staged export where they now are: in `out`."""
    for path in paths:
        if path is not None:
            print(f"wrote {out / path.name}")


def _repository(args: argparse.Namespace, exported, **options: Any) -> None:
    """The Triton repository of `--repository` for an export; `options` go to `serve.repository.write_repository`."""
    from spade_deploy.export.pipeline import step
    from spade_deploy.serve import repository

    with step(f"writing the Triton model repository ({args.variant})"):
        repository.write_repository(args.repository, exported.generator_onnx, exported.encoder_onnx,
                                    variant=args.variant, max_request_memory=args.max_request_memory, **options)
    serve = (f"spade-deploy serve --repository {args.repository}" if args.variant == "cpu" else
             "in NVIDIA's Triton container, docs/deployment.md")
    print(f"wrote {args.repository} (serve it: {serve})")
