"""`spade-deploy serve --repository DIR`: serve a model repository with the real Triton server (gRPC, HTTP, metrics).

Starts the tritonserver of the nvidia-pytriton wheel (spade_deploy.serve), waits until every model is ready, prints
the endpoints, and runs until Ctrl-C or SIGTERM, which it forwards for a clean shutdown. Meanwhile a supervisor
(spade_deploy.serve.supervisor) reloads a model whose python-backend process died or hung and restarts a server that
died, printing what it did. Triton's administrative APIs (model load/unload, shared memory, logging, trace) need a key
that only this command holds, unless it is shared through --admin-key-file.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import stat
import sys
import time
from pathlib import Path
from types import FrameType

from spade_deploy.cli.arguments import check_host, check_output_file, port, positive_seconds, seconds_or_zero
from spade_deploy.serve.server import (ADMIN_HEADER, DEFAULT_HOST, DEFAULT_PORTS, RESTRICTED_APIS, ServerError,
                                       TritonInstallation, TritonServer, is_repository)
from spade_deploy.serve.supervisor import EXECUTE_TIMEOUT, STALL_TIMEOUT, Supervisor


SUPERVISED = "supervised: a model that dies or hangs, or a server that dies, is brought back"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model repository with Triton (gRPC + HTTP)",
        description="Serve a Triton model repository written by spade_deploy.serve.repository with the tritonserver of "
                    "the nvidia-pytriton wheel (pip install .[serve]). Runs until Ctrl-C or SIGTERM.")
    parser.add_argument("--repository", type=Path, required=True, metavar="DIR", help="the model repository")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address every endpoint binds (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
                             f"opens the server to the network)")
    for kind, default in DEFAULT_PORTS.items():
        parser.add_argument(f"--{kind}-port", type=port, default=default, metavar="PORT",
                            help=f"{kind} port (default {default}; 0: a free one)")
    parser.add_argument("--startup-timeout", type=positive_seconds, default=180.0, metavar="S",
                        help="seconds to wait until every model is ready (default 180)")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="keep the server log here, appended to (default: a temporary file, removed at exit)")
    parser.add_argument("--no-supervise", dest="supervise", action="store_false",
                        help="do not reload a model whose process died nor restart a server that died; exit when "
                             "the server exits")
    parser.add_argument("--stall-timeout", type=positive_seconds, default=STALL_TIMEOUT, metavar="S",
                        help=f"supervision: a model process that gives no sign of life for S seconds (stopped, "
                             f"frozen) is ended and its model loaded again (default {STALL_TIMEOUT:.0f})")
    parser.add_argument("--execute-timeout", type=seconds_or_zero, default=EXECUTE_TIMEOUT, metavar="S",
                        help=f"supervision: a model process inside one execution for S seconds is ended and its "
                             f"model loaded again; 0: no limit (default {EXECUTE_TIMEOUT:.0f}, far above a full "
                             f"batch of the largest preset on 2 cores)")
    parser.add_argument("--admin-key-file", type=Path, metavar="FILE",
                        help=f"the key of Triton's admin APIs ({', '.join(RESTRICTED_APIS)}), sent as the "
                             f"'{ADMIN_HEADER}' header: read from FILE, or made and written there (mode 0600) when "
                             f"FILE does not exist (default: a new key per start that only this command holds)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    TritonInstallation.find()  # a missing server is reported before the key file is written
    admin_key = admin_key_from(args.admin_key_file) if args.admin_key_file else secrets.token_urlsafe(32)
    try:
        # Port 0: TritonServer picks free ports (None) at start, and keeps them across restarts.
        server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port or None,
                              http_port=args.http_port or None, metrics_port=args.metrics_port or None,
                              startup_timeout=args.startup_timeout, log_file=args.log_file, admin_key=admin_key)
    except ValueError as error:  # a key read from the file that Triton cannot take: name the file
        if args.admin_key_file is None:
            raise
        raise ValueError(f"--admin-key-file {args.admin_key_file}: {error}") from None
    supervisor = (Supervisor(server, stall_timeout=args.stall_timeout, execute_timeout=args.execute_timeout or None,
                             report=report) if args.supervise else None)
    # A service manager stops us with SIGTERM: end the same way as Ctrl-C, with a clean server shutdown.
    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        server.start()
        admin = f"key in {args.admin_key_file}" if args.admin_key_file else "held by this command only"
        print(f"ready: serving {server.repository}\n"
              f"  gRPC     {server.grpc_url}\n"
              f"  HTTP     {server.http_url}\n"
              f"  metrics  {server.metrics_url}\n"
              f"  log      {server.log_path}\n"
              f"  admin    {', '.join(RESTRICTED_APIS)}: {admin}\n"
              f"  {SUPERVISED if supervisor else 'not supervised'}\n"
              f"Ctrl-C stops the server.", flush=True)
        if supervisor is not None:
            supervisor.run()  # returns only by an exception: Ctrl-C, SIGTERM, or a server it cannot keep running
        code = server.wait()
        print(f"spade-deploy serve: error: tritonserver exited by itself (status {code}); last lines of its log:\n"
              f"{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping …", flush=True)
        code = supervisor.stop() if supervisor is not None else server.stop()
        print(f"stopped (tritonserver exit status {code})", flush=True)
        return 0
    except ServerError as error:
        print(f"spade-deploy serve: error: {error}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def check_options(args: argparse.Namespace) -> None:
    """Before anything is written (the key file, the log): refuse what cannot be served."""
    check_host(args.host)
    if not args.repository.is_dir():
        problem = "is a file" if args.repository.exists() else "does not exist"
        raise ValueError(f"--repository {args.repository} {problem}; expected the folder of a model repository")
    if not is_repository(args.repository):
        raise ValueError(f"--repository {args.repository} holds no model (no <model>/config.pbtxt inside); write a "
                         f"repository with `spade-deploy export onnx G.pth --out DIR --repository DIR`")
    taken: dict[int, str] = {}
    for kind in DEFAULT_PORTS:
        number = getattr(args, f"{kind}_port")
        if number and number in taken:
            raise ValueError(f"--{taken[number]}-port and --{kind}-port are both {number}; each endpoint needs a port "
                             f"of its own")
        taken[number] = kind
    if args.log_file is not None:
        check_output_file(args.log_file, "--log-file")


def report(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {message}", flush=True)


def admin_key_from(path: Path) -> str:
    """The admin key stored in `path`, or a new one written there (its missing folders made) readable by its owner
    only. A key file others can read is refused: whoever reads it can unload the models."""
    path = Path(path)
    if not path.exists():
        check_output_file(path, "--admin-key-file")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"--admin-key-file {path} is a folder; expected a key file (read when it exists, made "
                             f"when it does not)") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"--admin-key-file {path} is not a regular file (mode {stat.filemode(mode)}); expected "
                             f"a key file") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"--admin-key-file {path} can be read by others (mode {stat.filemode(mode)}); "
                             f"chmod 600 it") from None
        try:
            key = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not text"
            raise ValueError(f"--admin-key-file {path} cannot be read ({reason})") from None
        if not key:
            raise ValueError(f"--admin-key-file {path} is empty; remove it and a new key is written there") from None
        return key
    key = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key


def sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: a service manager's stop ends a server command like Ctrl-C, with a clean shutdown."""
    raise KeyboardInterrupt
