"""Argument groups shared by the subcommands, so one option is spelled and checked one way everywhere."""
from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from spade_deploy.model.config import PRESETS
from spade_deploy.model.memory import parse_bytes


def _integer(low: int, high: int | None, expected: str) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (None: no bound), `expected` naming them in its errors."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


positive_int = _integer(1, None, "a positive integer")
seed = _integer(0, 2**64 - 1, "a seed from 0 to 2**64 - 1")  # what numpy and torch can both seed from
port = _integer(0, 65535, "a port number 0..65535 (0: a free one)")  # a TCP port


def positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def seconds_or_zero(text: str) -> float:
    """Seconds, where 0 means no limit."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0 (0: no limit), got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def check_output_file(path: Path, option: str) -> None:
    """Before any work: raise a `ValueError` naming `option` unless a file can be written at `path` (not a folder;
    its parent a folder, or missing and creatable, and writable). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; expected the path of a file to write")
    _check_creatable_folder(path.parent, option, path)


def check_output_folder(path: Path, option: str) -> None:
    """Before any work: raise a `ValueError` naming `option` unless `path` is a writable folder, or missing and
    creatable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; expected a folder (created when missing)")
    _check_creatable_folder(path, option, path)


def _check_creatable_folder(folder: Path, option: str, given: Path) -> None:
    existing = folder
    while not existing.exists():  # the nearest existing ancestor is where the missing folders would be made
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(f"{option} {given}: {existing} is a file, not a folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {given}: cannot write in {existing} (permission denied)")


def check_host(host: str, family: socket.AddressFamily = socket.AF_INET) -> None:
    """A `ValueError` naming --host unless `host` is an address of this machine in `family` (IPv4 for Triton), or a
    name that resolves to one ('' and 0.0.0.0: every address). Probes by binding a free port there, as the servers
    will bind theirs: otherwise a bad host would only show when a port is bound, and read as a taken port."""
    version = "IPv6" if family == socket.AF_INET6 else "IPv4"
    try:
        address = socket.getaddrinfo(host or None, 0, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4]
    except socket.gaierror as error:
        raise ValueError(f"--host {host} cannot be resolved to an {version} address ({error.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            named = f" ({address[0]})" if address[0] != host else ""
            if error.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"--host {host}{named} is not an address of this machine; give one of its "
                                 f"addresses: 127.0.0.1 for this machine only, 0.0.0.0 for all of them") from None
            raise ValueError(f"--host {host}{named}: cannot listen there ({os.strerror(error.errno)})") from None


def server_addresses(text: str) -> list[str]:
    """`--server`: gRPC addresses 'host:port', comma-separated (each checked by the client)."""
    addresses = [address.strip() for address in text.split(",")]
    if not all(addresses):
        raise argparse.ArgumentTypeError(f"expected gRPC addresses 'host:port', comma-separated, got {text!r}")
    return addresses


def byte_size(text: str) -> int:
    """A memory size option: '8GiB', '512MiB', '2GB' (see spade_deploy.model.memory.parse_bytes) -> bytes."""
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_model_source(parser: argparse.ArgumentParser, *, onnx: bool = False) -> None:
    """Which generator a command runs: `--checkpoint` (PyTorch, in this process; default: the bundled landscape
    model), `--onnx` where the command offers it (ONNX Runtime, or OpenVINO for a bf16 export, in this process), or
    `--server` (a running `spade-deploy serve`)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, metavar="G.pth",
                        help="generator checkpoint (ours, a training run's, or an official *_net_G.pth with opt.txt "
                             "beside it when present), run with PyTorch on the CPU (default: the bundled landscape "
                             "model, spade_deploy/data/landscapes_generator.pth)")
    if onnx:
        source.add_argument("--onnx", type=Path, metavar="generator.onnx",
                            help="generator ONNX export (spade-deploy export), run on the CPU with ONNX Runtime (or "
                                 "OpenVINO, for a bf16 export)")
    source.add_argument("--server", type=server_addresses, metavar="HOST:PORT[,…]",
                        help="a running `spade-deploy serve` (its gRPC port); several replicas, comma-separated, are "
                             "tried in turn when one is unavailable")


def add_model_arguments(parser: argparse.ArgumentParser, *, presets: Iterable[str] = PRESETS,
                        preset_required: bool = False, preset_help: str | None = None,
                        size_help: str = "the config's") -> argparse._ArgumentGroup:
    """`--preset` and `--height/--width`: which dataset layout a model has, and the size it runs at."""
    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=sorted(presets), required=preset_required,
                       help=preset_help or "dataset preset (label layout, PNG encoding) of an official checkpoint "
                                           "without opt.txt")
    group.add_argument("--height", type=positive_int, help=f"image height (default: {size_help})")
    group.add_argument("--width", type=positive_int, help=f"image width (default: {size_help})")
    return group


def size_of(args: argparse.Namespace) -> tuple[int, int] | None:
    """(height, width) from `--height/--width`, None when neither is given; one alone is a `ValueError`."""
    if (args.height is None) != (args.width is None):
        raise ValueError("give --height and --width together (or neither, for the default size)")
    return None if args.height is None else (args.height, args.width)
