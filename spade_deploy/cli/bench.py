"""`spade-deploy bench`: benchmark every runtime in this process, or (`--served`) the model served by Triton.

    spade-deploy bench --preset ade20k --batch 1,4 --repeats 3 --out benchmarks/results/DATE-MACHINE
    spade-deploy bench --served --preset ade20k --ngf 16 --height 128 --width 128 --perf-analyzer --out …

Models have random weights with calibrated batch-norm statistics (no pretrained weights are needed to time them);
label maps are synthetic with irregular regions. `--out DIR` writes DIR/inprocess.json or DIR/served.json and
re-renders DIR/summary.md and the charts; `--json FILE` writes the result alone.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from spade_deploy.bench.runtimes import RUNTIMES
from spade_deploy.cli.arguments import add_model_arguments, check_output_file, check_output_folder, seed, size_of
from spade_deploy.model.config import PRESETS, GeneratorConfig, generator_preset
from spade_deploy.serve.server import ServerError

DATASET_PRESETS = tuple(name for name in PRESETS if name != "custom")
INPROCESS, SERVED = "in-process", "served"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark the runtimes in-process, or the served model (--served)",
        description="Benchmark every runtime in this process, or (--served) the model served by Triton over gRPC, "
                    "on a random-weight generator and synthetic label maps.",
        epilog="Speed is reported as ratios within the run (against eager PyTorch and the best plain runtime); "
               "every row names its precision and is measured against the model in float64 (max |Δ|, PSNR, 8-bit "
               "pixels within 1 and 2 levels) and against eager PyTorch (max |Δ|).")
    add_model_arguments(parser, presets=DATASET_PRESETS, preset_required=True,
                        preset_help="dataset preset of the generator (label layout and default size)",
                        size_help="the preset's")
    parser.add_argument("--ngf", type=int, help="base channel width (default: the preset's, 64)")
    parser.add_argument("--regions", type=int, help="irregular regions per synthetic label map (default: 16; real "
                                                    "maps have about 8-40)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the weights, label maps and latents")
    parser.add_argument("--served", action="store_true",
                        help="benchmark the served model: start tritonserver on free loopback ports and load it over "
                             "gRPC")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="results folder: write the JSON there and re-render summary.md and the charts")
    # The dests of each mode's options are `Options` / `ServedOptions` fields (plus `runtimes`); every option of
    # these groups defaults to None, so "given" means "not None".
    inprocess = parser.add_argument_group("in-process benchmark")
    inprocess.add_argument("--batch", dest="batches", type=_positive_list(int, "1,4"), metavar="B,…",
                           help="batch sizes (default: 1,4)")
    inprocess.add_argument("--runtimes", type=_names, metavar="NAME,…",
                           help=f"runtimes to compare (default: all): {', '.join(RUNTIMES)}")
    inprocess.add_argument("--repeats", type=int, help="timed calls per runtime and batch (default: 5)")
    inprocess.add_argument("--warmup", type=int, help="untimed calls before them (default: 3)")
    inprocess.add_argument("--threads", type=int, help="intra-op threads of every runtime (default: 2)")
    inprocess.add_argument("--one-at-a-time", action="store_true", default=None,
                           help="build, time and free each runtime in turn instead of letting them take turns call "
                                "by call (when they do not fit in memory together; less protected against drift)")
    served = parser.add_argument_group("served benchmark (--served)")
    served.add_argument("--concurrency", type=_positive_list(int, "1,2,4,8"), metavar="C,…",
                        help="concurrency levels of the closed-loop sweep (default: 1,2,4,8)")
    served.add_argument("--requests", type=int, help="timed requests per concurrency level (default: 48)")
    served.add_argument("--rates", type=_positive_list(float, "5,10"), metavar="R,…",
                        help="fixed request rates in requests/s (default: 50 %% and 80 %% of the best throughput)")
    served.add_argument("--rate-requests", type=int, help="requests per fixed rate (default: 48)")
    served.add_argument("--instances", type=int, help="Triton instances per model (default: 2)")
    served.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per instance (default: 1)")
    served.add_argument("--max-batch-size", type=int, help="largest batch the server forms (default: 8)")
    served.add_argument("--queue-delay-us", type=int, metavar="N",
                        help="how long the dynamic batcher waits to fill a batch, in microseconds (default: the "
                             "repository's, spade_deploy.serve.repository.QUEUE_DELAY_US)")
    served.add_argument("--perf-analyzer", action="store_true", default=None,
                        help="cross-check with Triton's perf_analyzer (installed on first use into a tools venv by "
                             "benchmarks/perf_analyzer.sh)")
    # Each mode's options, read off its group so that a new option is refused in the other mode without a list to
    # keep: given there, it would be silently ignored.
    parser.set_defaults(run=run, mode_options={INPROCESS: _options(inprocess), SERVED: _options(served)})


def run(args: argparse.Namespace) -> int:
    from spade_deploy.bench import report

    mode, other = (SERVED, INPROCESS) if args.served else (INPROCESS, SERVED)
    given = [action.option_strings[0] for dest, action in args.mode_options[other].items()
             if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only for the {other} benchmark "
                         f"({'drop --served' if args.served else 'add --served'})")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.out is not None:
        check_output_folder(args.out, "--out")
        if args.out.is_dir():
            report.read_results(args.out)  # the summary re-renders every result there: refuse a broken one now
    config = generator_preset(args.preset, **({"ngf": args.ngf} if args.ngf is not None else {}))
    height, width = size_of(args) or config.image_size
    config = _sized(config, height, width)
    chosen = {dest: getattr(args, dest) for dest in args.mode_options[mode] if getattr(args, dest) is not None}
    common = {"seed": args.seed, **({"regions": args.regions} if args.regions is not None else {})}
    try:
        result = (_run_served if args.served else _run_inprocess)(config, height, width, {**common, **chosen})
    except ServerError as error:
        print(f"spade-deploy bench: error: {error}", file=sys.stderr)
        return 1
    result["command"] = _command(args, result)
    print("\n".join(report.section(result)))
    if args.json is not None:
        report.write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.out is not None:
        print(f"wrote {report.write_result(args.out, result)}")
    return 0


def _run_inprocess(config: GeneratorConfig, height: int, width: int, chosen: dict[str, Any]) -> dict[str, Any]:
    from spade_deploy.bench.inprocess import Options, run_inprocess

    runtimes = chosen.pop("runtimes", None)
    return run_inprocess(config, height=height, width=width, runtimes=runtimes, options=Options(**chosen))


def _run_served(config: GeneratorConfig, height: int, width: int, chosen: dict[str, Any]) -> dict[str, Any]:
    from spade_deploy.bench.served import ServedOptions, run_served

    return run_served(config, height=height, width=width, options=ServedOptions(**chosen))


def _options(group: argparse._ArgumentGroup) -> dict[str, argparse.Action]:
    """The options of an argument group by dest (argparse keeps a group's actions in `_group_actions` only)."""
    return {action.dest: action for action in group._group_actions}


def _command(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """The command that reproduces this run, with every setting spelled out (defaults included)."""
    setup = result["setup"]
    height, width = setup["size"].split("x")
    words = ["spade-deploy", "bench", "--preset", setup["preset"], "--height", height, "--width", width, "--ngf",
             str(setup["ngf"]), "--regions", str(setup["regions"]), "--seed", str(setup["seed"])]
    if args.served:
        words += ["--served", "--concurrency", _join(level["concurrency"] for level in result["concurrency"]),
                  "--requests", str(setup["requests_per_level"]), "--rate-requests", str(setup["rate_requests"]),
                  "--instances", str(setup["instances"]), "--intra-op-threads", str(setup["intra_op_threads"]),
                  "--max-batch-size", str(setup["max_batch_size"]), "--queue-delay-us", str(setup["queue_delay_us"])]
        words += ["--rates", _join(args.rates)] if args.rates else []  # default: derived from the measured peak
        words += ["--perf-analyzer"] if args.perf_analyzer else []
    else:
        words += ["--batch", _join(setup["batches"]), "--runtimes", _join(setup["runtimes"]), "--repeats",
                  str(setup["repeats"]), "--warmup", str(setup["warmup"]), "--threads", str(setup["threads"])]
        words += ["--one-at-a-time"] if setup["one_at_a_time"] else []
    words += ["--out", str(args.out)] if args.out is not None else []
    return shlex.join(words)


def _sized(config: GeneratorConfig, height: int, width: int) -> GeneratorConfig:
    """The config with its crop size set to the benchmark size where the size allows, so the random weights'
    batch-norm statistics are calibrated on label maps of the size that is timed."""
    try:
        sized = config.replace(crop_size=width, aspect_ratio=width / height)
    except ValueError:
        return config
    return sized if sized.image_size == (height, width) else config


def _join(values: Any) -> str:
    return ",".join(str(value) for value in values)


def _positive_list(kind: type, example: str) -> Callable[[str], tuple]:
    """An argparse type: comma-separated positive numbers of `kind`."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values such as {example}, got {text!r}") \
                from None
        if not all(0 < value < float("inf") for value in values):  # also refuses nan
            raise argparse.ArgumentTypeError(f"values must be positive and finite, got {text!r}")
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"values must be distinct (each is measured once), got {text!r}")
        return values
    return parse


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated runtime names such as eager,sparse-ort, got "
                                         f"{text!r}")
    return names
