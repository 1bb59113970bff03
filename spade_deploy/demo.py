"""The demo, the project's main job: landscapes painted by the bundled generator from held-out label maps.

    python -m spade_deploy.demo --out demo_output

The generator was trained by this project's own training stack on procedural landscapes
(`spade_deploy.data.landscapes`; how, and how well, in spade_deploy/data/MODEL_CARD.md). The demo renders label
maps the model never saw (the dataset's seed 1; training used seed 0), writes them with colour previews and the
procedural "real" photo of each, runs `spade-deploy synthesize` on them, and puts label map | generated | real side
by side in `overview.png`.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from spade_deploy import cli
from spade_deploy.data.landscapes import VALIDATION_SEED, colorize, render, sample_seed
from spade_deploy.model.images import read_rgb, save_png, write_rgb

SIZE = 128  # the bundled model's size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spade_deploy.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where everything is written")
    parser.add_argument("--maps", type=int, default=6, help="number of held-out label maps (default 6)")
    parser.add_argument("--first", type=int, default=0, help="index of the first held-out map (default 0)")
    args = parser.parse_args(argv)
    if args.maps < 1:
        parser.error(f"--maps must be at least 1, got {args.maps}")
    if args.first < 0:
        parser.error(f"--first must be at least 0, got {args.first}")

    label_dir, preview_dir, real_dir = args.out / "labels", args.out / "previews", args.out / "real"
    image_dir = args.out / "images"
    label_paths = []
    for index in range(args.first, args.first + args.maps):
        labels, real = render(sample_seed(VALIDATION_SEED, index), SIZE)
        path = label_dir / f"map_{index:02d}.png"
        save_png(Image.fromarray(labels), path)  # raw value = class index, the bundled model's encoding
        write_rgb(preview_dir / path.name, colorize(labels))
        write_rgb(real_dir / path.name, real)
        label_paths.append(path)

    status = cli.main(["synthesize", "--labels", *map(str, label_paths), "--out", str(image_dir)])
    if status:
        return status
    overview = args.out / "overview.png"
    gap = np.full((SIZE, 4, 3), 255, np.uint8)
    rows = [np.concatenate([read_rgb(preview_dir / path.name), gap, read_rgb(image_dir / path.name), gap,
                            read_rgb(real_dir / path.name)], axis=1) for path in label_paths]
    write_rgb(overview, np.concatenate([part for row in rows for part in (row, np.full((4, *row.shape[1:]), 255,
                                                                                           np.uint8))][:-1]))
    print(f"label maps:  {label_dir}/ (value = class index; classes in spade_deploy/data/landscapes.py)\n"
          f"previews:    {preview_dir}/ (label colours)\n"
          f"generated:   {image_dir}/ (the bundled model, via spade-deploy synthesize)\n"
          f"real:        {real_dir}/ (the procedural photo of each map)\n"
          f"overview:    {overview} (label map | generated | real, one row per map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
