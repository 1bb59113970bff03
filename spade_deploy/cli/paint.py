"""`spade-deploy paint`: the GauGAN-style painting studio in the browser, over any model this project runs.

Paint a label map with the model's classes and watch the image follow. The model is the bundled landscape model by
default, a checkpoint (PyTorch) or an ONNX export (ONNX Runtime) in this process, or a running `spade-deploy serve`
through the client. Serves on this machine only unless `--host` says otherwise; runs until Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
from pathlib import Path

from spade_deploy.cli.arguments import add_model_source, check_host, port
from spade_deploy.cli.serve import sigterm_as_interrupt
from spade_deploy.data.landscapes import bundled_model
from spade_deploy.errors import Failure
from spade_deploy.model.config import PRESETS
from spade_deploy.serve.server import DEFAULT_HOST
from spade_deploy.studio.backends import Backend, OnnxBackend, ServerBackend, TorchBackend

DESCRIPTION = ("Start the painting studio: a web page where you paint a label map with the model's classes and the "
               "model turns it into an image as you paint. Needs the studio extra: pip install "
               "'spade-deploy[studio]'. Runs until Ctrl-C or SIGTERM.")
DEFAULT_PORT = 8080  # beside Triton's 8000-8002, which `spade-deploy serve` takes by default


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("paint", help="a GauGAN-style painting studio in the browser",
                                   description=DESCRIPTION)
    add_model_source(parser, onnx=True)
    parser.add_argument("--encoder", type=Path, metavar="E.pth",
                        help="style encoder checkpoint, with --checkpoint of a VAE generator: lets you upload a "
                             "style image")
    parser.add_argument("--onnx-encoder", type=Path, metavar="encoder.onnx",
                        help="style encoder ONNX export, with --onnx of a VAE generator")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="dataset of an official checkpoint without opt.txt (label layout, PNG encoding), with "
                             "--checkpoint")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens the "
                             f"studio to the network)")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    check_host(args.host, _family(args.host))
    try:
        import uvicorn

        from spade_deploy.studio.app import create_app
    except ImportError as error:
        raise Failure(f"the studio needs FastAPI and uvicorn ({error}); install them with: pip install "
                      f"'spade-deploy[studio]'") from None

    # Listen before loading the model: a taken port is reported at once, and early visitors wait in the backlog.
    with listen(args.host, args.port) as sock:
        backend = make_backend(args)
        # uvicorn shuts down cleanly on SIGINT/SIGTERM, then raises the signal again with our handler in place: a
        # service manager's SIGTERM ends the command like Ctrl-C, with status 0.
        previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
        try:
            app = create_app(backend)
            host, port = sock.getsockname()[:2]
            print(f"ready: the studio for {describe(backend)}\n"
                  f"  open  http://{_url_host(host)}:{port}/\n"
                  f"Ctrl-C stops it.", flush=True)
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            backend.close()
            signal.signal(signal.SIGTERM, previous)
    print("stopped", flush=True)
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse options the chosen model source would ignore."""
    pairs = (("--encoder", args.encoder, "--checkpoint", args.checkpoint),
             ("--onnx-encoder", args.onnx_encoder, "--onnx", args.onnx),
             ("--preset", args.preset, "--checkpoint", args.checkpoint))
    for option, value, needs, given in pairs:
        if value is not None and given is None:
            raise ValueError(f"{option} goes with {needs}: give both, or drop {option}")


def make_backend(args: argparse.Namespace) -> Backend:
    if args.server is not None:
        return ServerBackend(args.server)
    if args.onnx is not None:
        return OnnxBackend(args.onnx, args.onnx_encoder)
    return TorchBackend(args.checkpoint or bundled_model(), args.encoder, preset=args.preset)


def describe(backend: Backend) -> str:
    config = backend.config
    extras = [name for name, present in (("seed", backend.takes_seed), ("style image", backend.takes_style))
              if present]
    return (f"{backend.source} ({backend.kind}; {backend.height}x{backend.width}, {config.num_label_channels} "
            f"classes{', takes ' + ' and '.join(extras) if extras else ''})")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (a host `check_host` took), or a `ValueError` saying why not."""
    try:
        return socket.create_server((host, port), family=_family(host))
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)  # create_server's strerror repeats the address
        raise ValueError(f"cannot listen on {host}:{port} ({reason}); stop what uses it or choose another "
                         f"--port") from None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
