"""Run the real `tritonserver` shipped in the nvidia-pytriton wheel on a model repository (CPU machines included).

`TritonServer` is the one launcher of the CLI (`spade-deploy serve`), the tests and the benchmarks. The recipe: a
private backend directory of symlinks into the wheel (the wheel itself is never written), this interpreter's `bin/`
first on PATH so the python-backend stub runs in this environment (it ignores PYTHONPATH), every endpoint on
loopback unless told otherwise.

Models are under explicit model control (all loaded at start), so a broken model can be unloaded and loaded again
without restarting the server (spade_deploy.serve.supervisor does that). With an `admin_key`, Triton refuses the
administrative APIs (model load/unload, shared memory, logging, trace) to requests without that key in the
`ADMIN_HEADER` header; inference, metadata, model configs, statistics and health stay open.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from spade_deploy.errors import Failure
from spade_deploy.serve import heartbeat
from spade_deploy.serve.heartbeat import proc_stat, start_time

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}  # Triton's usual ports, for the CLI
_PR_SET_PDEATHSIG = 1
STUB_NAME = "triton_python_backend_stub"  # the python backend runs each model instance in a child process of this name
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"  # the python backend's shared-memory regions, one per stub
ORPHAN_WAIT = 5.0  # seconds `stop` waits for the stubs a killed server left behind to die once killed
ADMIN_HEADER = "spade-admin-key"  # the request header that carries the admin key (gRPC metadata or HTTP header)
# Triton's names of the APIs an admin key guards: what changes the server (models, shared memory, logging, tracing).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


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


@dataclass(frozen=True)
class Stub:
    """A python-backend stub: the process that runs one instance of a python-backend model, a child of tritonserver."""
    pid: int
    model: str  # the Triton model, from the model file on its command line (<repository>/<model>/<version>/model.py)
    instance: str  # Triton's instance name, e.g. spade_generator_0_1
    shm_region: str  # its shared-memory region in /dev/shm
    alive: bool  # False for a zombie: killed, not yet reaped by the server
    started: int | None = None  # its start time (clock ticks after boot), which its heartbeat records too


def python_stubs(server_pid: int, *, left_behind: bool = False) -> list[Stub]:
    """The stub processes tritonserver `server_pid` runs now, read from /proc (Linux); with `left_behind`, those
    that outlived it instead: still in its process group (our servers lead their own), no longer its children."""
    stubs = []
    for directory in Path("/proc").iterdir():
        if not directory.name.isdigit():
            continue
        fields = proc_stat(directory.name)
        if fields is None:  # gone meanwhile
            continue
        parent, group = int(fields[1]), int(fields[2])
        wanted = group == server_pid and parent != server_pid if left_behind else parent == server_pid
        if not wanted:
            continue
        try:
            argv = (directory / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process ended meanwhile
            continue
        # The stub's command line: stub, model.py, shm region, shm sizes, parent pid, backend dir, ipc handle, instance
        if Path(argv[0]).name != STUB_NAME or len(argv) < 9:
            continue
        stubs.append(Stub(pid=int(directory.name), model=Path(argv[1]).parent.parent.name, instance=argv[8],
                          shm_region=argv[2], alive=fields[0] not in ("Z", "X"), started=start_time(fields)))
    return stubs


class TritonServer:
    """A tritonserver process on `repository`; `with TritonServer(repo) as server:` starts it, waits until every
    model is ready, and stops it cleanly at the end. Ports left as None are picked free at start and kept for
    `restart`. With `admin_key`, the administrative APIs need it (see the module docstring)."""

    def __init__(self, repository: str | Path, *, host: str = DEFAULT_HOST, grpc_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None, startup_timeout: float = 180.0,
                 log_file: str | Path | None = None, admin_key: str | None = None) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout  # seconds from launch until every model is ready
        if admin_key is not None and not re.fullmatch(r"[A-Za-z0-9_\-]{16,}", admin_key):
            raise ValueError("admin_key must be at least 16 characters of A-Z, a-z, 0-9, '_' or '-' (it travels in a "
                             "request header and on Triton's command line); secrets.token_urlsafe() makes one")
        self._admin_key = admin_key
        self._log_file = Path(log_file) if log_file is not None else None
        self._work_dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log_offset = 0  # where the current start's lines begin in the log
        # Every shared-memory region this server's stubs were seen with: a stub that was killed, or a server that
        # was, leaves its region in /dev/shm, and only the names tell ours from another server's.
        self._shm_regions: set[str] = set()

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
    def exit_status(self) -> int | None:
        """The status of a server that ended (by itself, or killed); None while it runs or was never started."""
        return self._process.poll() if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        if self._log_file is not None:
            return self._log_file
        return self._work_dir / "tritonserver.log" if self._work_dir is not None else None

    @property
    def heartbeat_dir(self) -> Path | None:
        """Where the python-backend stubs of our models beat (`spade_deploy.serve.heartbeat`); None before start."""
        return self._work_dir / "heartbeats" if self._work_dir is not None else None

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
        if not is_repository(self.repository):
            raise ValueError(f"{self.repository} is not a model repository (no <model>/config.pbtxt inside); write "
                             f"one with spade_deploy.serve.repository.write_repository")
        chosen = [kind for kind, port in self.ports.items() if port is None]
        for kind, port in self.ports.items():
            if port is not None:
                _check_port_free(self.host, port, kind)
        self.ports.update(zip(chosen, free_ports(len(chosen), self.host)))
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
                   "--disable-auto-complete-config",
                   # Explicit control, every model loaded at start: a broken model can be reloaded in place.
                   "--model-control-mode=explicit", "--load-model=*"]
        if self._admin_key is not None:
            # Triton reads the key only from its command line, where local users can see it (ps); the guard is
            # against network clients (--host 0.0.0.0), not against other users of this machine.
            apis = ",".join(RESTRICTED_APIS)
            command += [f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={self._admin_key}",
                        f"--http-restricted-api={apis}:{ADMIN_HEADER}={self._admin_key}"]
        # The stub's embedded interpreter finds `python3` on PATH and uses that environment's site-packages; our
        # models' stubs beat in the heartbeat folder (spade_deploy.serve.heartbeat).
        self.heartbeat_dir.mkdir()
        environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                           **{heartbeat.ENVIRONMENT: str(self.heartbeat_dir)})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Appended: after a restart the log still holds what the server that died wrote (`--log-file`).
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
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
        """The reasons in what this start wrote to the server log: each model that failed to load and why, else
        the log's last lines."""
        with open(self.log_path, "rb") as file:
            file.seek(self._log_offset)
            log = file.read().decode(errors="replace")
        models = dict(re.findall(r"failed to load '([^']+)' version \d+: (.*?)\"?$", log, flags=re.MULTILINE))
        if models:
            return "\n".join(f"model {name!r} failed to load: {reason}" for name, reason in models.items())
        in_use = re.search(r".*already in use.*", log)
        if in_use:
            return f"a port is taken: {in_use.group(0).strip()}"
        return "last lines of the server log:\n" + "\n".join(log.splitlines()[-30:])

    # ------------------------------------------------------------------------------------------- processes
    def stubs(self) -> list[Stub]:
        """The python-backend stubs of the running server (none once it ended)."""
        if self._process is None or self._process.poll() is not None:
            return []
        stubs = python_stubs(self._process.pid)
        self._shm_regions.update(stub.shm_region for stub in stubs)
        return stubs

    def _note_shm_regions(self) -> None:
        """Also the regions the server itself maps: those of stubs that were never seen by `stubs()`."""
        if self._process is None:
            return
        try:
            maps = Path(f"/proc/{self._process.pid}/maps").read_text()
        except OSError:
            return
        self._shm_regions.update(re.findall(rf"{SHM_DIR}/({SHM_PREFIX}[^\s]+)", maps))

    # ------------------------------------------------------------------------------------------- model control
    def model_ready(self, model: str) -> bool:
        """What Triton's readiness endpoint says about `model` now (False when the server does not answer)."""
        return self._get_ok(f"/v2/models/{model}/ready")

    def ready(self) -> bool:
        """What Triton's server readiness endpoint says now: the server runs and every loaded model is ready."""
        return self._get_ok("/v2/health/ready")

    def load_model(self, model: str) -> None:
        """Load `model` from the repository and wait until it is ready (or a `ServerError` with Triton's reason).
        Triton skips a load of a model that is loaded and unchanged: reload with `unload_model` first."""
        self._model_control(model, "load")

    def unload_model(self, model: str) -> None:
        """Take `model` out of service: it is not ready from now on; Triton finishes its in-flight requests and
        stops its instances in the background."""
        self._model_control(model, "unload")

    def _model_control(self, model: str, action: Literal["load", "unload"]) -> None:
        headers = {ADMIN_HEADER: self._admin_key} if self._admin_key is not None else {}
        request = urllib.request.Request(f"{self._local_http_url}/v2/repository/models/{model}/{action}", data=b"{}",
                                         headers={"Content-Type": "application/json", **headers}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.startup_timeout):
                return
        except urllib.error.HTTPError as error:
            reason = error.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = str(error)
        raise ServerError(f"could not {action} model {model!r}: {reason}")

    def _get_ok(self, path: str) -> bool:
        # One connection per call (urllib closes it): a kept-alive HTTP connection holds Triton's shutdown up to
        # its exit timeout (30 s).
        try:
            with urllib.request.urlopen(f"{self._local_http_url}{path}", timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    @property
    def _local_http_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.ports['http']}"

    def wait(self) -> int:
        """Block until the server exits on its own; its exit status."""
        if self._process is None:
            raise ServerError("the server is not running")
        return self._process.wait()

    def stop(self, timeout: float = 30.0, *, finished: Callable[[], bool] | None = None) -> int | None:
        """SIGINT (Triton's clean shutdown: in-flight requests finish, models unload), SIGKILL after `timeout`
        seconds, on a second Ctrl-C, or as soon as `finished()` (asked every 0.1 s while waiting) says that the
        shutdown has done all it can. Removes the server's work files and leftover shared memory. Returns the exit
        status (None if it was never started); safe to call twice."""
        self._note_shm_regions()
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + timeout
            try:
                while (code := process.poll()) is None:
                    if time.monotonic() > deadline or (finished is not None and finished()):
                        process.kill()
                        code = process.wait()
                        break
                    time.sleep(0.1)
            except KeyboardInterrupt:
                process.kill()
                code = process.wait()
            # A server killed outright (SIGKILL, the OOM killer) can leave a stub running on, orphaned, with a copy
            # of its model in memory. A killed process dies when the kernel next runs it: wait for that (briefly),
            # so that stop returns with none left running.
            deadline = time.monotonic() + ORPHAN_WAIT
            while (orphans := [stub for stub in python_stubs(process.pid, left_behind=True) if stub.alive]) \
                    and time.monotonic() < deadline:
                for stub in orphans:
                    self._shm_regions.add(stub.shm_region)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(stub.pid, signal.SIGKILL)
                time.sleep(0.05)
        _remove_shm_regions(self._shm_regions)
        self._shm_regions.clear()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        return code

    def restart(self) -> "TritonServer":
        """Stop what is left of the server (its work files, its shared memory) and start it again, on the same
        ports and with the same admin key: for a supervisor, after the server died."""
        self.stop()
        return self.start()

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def is_repository(path: Path) -> bool:
    """Whether `path` is a model repository: a folder with at least one <model>/config.pbtxt."""
    return any(Path(path).glob("*/config.pbtxt"))


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM (Triton's clean shutdown) when the launching thread ends without
    stopping it (a killed test run or CLI), so no server is left holding its ports. Start servers from a thread
    that outlives them (the main thread, usually)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _remove_shm_regions(names: Iterable[str]) -> None:
    """Remove what is left of these python-backend regions. Triton removes them when it unloads a model; a stub
    or a server that was killed leaves its region behind (1 MiB or more each, until reboot)."""
    for name in names:
        if name.startswith(SHM_PREFIX) and "/" not in name:  # never anything outside the backend's own names
            try:
                (SHM_DIR / name).unlink()
            except OSError:
                pass  # Triton removed it already (a clean shutdown does)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port free on `host` now (another process could take it before it is bound; start() reports that)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """`count` different TCP ports free on `host` now: all are held open together while chosen, so the system
    cannot hand the same port out twice (as it may to probes opened one after another)."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            try:
                probe.bind((_connect_host(host), 0))
            except OSError as error:
                raise ServerError(f"cannot listen on {host} ({error.strerror}): "
                                  f"{_BIND_HINTS.get(error.errno, 'check the host')}") from None
        return [probe.getsockname()[1] for probe in probes]


# What to change when a port cannot be bound for another reason than being taken.
_BIND_HINTS = {errno.EACCES: "ports below 1024 need privileges; choose a port from 1024 up",
               errno.EADDRNOTAVAIL: "the host is not an address of this machine"}


def _check_port_free(host: str, port: int, kind: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ServerError(f"the {kind} port {host}:{port} is taken ({error.strerror}); stop what uses it or "
                                  f"choose another with --{kind}-port") from None
            raise ServerError(f"cannot listen on {host}:{port} for {kind} ({error.strerror}): "
                              f"{_BIND_HINTS.get(error.errno, 'check --host and --' + kind + '-port')}") from None
