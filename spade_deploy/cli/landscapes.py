"""`spade-deploy landscapes --out DIR --count N --size S --seed SEED`: the procedural landscape dataset
(`spade_deploy.data.landscapes`) in the folder layout `spade-deploy train --preset custom` reads.

Writes DIR/images/NNNNN.png, DIR/labels/NNNNN.png (8-bit, value = class index) and DIR/classes.json. The same seed
gives the same files; different seeds give disjoint datasets.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spade_deploy.cli.arguments import check_output_folder, positive_int, seed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("landscapes", help="write the procedural landscape dataset",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="dataset folder (created; one that already holds a dataset is refused)")
    parser.add_argument("--count", type=positive_int, required=True, help="number of image/label pairs")
    parser.add_argument("--size", type=image_side, default=128,
                        help="side of the square images, a multiple of 8 and at least 32 (default: 128)")
    parser.add_argument("--seed", type=seed, default=0, help="dataset seed, 0 to 2**64 - 1 (default: 0)")
    parser.set_defaults(run=run)


def image_side(text: str) -> int:
    value = positive_int(text)
    if value < 32 or value % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 of at least 32, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from spade_deploy.data.landscapes import write_dataset

    check_output_folder(args.out, "--out")
    write_dataset(args.out, args.count, args.size, args.seed)
    print(f"wrote {args.count} landscapes of {args.size}x{args.size} to {args.out}")
    return 0
