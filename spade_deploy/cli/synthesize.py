"""`spade-deploy synthesize`: label-map PNGs -> images with a generator checkpoint, on the CPU with PyTorch.

Every input is read and checked before the first image is made, so a bad file stops the run before it writes
anything; so is the memory the largest map needs (`spade_deploy.model.memory`'s estimate), against `--memory-limit`.
A VAE generator's maps all share one latent: the style image's (its mean, or a seeded sample around it) or a seeded
random one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from spade_deploy.cli.arguments import add_model_source, byte_size, check_output_folder
from spade_deploy.data.landscapes import bundled_model
from spade_deploy.model.checkpoint import load_encoder, load_generator
from spade_deploy.model import io_spec, memory
from spade_deploy.model.config import PRESETS, GeneratorConfig
from spade_deploy.model.images import read_rgb, write_rgb
from spade_deploy.model.labels import check_semantic_input, read_label_png, read_png
from spade_deploy.model.tensors import encode_style, rgb_to_tensor, sample_z, tensor_to_rgb, to_semantic_input

DEFAULT_SEED = 0  # latent seed of a VAE generator when neither --style nor --seed is given
LabelInput = tuple[torch.Tensor, torch.Tensor | None]  # int64 labels [1, H, W], instance ids [1, H, W] or None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize", help="label maps -> images (the bundled landscape model, a checkpoint, or a server)",
        description="Synthesize one image per label map with a SPADE generator: the bundled landscape model by "
                    "default, a checkpoint (spade-deploy's own or an official *_net_G.pth) on the CPU with PyTorch, "
                    "or a running `spade-deploy serve`.")
    add_model_source(parser)
    parser.add_argument("--labels", type=Path, nargs="+", required=True, metavar="PNG",
                        help="label maps: single-channel PNGs in the preset's raw encoding (ade20k: 0 = unlabelled, "
                             "classes 1..150; coco: 255 = unlabelled; cityscapes: labelIds)")
    parser.add_argument("--instances", type=Path, nargs="+", metavar="PNG",
                        help="instance-id maps, one per label map in the same order (models with instance edges)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder: label map NAME.png gives DIR/NAME.png")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="dataset of an official checkpoint that has no opt.txt (label layout, PNG encoding)")
    parser.add_argument("--memory-limit", type=byte_size, metavar="SIZE",
                        # "%%": argparse formats help strings with %
                        help=f"refuse, before any work, label maps whose synthesis would need more memory than this "
                             f"(e.g. 8GiB; spade-deploy's estimate for the generator; default: "
                             f"{memory.DEFAULT_LIMIT_FRACTION:.0%}% of the memory available when it starts)")
    latent = parser.add_argument_group("latent z of VAE generators (default: --seed 0)")
    latent.add_argument("--encoder", type=Path, metavar="E.pth", help="style encoder checkpoint, used with --style")
    latent.add_argument("--style", type=Path, metavar="IMAGE", help="style reference image: z is the encoder's mean")
    latent.add_argument("--seed", type=int, help="seed of z (with --style: of a sample around the style's mean)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    if args.server is not None:
        if args.memory_limit is not None:
            raise ValueError("--memory-limit bounds synthesis in this process; a server has its own per-request "
                             "budget (spade-deploy export --max-request-memory): drop --memory-limit")
        from spade_deploy.cli import synthesize_remote
        return synthesize_remote.run(args)
    if (args.style is None) != (args.encoder is None):
        raise ValueError("--style and --encoder go together: the encoder turns the style image into z")
    instances = args.instances or [None] * len(args.labels)
    if len(instances) != len(args.labels):
        raise ValueError(f"--instances gives {len(instances)} maps for {len(args.labels)} --labels; give one per "
                         f"label map")
    generator = load_generator(args.checkpoint or bundled_model(), preset=args.preset)
    config = generator.config
    check_options(args, config)
    maps = [read_label_input(label, instance, config) for label, instance in zip(args.labels, instances)]
    check_memory(args.labels, maps, config, args.memory_limit)
    z = latent(args, config)
    inputs = [path for path in (*args.labels, *instances, args.style) if path is not None]
    outputs = output_paths(args.labels, args.out, inputs)

    args.out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        # disable=None: a bar only on a terminal; one map needs none.
        for (labels, instance_ids), path in tqdm(list(zip(maps, outputs)), unit="map",
                                                 disable=True if len(maps) < 2 else None):
            image = generator(to_semantic_input(labels, instance_ids, config), z)
            write_rgb(path, tensor_to_rgb(image)[0])
    print(f"wrote {len(outputs)} image{'s' if len(outputs) > 1 else ''} to {args.out}")
    return 0


def check_options(args: argparse.Namespace, config: GeneratorConfig) -> None:
    """Refuse options this generator would silently ignore or that it needs."""
    if not config.use_vae:
        given = [flag for flag, value in (("--encoder", args.encoder), ("--style", args.style), ("--seed", args.seed))
                 if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: this generator is not a VAE (it takes no latent z); drop "
                             f"{'them' if len(given) > 1 else 'it'}")
    if config.use_instance and args.instances is None:
        raise ValueError("this model uses instance edges: pass --instances, one instance-id PNG per label map")
    if not config.use_instance and args.instances is not None:
        raise ValueError("this model takes no instance maps (use_instance=False): drop --instances")


def check_memory(paths: list[Path], maps: list[LabelInput], config: GeneratorConfig, limit: int | None) -> None:
    """Refuse the run when the largest map would need more memory than `limit` bytes (default: a share of what is
    available now, after the model and the maps were loaded). Maps run one at a time, so the largest one decides."""
    path, (labels, _) = max(zip(paths, maps), key=lambda item: item[1][0].shape[1] * item[1][0].shape[2])
    height, width = labels.shape[1:]
    im2col = not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)  # else oneDNN convs
    needed = memory.generator_bytes(config, 1, height, width, im2col=im2col)
    source = "--memory-limit"
    if limit is None:
        available = memory.available_bytes()
        limit = int(memory.DEFAULT_LIMIT_FRACTION * available)
        source = (f"the default: {memory.DEFAULT_LIMIT_FRACTION:.0%} of the {memory.format_bytes(available)} "
                  f"available now")
    if needed > limit:
        raise ValueError(f"{path}: synthesizing this {height}x{width} label map needs about "
                         f"{memory.format_bytes(needed)} of memory (estimate for this generator), above the limit of "
                         f"{memory.format_bytes(limit)} ({source}); use smaller label maps (split this one into tiles "
                         f"and synthesize them one by one), or raise --memory-limit if the machine has the memory")


def output_paths(labels: list[Path], out: Path, inputs: list[Path]) -> list[Path]:
    """DIR/NAME.png for each label map; two maps with one name, an output that is an input or a folder, is an
    error."""
    outputs = [out / f"{path.stem}.png" for path in labels]
    source: dict[Path, Path] = {}
    for label, output in zip(labels, outputs):
        if output.is_dir():
            raise ValueError(f"{output}, the output of {label}, is a folder; remove it or choose another --out")
        if output in source:
            raise ValueError(f"{source[output]} and {label} would both be written to {output}; rename one")
        source[output] = label
    protected = {path.resolve() for path in inputs}
    for output in outputs:
        if output.resolve() in protected:
            raise ValueError(f"{output} is an input and would be overwritten; choose another --out")
    return outputs


def read_label_input(label_path: Path, instance_path: Path | None, config: GeneratorConfig) -> LabelInput:
    """One label map (and instance map), checked for this model; errors name the file."""
    labels = read_label_png(label_path, config)
    instances = read_png(instance_path) if instance_path is not None else None
    if instances is not None and instances.shape != labels.shape:
        raise ValueError(f"{instance_path}: instance map is {'x'.join(map(str, instances.shape))}, but its label map "
                         f"{label_path} is {'x'.join(map(str, labels.shape))}; they must be the same size")
    try:
        return check_semantic_input(labels, instances, config)
    except ValueError as error:
        raise ValueError(f"{label_path}: {error}") from None


def latent(args: argparse.Namespace, config: GeneratorConfig) -> torch.Tensor | None:
    """The `[1, z_dim]` latent every map shares (None for a segmap generator)."""
    if not config.use_vae:
        return None
    if args.style is not None:
        io_spec.check_encoder_fits(config)
        encoder = load_encoder(args.encoder)
        return encode_style(encoder, rgb_to_tensor(read_rgb(args.style)), seed=args.seed)
    if args.seed is None:
        print(f"note: a VAE generator needs a latent z; without --style or --seed it is drawn with seed "
              f"{DEFAULT_SEED}", file=sys.stderr)
    return sample_z(1, config.z_dim, DEFAULT_SEED if args.seed is None else args.seed)
