"""Run the real `tritonserver` shipped in the nvidia-pytriton wheel on a model repository (CPU machines included).

`TritonServer` is the one launcher of the CLI (`spade-deploy serve`), the tests and the benchmarks. The recipe is
the verified one of ../shared/notes/triton-on-cpu.md: a private backend directory of symlinks into the wheel (the
wheel itself is never written), this interpreter's `bin/` first on PATH so the python-backend stub runs in this
environment (it ignores PYTHONPATH), every endpoint on loopback unless told otherwise.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from spade_deploy.errors import Failure

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}  # Triton's usual ports, for the CLI
_PR_SET_PDEATHSIG = 1


class ServerError(Failure):
    """tritonserver is missing, could not start, or a model failed to load; the message carries the reason."""


@dataclass(frozen=True)
class TritonInstallation:
    server: Path  # the tritonserver binary
    python_backend: Path  # libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this interpreter's Python version
    local_cache: Path  # libtritoncache_local.so

    @classmethod
    def find(cls) -> "TritonInstallation":
        """The server inside the installed nvidia-pytriton wheel, or a `ServerError` saying how to install it."""
        spec = importlib.util.find_spec("pytriton")
        root = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
        if root is None or not (root / "bin" / "tritonserver").is_file():
            raise ServerError("tritonserver not found: it ships in the nvidia-pytriton wheel; install the serve extra "
                              "with `pip install .[serve]` (or `pip install nvidia-pytriton==0.7.0`)")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            have = sorted(path.name for path in (root / "python_backend_stubs").iterdir() if path.is_dir())
            raise ServerError(f"the nvidia-pytriton wheel has no python-backend stub for Python {version} (it has "
                              f"{have}); run spade-deploy with one of those Python versions")
        return cls(server=root / "bin" / "tritonserver", python_backend=root / "backends" / "python", stub=stub,
                   local_cache=root / "caches" / "local" / "libtritoncache_local.so")


class TritonServer:
    """A tritonserver process on `repository`; `with TritonServer(repo) as server:` starts it, waits until every
    model is ready, and stops it cleanly at the end. Ports left as None are picked free at start."""

    def __init__(self, repository: str | Path, *, host: str = DEFAULT_HOST, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None, startup_timeout: float = 180.0,
                 log_file: str | Path | None = None) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout  # seconds from launch until every model is ready
        self._log_file = Path(log_file) if log_file is not None else None
        self._work_dir: Path | None = None
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------------------------------------- endpoints
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        if self._log_file is not None:
            return self._log_file
        return self._work_dir / "tritonserver.log" if self._work_dir is not None else None

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "TritonServer":
        if self._process is not None:
            raise ServerError(f"this server is already running (pid {self._process.pid})")
        installation = TritonInstallation.find()
        if not any(self.repository.glob("*/config.pbtxt")):
            raise ValueError(f"{self.repository} is not a model repository (no <model>/config.pbtxt inside); write "
                             f"one with spade_deploy.serve.repository.write_repository")
        for kind, port in self.ports.items():
            if port is None:
                self.ports[kind] = free_port(self.host)
            else:
                _check_port_free(self.host, port, kind)
        self._work_dir = Path(tempfile.mkdtemp(prefix="spade-triton-"))
        try:
            self._launch(installation)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, installation: TritonInstallation) -> None:
        backends, caches = self._work_dir / "backends" / "python", self._work_dir / "caches" / "local"
        backends.mkdir(parents=True)
        caches.mkdir(parents=True)
        for source in installation.python_backend.glob("*"):
            if source.is_file():
                (backends / source.name).symlink_to(source)
        (backends / "triton_python_backend_stub").symlink_to(installation.stub)
        (caches / installation.local_cache.name).symlink_to(installation.local_cache)

        command = [str(installation.server), f"--model-repository={self.repository}",
                   f"--backend-directory={backends.parent}", f"--cache-directory={caches.parent}",
                   f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                   f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                   f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                   "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
                   # Our configs are complete; auto-complete would start one more python stub per model.
                   "--disable-auto-complete-config"]
        # The stub's embedded interpreter finds `python3` on PATH and uses that environment's site-packages.
        environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # Own session: a Ctrl-C in the terminal reaches only us, and `stop` forwards it once.
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=environment, start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{_connect_host(self.host)}:{self.ports['http']}/v2/health/ready"
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerError(f"tritonserver exited during startup (exit status {code}).\n{self._failure()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or listening but some model is still loading
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready within {self.startup_timeout:.0f} s.\n{self._failure()}")
            time.sleep(0.1)

    def _failure(self) -> str:
        """The reasons in the server log: each model that failed to load and why, else the log's last lines."""
        log = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        models = dict(re.findall(r"failed to load '([^']+)' version \d+: (.*?)\"?$", log, flags=re.MULTILINE))
        if models:
            return "\n".join(f"model {name!r} failed to load: {reason}" for name, reason in models.items())
        in_use = re.search(r".*already in use.*", log)
        if in_use:
            return f"a port is taken: {in_use.group(0).strip()}"
        return "last lines of the server log:\n" + self.log_tail(30)

    def wait(self) -> int:
        """Block until the server exits on its own; its exit status."""
        if self._process is None:
            raise ServerError("the server is not running")
        return self._process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (Triton's clean shutdown: in-flight requests finish), SIGKILL after `timeout` seconds or on a
        second Ctrl-C. Returns the exit status (None if it was never started); safe to call twice."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                process.kill()
                code = process.wait()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM (Triton's clean shutdown) when the launching thread ends without
    stopping it (a killed test run or CLI), so no server is left holding its ports. Start servers from a thread
    that outlives them (the main thread, usually)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port free on `host` now (another process could take it before it is bound; start() reports that)."""
    with socket.socket() as probe:
        probe.bind((_connect_host(host), 0))
        return probe.getsockname()[1]


def _check_port_free(host: str, port: int, kind: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(f"the {kind} port {host}:{port} is taken ({error.strerror}); stop what uses it or "
                              f"choose another with --{kind}-port") from None
