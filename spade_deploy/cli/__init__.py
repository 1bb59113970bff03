"""The `spade-deploy` command line: one subcommand per module of `spade_deploy.cli`.

A subcommand module exposes `add_parser(subparsers)`, which adds its parser and sets the default `run`: a function
`(argparse.Namespace) -> int` (the exit status). Listing the module in `COMMANDS` makes it available. Heavy
dependencies belong inside `run`, so `spade-deploy --help` stays quick.

Every command maps errors to exit statuses the same way: bad input (a `ValueError`, which includes
`CheckpointError` and the client's `InvalidInput`, or an `OSError` such as an unwritable output folder) prints one
message on stderr and exits 2, like argparse's own usage errors; work that ran and failed (a
`spade_deploy.errors.Failure`: parity, server, remote model) exits 1; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spade_deploy.cli import bench, evaluate, export, landscapes, paint, serve, synthesize, train, train_segmenter
from spade_deploy.errors import Failure

COMMANDS = (synthesize, serve, export, train, landscapes, bench, train_segmenter, evaluate, paint)
USER_ERROR = 2
FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spade-deploy",
                                     description="Train, export and serve SPADE (GauGAN) semantic image synthesis "
                                                 "models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(word for word in (args.command, getattr(args, "export_kind", None)) if word)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"spade-deploy {name}: error: {error}", file=sys.stderr)
        return USER_ERROR
    except Failure as error:
        print(f"spade-deploy {name}: error: {error}", file=sys.stderr)
        return FAILURE
