"""`python -m export.trt CKPT [--encoder E.pth] [--fp16/--fp32] [--max-batch B] --out DIR`: everything
`export.onnx` does, then TensorRT engines for the generator (and encoder) where TensorRT and a CUDA GPU exist.

Without them the ONNX files are still written and checked; the engine step is skipped with the reason and the exit
status stays 0, unless `--require-engine` makes that an error (exit 3).
"""
from __future__ import annotations

import argparse
import sys

from export.onnx import add_arguments, export_onnx, run, step
from export.tensorrt_engine import EngineOptions, EngineUnavailable, build_engine, unavailable_reason

EXIT_NO_ENGINE = 3


def export_trt(args: argparse.Namespace) -> None:
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    reason = unavailable_reason()
    if reason and args.require_engine:  # fail before minutes of export, not after
        raise EngineUnavailable(f"TensorRT engines are required (--require-engine), but {reason}")
    exported = export_onnx(args)
    if reason:
        print(f"TensorRT engine step skipped: {reason}. The ONNX files in {args.out} are ready for it.",
              file=sys.stderr)
        return
    options = EngineOptions(fp16=args.fp16, max_batch=args.max_batch)
    for onnx_path in (exported.generator_onnx, exported.encoder_onnx):
        if onnx_path is not None:
            with step(f"building the TensorRT engine for {onnx_path.name} ({'fp16' if options.fp16 else 'fp32'})"):
                build_engine(onnx_path, onnx_path.with_suffix(".plan"), options)
            print(f"wrote {onnx_path.with_suffix('.plan')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__.split("\n\n")[0])
    # Dense by default on GPUs: they have compute to spare, and the sparse graph's data-dependent shapes (NonZero)
    # cost a device sync per resolution. TensorRT builds NonZero but not Unique, hence `sparse-tensorrt`.
    add_arguments(parser, graphs=("dense", "sparse-tensorrt"), default_graph="dense", default_variant="gpu")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="fp16", action="store_true", default=True,
                           help="FP16 engine, normalisation-sensitive layers in FP32 (default)")
    precision.add_argument("--fp32", dest="fp16", action="store_false", help="FP32 engine")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of the optimisation profile")
    parser.add_argument("--require-engine", action="store_true",
                        help="fail (exit 3) when TensorRT or a CUDA GPU is missing instead of skipping the engines")
    args = parser.parse_args(argv)
    try:
        return run(export_trt, args)
    except EngineUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_ENGINE


if __name__ == "__main__":
    sys.exit(main())
