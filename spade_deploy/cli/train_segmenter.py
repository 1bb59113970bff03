"""`spade-deploy train-segmenter --dataroot DIR --out SEG.onnx`: the segmentation network `spade-deploy evaluate`
scores generated images with, trained on a folder dataset's real images and written as ONNX.

A small fully convolutional network, trained on the real images of a folder dataset (DIR/images/*, DIR/labels/*.png
with the landscape class indices; all one size) with cross entropy and horizontal flips, written as ONNX: uint8 RGB
[N, H, W, 3] -> int64 class map [N, H, W], any H and W. The same arguments give the same model on one machine.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spade_deploy.cli.arguments import check_output_file, positive_int, seed

# Defaults of the bundled landscape segmenter's run (128 px maps): about 0.4 s a step on one core.
DEFAULT_STEPS = 1400
DEFAULT_BATCH_SIZE = 16


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-segmenter", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   help="train the segmentation network that `evaluate` scores generated images with")
    parser.add_argument("--dataroot", type=Path, required=True, metavar="DIR", help="training dataset folder")
    parser.add_argument("--out", type=Path, required=True, metavar="SEG.onnx", help="ONNX file to write")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help=f"optimisation steps (default: {DEFAULT_STEPS})")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"images per step (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the weights, batches and flips (default: 0)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="PyTorch threads; part of what makes a run reproducible (default: 1)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from spade_deploy.evaluation.segmenter import export_segmenter, parameter_count, train_segmenter

    if args.out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {args.out}: expected an .onnx file name")
    check_output_file(args.out, "--out")
    trained = train_segmenter(args.dataroot, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                              threads=args.threads)
    export_segmenter(trained.model, args.out)
    last = trained.losses[-min(50, len(trained.losses)):]  # one batch's loss is noisy
    print(f"trained a {parameter_count(trained.model):,}-parameter segmenter for {args.steps} steps of "
          f"{args.batch_size} in {trained.seconds:.0f} s (loss {sum(last) / len(last):.3f} over the last "
          f"{len(last)} steps); wrote {args.out}")
    return 0
