"""The `spade-deploy` command line: one subcommand per module in `spade_deploy.commands`.

A subcommand module exposes `add_parser(subparsers)`, which adds its parser and sets the default `run`: a function
`(argparse.Namespace) -> int` (the exit status). Listing the module in `COMMANDS` makes it available. Heavy optional
dependencies belong inside `run`, so `spade-deploy --help` works without them.

A user error (a `ValueError`, which includes `CheckpointError`, or an `OSError` such as an unwritable output folder)
is printed as one message on stderr with exit status 2, like argparse's own usage errors; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spade_deploy.commands import bench, serve, synthesize

COMMANDS = (synthesize, serve, bench)
USER_ERROR = 2


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
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"spade-deploy {args.command}: error: {error}", file=sys.stderr)
        return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
