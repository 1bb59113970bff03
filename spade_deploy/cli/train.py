"""`spade-deploy train ...` (one process), or from the repository root `python -m training.train ...` and
`torchrun --nproc_per_node N -m training.train ...`: train SPADE.

    torchrun --nproc_per_node 8 -m training.train --preset ade20k --dataroot ADEChallengeData2016 \\
        --batch-size 32 --epochs 200 --vgg-weights vgg19.pth --run-dir runs/ade20k

`--dry-run` makes every check a run makes before it reads the dataset and weight files, then prints the resolved
options as JSON and exits, writing nothing; RUN/training_options.json holds the same tree.
`--resume` continues RUN/checkpoints/latest.pt: rerun the original command with it. A different run length is
refused, since the LR schedule is planned for the length the run started with; `--reschedule` allows it, loudly.
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spade_deploy.cli.arguments import check_output_folder, positive_int, seed
from spade_deploy.model.config import PRESETS, EncoderConfig, generator_preset
from spade_deploy.training.discriminator import DiscriminatorConfig
from spade_deploy.training.options import (AMP_MODES, LR_DECAY_MODES, DataOptions, EvalOptions, LossOptions,
                                            OptimOptions, RunOptions, TrainingOptions)

if TYPE_CHECKING:
    from torch import nn

EMA_DEFAULT_DECAY = 0.999
LOAD_SIZE_RATIO = 286 / 256  # the official presets resize to 286 before a random 256 crop
# Option fields filled by a flag of another name (the others are the flag's dest: crop_size is --crop-size).
FIELD_FLAGS = {"ema_decay": "--ema"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a SPADE generator (torchrun for several GPUs)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    """The `train` arguments on a parser of their own (tests, and `python -m training.train`)."""
    parser = argparse.ArgumentParser(prog="spade-deploy train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--preset", choices=sorted(PRESETS), default="custom",
                      help="dataset preset: label layout, sizes and directory layout (default: custom)")
    data.add_argument("--dataroot", required=True, help="dataset folder in the preset's layout")
    data.add_argument("--label-nc", type=positive_int,
                      help="number of classes without don't-care (required for custom)")
    data.add_argument("--contain-dontcare-label", action="store_true", default=None,
                      help="custom: the label maps use index label_nc (raw 255) for unknown")
    data.add_argument("--use-instance", action="store_true", default=None,
                      help="custom: add instance edges from DATAROOT/instances/*.png")
    data.add_argument("--crop-size", type=positive_int,
                      help="output width (default: the preset's): a multiple of the generator's scale, 32 (cityscapes: "
                           "of 128, so that the height, half the width, is a multiple of its scale 64)")
    data.add_argument("--load-size", type=positive_int,
                      help="square resize before the random crop (default: crop*286/256)")
    data.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    data.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per process (default: 2)")

    model = parser.add_argument_group("model and losses")
    model.add_argument("--ngf", type=positive_int, default=64, help="generator (and encoder) base width (default: 64)")
    model.add_argument("--spade-hidden", type=positive_int, default=128,
                       help="width of the SPADE modulation convs (default: 128, official)")
    model.add_argument("--ndf", type=positive_int, default=64, help="discriminator base width (default: 64)")
    model.add_argument("--use-vae", action="store_true", help="train the style encoder with a KLD loss")
    model.add_argument("--vgg-weights", help="VGG19 state dict (torchvision key names) for the perceptual loss")
    model.add_argument("--no-vgg-loss", action="store_true", help="train without the VGG perceptual loss")
    model.add_argument("--vgg-imagenet-norm", action="store_true",
                       help="deviation: ImageNet-normalise VGG's input (official feeds the [-1, 1] images as they "
                            "are, which weighs the perceptual term about twice as much)")

    loop = parser.add_argument_group("optimisation")
    loop.add_argument("--batch-size", type=positive_int, default=1, help="global batch, split over the processes")
    length = loop.add_mutually_exclusive_group(required=True)
    length.add_argument("--max-steps", type=positive_int, help="run length in optimiser steps")
    length.add_argument("--epochs", type=positive_int, help="run length in passes over the dataset")
    loop.add_argument("--decay-start", type=float, default=0.5,
                      help="fraction of the run after which the LRs decay linearly to 0 (default: 0.5)")
    loop.add_argument("--lr-decay", choices=LR_DECAY_MODES,
                      help="epoch: the LRs fall once after each epoch of the decay (official; the default with "
                           "--epochs); step: after every step (the default with --max-steps)")
    loop.add_argument("--ema", type=float, nargs="?", const=EMA_DEFAULT_DECAY, metavar="DECAY",
                      help=f"keep an EMA of the generator (decay per step, default {EMA_DEFAULT_DECAY}); the "
                           f"checkpoint's generator is then the EMA")
    loop.add_argument("--ema-bn-batches", type=positive_int, metavar="N",
                      help=f"with --ema: random batches of the training batch size that re-estimate the EMA "
                           f"generator's batch-norm statistics before each save "
                           f"(default: {OptimOptions.ema_bn_batches})")
    loop.add_argument("--amp", choices=AMP_MODES, default="none", help="mixed precision (fp16: CUDA only)")
    loop.add_argument("--seed", type=seed, default=0,
                      help="seed of the initial weights, the data order and the latent noise (default: 0)")

    evaluation = parser.add_argument_group(
        "evaluation while training (TensorBoard eval/*; see `spade-deploy evaluate`)")
    evaluation.add_argument("--eval-dataroot", metavar="DIR",
                            help="validation split in the training data's layout: score the generator on it before "
                                 "the first step, every --eval-every epochs and after the last step")
    evaluation.add_argument("--eval-every", type=positive_int, default=1, metavar="EPOCHS",
                            help="epochs between evaluations (default: 1)")
    evaluation.add_argument("--eval-segmenter", metavar="SEG.onnx",
                            help="segmenter from `spade-deploy train-segmenter` for mIoU and pixel accuracy "
                                 "(default: the bundled landscape segmenter)")
    evaluation.add_argument("--eval-inception", metavar="PATH",
                            help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: adds FID and KID")
    evaluation.add_argument("--eval-limit", type=positive_int, metavar="N",
                            help="score the first N label maps of the split only")

    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", required=True, help="options, TensorBoard logs and checkpoints/")
    run.add_argument("--resume", action="store_true", help="continue RUN/checkpoints/latest.pt")
    run.add_argument("--reschedule", action="store_true",
                     help="with --resume and a new --max-steps/--epochs: replan the LR schedule for the new length "
                          "(the LR moves at once; without this flag such a resume is refused)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument("--save-every", type=positive_int, default=1000, help="steps between checkpoints (default: 1000)")
    run.add_argument("--keep", type=int, default=3, help="step checkpoints kept beside latest.pt (default: 3)")
    run.add_argument("--log-every", type=positive_int, default=50, help="steps between logged losses (default: 50)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the options, the device and the run folder as a run does (not the dataset or "
                          "weight files, which the run reads), print the resolved options as JSON and exit")


def build_options(args: argparse.Namespace) -> TrainingOptions:
    """The options tree of parsed arguments; `ValueError` for any inconsistent choice, naming the flags."""
    if args.reschedule and not args.resume:
        raise ValueError("--reschedule changes the schedule of a resumed run; pass it with --resume")
    if args.eval_dataroot is None and any((args.eval_segmenter, args.eval_inception, args.eval_limit)):
        raise ValueError("--eval-segmenter, --eval-inception and --eval-limit set up --eval-dataroot's evaluation; "
                         "pass --eval-dataroot DIR")
    if args.no_vgg_loss and args.vgg_weights:
        raise ValueError("--no-vgg-loss and --vgg-weights contradict each other; pass one of them")
    if args.ema_bn_batches is not None and args.ema is None:
        raise ValueError("--ema-bn-batches sets how the EMA generator's batch-norm statistics are re-estimated; pass "
                         "it with --ema")
    try:
        options = _options(args)
    except ValueError as error:  # the configs name their fields (crop_size); the user typed flags (--crop-size)
        raise ValueError(_name_flags(str(error), args)) from error
    if args.load_size is not None and options.data.preprocess != "resize_and_crop":
        raise ValueError(f"--load-size is the square resize before a random crop, but --preset {args.preset} at "
                         f"aspect ratio {options.generator.aspect_ratio:g} resizes every image straight to the output "
                         f"size (preprocess {options.data.preprocess!r}, as official): leave --load-size out")
    return options


def _options(args: argparse.Namespace) -> TrainingOptions:
    overrides: dict[str, Any] = {"ngf": args.ngf, "spade_hidden": args.spade_hidden, "use_vae": args.use_vae}
    for name in ("label_nc", "crop_size", "contain_dontcare_label", "use_instance"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    generator = generator_preset(args.preset, **overrides)
    encoder = EncoderConfig.for_crop_size(generator.crop_size, ngf=args.ngf) if args.use_vae else None
    return TrainingOptions(
        generator=generator,
        encoder=encoder,
        discriminator=DiscriminatorConfig(input_nc=generator.semantic_nc + 3, ndf=args.ndf),
        data=DataOptions(
            dataroot=args.dataroot,
            preprocess="resize_and_crop" if generator.aspect_ratio == 1.0 else "fixed",
            load_size=args.load_size or round(generator.crop_size * LOAD_SIZE_RATIO),
            flip=not args.no_flip,
            num_workers=args.num_workers,
        ),
        loss=LossOptions(lambda_vgg=0.0 if args.no_vgg_loss else LossOptions.lambda_vgg, vgg_weights=args.vgg_weights,
                         vgg_imagenet_norm=args.vgg_imagenet_norm),
        optim=OptimOptions(decay_start=args.decay_start, lr_decay=args.lr_decay or ("epoch" if args.epochs else "step"),
                           ema_decay=args.ema, ema_bn_batches=args.ema_bn_batches or OptimOptions.ema_bn_batches),
        eval=EvalOptions(dataroot=args.eval_dataroot, every=args.eval_every, segmenter=args.eval_segmenter,
                         inception=args.eval_inception, limit=args.eval_limit),
        run=RunOptions(run_dir=args.run_dir, batch_size=args.batch_size, max_steps=args.max_steps,
                       epochs=args.epochs, seed=args.seed, device=args.device, amp=args.amp,
                       save_every=args.save_every, keep=args.keep, log_every=args.log_every),
    )


def _name_flags(message: str, args: argparse.Namespace) -> str:
    """`message` with the option fields that a flag sets named as that flag: every argument's dest with an
    underscore (a plain word such as `keep` may be prose), plus FIELD_FLAGS. Dotted keys (generator.crop_size) and
    flags already spelled out are left as they are."""
    flags = {name: f"--{name.replace('_', '-')}" for name in vars(args) if "_" in name} | FIELD_FLAGS
    pattern = r"(?<![\w.-])(" + "|".join(map(re.escape, flags)) + r")(?!\w)"
    return re.sub(pattern, lambda match: flags[match[1]], message)


def run(args: argparse.Namespace) -> int:
    from spade_deploy.training.distributed import local_context
    from spade_deploy.training.loop import check_start, train

    options = build_options(args)
    check_output_folder(Path(options.run.run_dir), "--run-dir")
    if args.dry_run:
        context = local_context(options.run.device)
        check_start(options, context, resume=args.resume)
        if context.is_main:
            print(json.dumps(options.to_dict(), indent=2))
        return 0
    train(options, resume=args.resume, reschedule=args.reschedule, evaluator=evaluator(options.eval))
    return 0


def evaluator(options: EvalOptions) -> Callable[[nn.Module], dict[str, float]] | None:
    """The training loop's scorer for `options` (None without a validation split): the headline numbers of
    `spade_deploy.evaluation.evaluate` on the generator being trained, with the Inception network loaded once."""
    if options.dataroot is None:
        return None
    from spade_deploy.data.landscapes import bundled_segmenter
    from spade_deploy.evaluation.evaluate import evaluate
    from spade_deploy.evaluation.inception import load_inception

    # Before the run writes anything: the evaluation first reads these at step 0.
    if not Path(options.dataroot).is_dir():
        raise ValueError(f"--eval-dataroot {options.dataroot} is not a folder; expected the validation split")
    if options.segmenter is not None and not Path(options.segmenter).is_file():
        raise ValueError(f"--eval-segmenter {options.segmenter} is not a file; expected an ONNX segmenter "
                         f"(spade-deploy train-segmenter)")
    segmenter = options.segmenter or bundled_segmenter()
    inception = load_inception(options.inception) if options.inception else None

    def score(generator: nn.Module) -> dict[str, float]:
        if inception is not None:
            inception.to(next(generator.parameters()).device)
        report = evaluate(options.dataroot, segmenter, generator=generator, inception=inception,
                          limit=options.limit, progress=False)
        scores = {"mIoU": report["generated"]["mIoU"], "pixel_accuracy": report["generated"]["pixel_accuracy"],
                  "mIoU_ratio": report["mIoU_ratio"], "fid": report["fid"],
                  "kid": report["kid"]["mean"] if report["kid"] else None}
        return {name: value for name, value in scores.items() if value is not None}

    return score
