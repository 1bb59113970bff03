"""`spade-deploy evaluate --dataroot DIR --segmenter SEG.onnx [--inception W.pth]`: a generator's (checkpoint or
ONNX export) mIoU and pixel accuracy the SPADE paper's way (a segmenter on generated images against their label
maps), beside the same segmenter on the real images, per-class colour statistics, and FID and KID against the real
images given the FID Inception's weights; `--json` keeps the whole report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spade_deploy.cli.arguments import check_output_file, positive_int
from spade_deploy.data.landscapes import bundled_segmenter
from spade_deploy.evaluation.fid import KID_SUBSET_SIZE, KID_SUBSETS, WEIGHTS_FILE  # numpy only: no torch


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a generator: segmenter mIoU on its images vs on the real ones, FID and KID",
        description="Synthesize an image from every label map of a folder dataset (sorted by name), run an ONNX "
                    "segmenter (from `spade-deploy train-segmenter`) on it and on the dataset's real image, and "
                    "compare both segmentations with the label map: mIoU (mean over the classes present in the "
                    "label maps or the prediction), pixel accuracy, per-class IoU and per-class colour statistics; "
                    "with --inception, FID and KID of the generated images against the real ones.")
    parser.add_argument("--dataroot", type=Path, required=True, metavar="DIR",
                        help="dataset folder: DIR/images/*, DIR/labels/*.png (class indices)")
    parser.add_argument("--segmenter", type=Path, metavar="SEG.onnx",
                        help="segmenter written by `spade-deploy train-segmenter` (default: the bundled landscape "
                             "segmenter)")
    parser.add_argument("--checkpoint", type=Path, metavar="G.pth|G.onnx",
                        help="the generator: a checkpoint (.pth: ours, a training run's or an official "
                             "latest_net_G.pth) or an ONNX export from `spade-deploy export` (.onnx; the label maps "
                             "must have its size) (default: the bundled landscape model)")
    parser.add_argument("--inception", type=Path, metavar="W.pth",
                        help=f"compute FID and KID with these Inception weights: {WEIGHTS_FILE} from pytorch-fid's "
                             f"GitHub release 'fid_weights' (the file published FIDs use). FID is biased upward for "
                             f"few images (papers use 10k+): compare FIDs of equal counts only; KID is unbiased")
    parser.add_argument("--kid-subset-size", type=positive_int, default=KID_SUBSET_SIZE, metavar="N",
                        help=f"images per KID subset (of {KID_SUBSETS}); at most the number of maps (default: "
                             f"{KID_SUBSET_SIZE})")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="score the first N label maps only")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="label maps per generator call "
                                                                            "(default: 8)")
    parser.add_argument("--threads", type=positive_int, help="PyTorch and ONNX Runtime threads (default: theirs)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the full report here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from spade_deploy.evaluation.evaluate import evaluate
    from spade_deploy.files import atomic_path

    if args.json is not None:
        check_output_file(args.json, "--json")
    report = evaluate(args.dataroot, args.segmenter or bundled_segmenter(), generator=args.checkpoint,
                      inception=args.inception, kid_subset_size=args.kid_subset_size, limit=args.limit,
                      batch_size=args.batch_size, threads=args.threads)
    print(summary(report))
    print(class_table(report))
    if args.json is not None:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def summary(report: dict[str, Any]) -> str:
    """One line: generated vs real mIoU, their ratio, pixel accuracies, FID and KID when computed, maps and time."""
    real, generated, ratio = report["real"], report["generated"], report["mIoU_ratio"]
    distances = ""
    if report["fid"] is not None:
        kid = report["kid"]
        distances = f", FID {report['fid']:.2f}, KID {kid['mean']:.4f} (std {kid['std']:.4f})"
    return (f"generated mIoU {generated['mIoU']:.3f} vs real {real['mIoU']:.3f} "
            f"(ratio {'n/a' if ratio is None else f'{ratio:.3f}'}), pixel accuracy {generated['pixel_accuracy']:.3f} "
            f"vs {real['pixel_accuracy']:.3f}{distances}, on {report['maps']} label maps in {report['wall_s']:.1f} s")


def class_table(report: dict[str, Any]) -> str:
    """Per class: share of pixels, IoU on real and generated images, mean RGB of each and their mean |difference|."""
    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def rgb(value: list[float] | None) -> str:
        return "-" if value is None else "(" + ",".join(f"{round(channel):3d}" for channel in value) + ")"

    colours = report["colour"]["per_class"]
    rows = [("class", "pixels", "IoU real", "IoU gen", "RGB real", "RGB generated", "|diff|")]
    for name in report["classes"]:
        colour = colours.get(name, {})
        share = colour.get("pixels", 0) / report["pixels"] if report["pixels"] else 0.0
        rows.append((name, f"{100 * share:.1f}%", number(report["real"]["iou"][name]),
                     number(report["generated"]["iou"][name]), rgb(colour.get("real_mean")),
                     rgb(colour.get("generated_mean")), number(colour.get("mean_abs_diff"), 1)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths))) for row in rows)
