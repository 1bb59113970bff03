"""The demo, the project's main job: a SPADE generator with the ADE20K label layout, synthetic label maps, their colour
previews, and images from `spade-deploy synthesize`.

    python -m spade_deploy.demo --out demo_output

No pretrained weights can be downloaded here, so the generator has random weights, calibrated like a trained one
where deployment cares (batch-norm statistics measured on label maps, outputs spread over [-1, 1]). Its images are
what random weights make of a label map, textured noise, not photographs; an official `latest_net_G.pth` goes
through the same `spade-deploy synthesize` path.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spade_deploy import cli
from spade_deploy.checkpoint import save_generator
from spade_deploy.config import generator_preset
from spade_deploy.images import read_rgb, write_rgb
from spade_deploy.labels import colorize, write_label_png
from spade_deploy.synthetic import random_generator, synthetic_label_map

PRESET = "ade20k"
NGF = 16  # a quarter of the official width: small enough for a CPU, same architecture


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spade_deploy.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where everything is written")
    parser.add_argument("--maps", type=int, default=4, help="number of label maps (default 4)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels, a multiple of 32 (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the label maps (default 0)")
    args = parser.parse_args(argv)
    if args.maps < 1:
        parser.error(f"--maps must be at least 1, got {args.maps}")
    if args.size < 32 or args.size % 32:
        parser.error(f"--size must be a positive multiple of 32 (5 upsamplings), got {args.size}")

    config = generator_preset(PRESET, ngf=NGF, crop_size=args.size)
    checkpoint = args.out / "generator.pth"
    print(f"building a random-weight {PRESET} generator (ngf={NGF}, {args.size}x{args.size}) ...")
    save_generator(random_generator(config, seed=args.seed), checkpoint)

    label_dir, preview_dir, image_dir = args.out / "labels", args.out / "previews", args.out / "images"
    label_dir.mkdir(parents=True, exist_ok=True)
    preview_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    label_paths = []
    for index in range(args.maps):
        # Class indices include 150, ADE20K's "unlabelled", which the PNG stores as 0.
        labels = synthetic_label_map(args.size, args.size, num_regions=int(rng.integers(8, 41)),
                                     num_classes=config.num_label_channels, seed=args.seed * 1000 + index)
        path = label_dir / f"map_{index:02d}.png"
        write_label_png(path, labels, config)
        write_rgb(preview_dir / path.name, colorize(labels, config))
        label_paths.append(path)

    status = cli.main(["synthesize", "--checkpoint", str(checkpoint), "--labels", *map(str, label_paths),
                       "--out", str(image_dir)])
    if status:
        return status
    overview = args.out / "overview.png"
    write_rgb(overview, np.concatenate([np.concatenate([read_rgb(preview_dir / path.name),
                                                         read_rgb(image_dir / path.name)], axis=1)
                                        for path in label_paths], axis=0))
    print(f"checkpoint:  {checkpoint}\n"
          f"label maps:  {label_dir}/ (raw {PRESET} PNG encoding)\n"
          f"previews:    {preview_dir}/ (label colours)\n"
          f"images:      {image_dir}/\n"
          f"overview:    {overview} (preview | image, one row per map)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
