"""`spade-deploy synthesize --server HOST:PORT[,…]`: the `synthesize` command through a running `spade-deploy serve`.

The served pipeline draws a VAE model's latent as the local command does (one for all maps: the style image's mean,
a seeded sample around it, or a seeded random one, seed 0 by default), so both give the same images up to float
rounding of ONNX Runtime against PyTorch. The label PNGs are converted with the served model's preset.
"""
from __future__ import annotations

import argparse
import sys

from spade_deploy.cli.synthesize import DEFAULT_SEED, output_paths
from spade_deploy.client import SERVING_RETRIES, InvalidInput, SpadeClient, SpadeClientError
from spade_deploy.model.images import write_rgb


def run(args: argparse.Namespace) -> int:
    ignored = [flag for flag, value in (("--encoder", args.encoder), ("--preset", args.preset)) if value is not None]
    if ignored:
        raise ValueError(f"{', '.join(ignored)}: with --server the served model (and its encoder) decide; drop "
                         f"{'them' if len(ignored) > 1 else 'it'}")
    inputs = [path for path in (*args.labels, *(args.instances or ()), args.style) if path is not None]
    outputs = output_paths(args.labels, args.out, inputs)
    try:
        with SpadeClient(args.server) as client:  # an unreachable server: an error at once
            seed = args.seed
            served = client.served
            client.retries = SERVING_RETRIES  # it answered: ride out a restart or a reload from now on
            if served.config.use_vae and args.style is None and seed is None:
                print(f"note: a VAE generator needs a latent z; without --style or --seed it is drawn with seed "
                      f"{DEFAULT_SEED}", file=sys.stderr)
                seed = DEFAULT_SEED
            images = client.synthesize(args.labels, args.instances, style=args.style, seed=seed)
    except InvalidInput:
        raise  # a ValueError: the command line reports it as a usage error
    except SpadeClientError as error:
        print(f"spade-deploy synthesize: error: {error}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, outputs):
        write_rgb(path, image)
    print(f"wrote {len(outputs)} image{'s' if len(outputs) > 1 else ''} to {args.out} (served by "
          f"{', '.join(args.server)})")
    return 0
