"""`spade-deploy serve --repository DIR`: serve a model repository with the real Triton server (gRPC, HTTP, metrics).

Starts the tritonserver of the nvidia-pytriton wheel (spade_deploy.serve), waits until every model is ready, prints
the endpoints, and runs until Ctrl-C or SIGTERM, which it forwards for a clean shutdown.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from spade_deploy.serve.server import DEFAULT_HOST, DEFAULT_PORTS, ServerError, TritonServer


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model repository with Triton (gRPC + HTTP)",
        description="Serve a Triton model repository written by spade_deploy.serve.repository with the tritonserver of "
                    "the nvidia-pytriton wheel (pip install .[serve]). Runs until Ctrl-C or SIGTERM.")
    parser.add_argument("--repository", type=Path, required=True, metavar="DIR", help="the model repository")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address every endpoint binds (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                             f"opens the server to the network)")
    for kind, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{kind}-port", type=int, default=port, metavar="PORT",
                            help=f"{kind} port (default {port})")
    parser.add_argument("--startup-timeout", type=float, default=180.0, metavar="S",
                        help="seconds to wait until every model is ready (default 180)")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="keep the server log here (default: a temporary file, removed at exit)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, startup_timeout=args.startup_timeout,
                          log_file=args.log_file)
    # A service manager stops us with SIGTERM: end the same way as Ctrl-C, with a clean server shutdown.
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        server.start()
        print(f"ready: serving {server.repository}\n"
              f"  gRPC     {server.grpc_url}\n"
              f"  HTTP     {server.http_url}\n"
              f"  metrics  {server.metrics_url}\n"
              f"  log      {server.log_path}\n"
              f"Ctrl-C stops the server.", flush=True)
        code = server.wait()
        print(f"spade-deploy serve: error: tritonserver exited by itself (status {code}); last lines of its log:\n"
              f"{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping …", flush=True)
        print(f"stopped (tritonserver exit status {server.stop()})", flush=True)
        return 0
    except ServerError as error:
        print(f"spade-deploy serve: error: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: a service manager's stop ends a server command like Ctrl-C, with a clean shutdown."""
    raise KeyboardInterrupt
