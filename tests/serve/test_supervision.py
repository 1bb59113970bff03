"""`spade-deploy serve` under its supervisor, as an operator sees it: a real tritonserver in a `serve` subprocess,
real python-backend stubs killed with SIGKILL (what the OOM killer sends) or stopped with SIGSTOP (a hang), a real
SIGTERM to stop. Each test starts
its own server, since it kills parts of it."""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from spade_deploy.client import SERVING_RETRIES, ServerUnavailable, SpadeClient, SpadeClientError
from spade_deploy.model import io_spec
from spade_deploy.serve import heartbeat
from spade_deploy.serve.repository import write_repository
from spade_deploy.serve.server import SHM_DIR, Stub
from tests.fixtures.serve_process import Serve
from tests.fixtures.serving import Exported, require_triton

RECOVERY_DEADLINE = 60.0  # seconds: generous, the machine is shared; a recovery takes a few seconds


def segmap_repository(exported: Exported, factory: pytest.TempPathFactory, instances: int) -> Path:
    """The generator (with `instances` instances) and the pipeline, in a repository of their own."""
    require_triton()
    path = factory.mktemp("supervised") / "repository"
    write_repository(path, exported.generator_onnx, instances=instances)
    return path


@pytest.fixture(scope="module")
def repository(exported_segmap: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generator instances, as deployed: a killed one leaves the other serving."""
    return segmap_repository(exported_segmap, tmp_path_factory, instances=2)


@pytest.fixture
def serve(repository: Path, tmp_path: Path) -> Iterator[Serve]:
    server = Serve(repository, tmp_path / "tritonserver.log")
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Traffic:
    """Requests in a loop on one thread, readiness polled on another; both timestamped (monotonic seconds)."""
    serve: Serve
    labels: np.ndarray
    requests: list[tuple[float, float, str | None]] = field(default_factory=list)  # (start, end, error or None)
    readiness: list[tuple[float, bool]] = field(default_factory=list)  # (time, pipeline and server ready)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "Traffic":
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._poll)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _send(self) -> None:
        with SpadeClient(self.serve.url, timeout=30) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    client.synthesize(self.labels)
                    error = None
                except SpadeClientError as failure:
                    error = str(failure)
                    time.sleep(0.05)  # a refused request returns at once: do not spin
                self.requests.append((start, time.monotonic(), error))

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            self.readiness.append((now, self.serve.ready(io_spec.PIPELINE_MODEL) and self.serve.ready()))
            time.sleep(0.05)

    def wait_successes(self, count: int, after: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(error is None for start, _, error in self.requests if start >= after) < count:
            assert time.monotonic() < deadline, f"fewer than {count} successes in {timeout} s: {self.requests[-5:]}"
            time.sleep(0.1)


def signal_a_generator_stub(serve: Serve, traffic: Traffic, signum: int) -> tuple[Stub, float]:
    """Once the traffic is served, send `signum` to a generator stub: (that stub, when)."""
    traffic.wait_successes(3, after=0.0, timeout=60)
    victim = next(stub for stub in serve.stubs() if stub.model == io_spec.GENERATOR_MODEL)
    sent = time.monotonic()
    os.kill(victim.pid, signum)
    return victim, sent


def assert_no_shm_left(serve: Serve) -> None:
    assert serve.shm_regions, "no python-backend stub was ever seen"
    left = sorted(name for name in serve.shm_regions if (SHM_DIR / name).exists())
    assert not left, f"shared memory of the stopped server is left in {SHM_DIR}: {left}"


def test_a_killed_generator_stub_is_reloaded_while_readiness_says_not_ready(serve: Serve,
                                                                             exported_segmap: Exported) -> None:
    labels = exported_segmap.inputs(1, seed=3)[io_spec.LABEL]
    with Traffic(serve, labels) as traffic:
        victim, killed = signal_a_generator_stub(serve, traffic, signal.SIGKILL)
        serve.wait_for(rf"stub of {victim.instance} is gone", RECOVERY_DEADLINE)
        serve.wait_for(rf"model '{io_spec.GENERATOR_MODEL}' serving again", RECOVERY_DEADLINE)
        recovered = time.monotonic()
        traffic.wait_successes(10, after=recovered, timeout=RECOVERY_DEADLINE)
    # The killed instance runs again in a new stub.
    assert any(stub.instance == victim.instance and stub.alive for stub in serve.stubs())
    assert victim.pid not in {stub.pid for stub in serve.stubs()}

    after = [(start, end, error) for start, end, error in traffic.requests if start >= killed]
    failures = [(start, error) for start, _, error in after if error is not None]
    if failures:
        # The supervisor took the pipeline out of service: readiness said so, then came back.
        down = [moment for moment, ready in traffic.readiness if moment >= killed and not ready]
        assert down, f"requests failed but readiness never said not ready: {failures[:3]}"
        back = next((moment for moment, ready in traffic.readiness if moment > down[-1] and ready), None)
        assert back is not None, "readiness never came back although requests succeed again"
        # Once ready again, every request is served: ready means serving.
        late = [(start - killed, error) for start, error in failures if start >= back]
        assert not late, f"requests failed after readiness came back: {late[:3]}"
    assert all(error is None for start, _, error in after if start >= recovered)

    seconds = serve.stop()
    print(f"recovered {recovered - killed:.1f} s after the kill, {len(failures)} of {len(after)} requests failed "
          f"meanwhile; stopped in {seconds:.1f} s")
    # A request that reached the dead stub keeps the replaced version in Triton, which its shutdown would wait on:
    # the supervisor ends the server once every current model is unloaded, and says so.
    assert re.search(r"stopped \(tritonserver exit status 0\)|every current model was unloaded; tritonserver was "
                     r"then ended", serve.output), serve.output
    assert_no_shm_left(serve)


def test_a_stopped_generator_stub_is_ended_and_its_model_reloaded(repository: Path, exported_segmap: Exported,
                                                                  tmp_path: Path) -> None:
    """SIGSTOP: the stub stays alive to Triton, which keeps routing requests to it; only its heartbeat tells."""
    stall = 3.0
    serve = Serve(repository, tmp_path / "tritonserver.log", f"--stall-timeout={stall}")
    try:
        labels = exported_segmap.inputs(1, seed=4)[io_spec.LABEL]
        with Traffic(serve, labels) as traffic:
            victim, stopped = signal_a_generator_stub(serve, traffic, signal.SIGSTOP)
            serve.wait_for(rf"stub {victim.pid} of {victim.instance} has given no sign of life for \d+ s \(stopped "
                           rf"or frozen\); ended it", RECOVERY_DEADLINE)
            noticed = time.monotonic()
            serve.wait_for(rf"model '{io_spec.GENERATOR_MODEL}' serving again", RECOVERY_DEADLINE)
            recovered = time.monotonic()
            traffic.wait_successes(10, after=recovered, timeout=RECOVERY_DEADLINE)
        assert noticed - stopped >= stall - heartbeat.PERIOD  # its last beat came before the stop
        assert victim.pid not in {stub.pid for stub in serve.stubs()}
        assert any(stub.instance == victim.instance and stub.alive for stub in serve.stubs())
        assert all(error is None for start, _, error in traffic.requests if start >= recovered)
        print(f"noticed {noticed - stopped:.1f} s after SIGSTOP (stall timeout {stall:.0f} s), serving again "
              f"{recovered - stopped:.1f} s after; stopped in {serve.stop():.1f} s")
        assert_no_shm_left(serve)
    finally:
        if serve.process.poll() is None:
            for stub in serve.stubs():  # a stopped process would hold the server's shutdown
                os.kill(stub.pid, signal.SIGCONT)
        serve.kill()


def test_a_killed_server_is_restarted_on_the_same_ports(serve: Serve, exported_segmap: Exported) -> None:
    feed = exported_segmap.inputs(2, seed=5)
    first = serve.server_pid()
    serve.stubs()  # remember the shared memory of the server about to be killed
    os.kill(first, signal.SIGKILL)
    serve.wait_for(r"tritonserver exited by itself \(status -9\); restarting it on the same ports", RECOVERY_DEADLINE)
    serve.wait_for(r"tritonserver restarted .* and ready", RECOVERY_DEADLINE)
    assert serve.server_pid() != first and serve.ready(io_spec.PIPELINE_MODEL)
    serve.stubs()
    with SpadeClient(serve.url, timeout=60) as client:  # the same address as before the kill
        images = client.synthesize(feed[io_spec.LABEL])
    np.testing.assert_array_equal(images, exported_segmap.run_generator(feed)[io_spec.IMAGE])
    print(f"stopped in {serve.stop():.1f} s")
    assert_no_shm_left(serve)


def test_stop_right_after_a_stub_kill_is_clean(serve: Serve) -> None:
    """Before any recovery: Triton's own shutdown would wait on the dead instance until it is killed, leaving the
    stub's shared memory behind."""
    victim = next(stub for stub in serve.stubs() if stub.model == io_spec.GENERATOR_MODEL)
    os.kill(victim.pid, signal.SIGKILL)
    seconds = serve.stop()
    print(f"stopped {seconds:.1f} s after a stub kill")
    # Triton's clean exit, or, when the supervisor had begun a reload before the stop (it checks every 0.5 s), its
    # end of a server whose shutdown waits on the replaced version: either way not Triton's own kill after 30 s.
    clean = "stopped (tritonserver exit status 0)" in serve.output
    ended = "every current model was unloaded; tritonserver was then ended" in serve.output
    assert clean or ended, serve.output
    assert_no_shm_left(serve)


def test_a_restart_that_finds_a_port_taken_is_tried_again_not_counted_as_deaths(serve: Serve) -> None:
    """The server dies once, and its HTTP port is taken by another program for a few seconds: the supervisor keeps
    trying with a growing pause (a failed start is not a death) and the server comes back once the port is free.
    The log file keeps the dead server's lines. (`serve` is stopped meanwhile, so that the port is taken before its
    supervisor looks.)"""
    first = serve.server_pid()
    os.kill(serve.process.pid, signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        squatter = socket.socket()
        # As servers bind (and the supervisor's own check of the port): connections the dead server closed may
        # linger in TIME_WAIT on its port, which only a listening socket should count as taken.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while True:  # the port is free once the kernel has closed the dead server's sockets
            try:
                squatter.bind(("127.0.0.1", serve.ports["http"]))
                break
            except OSError:
                assert time.monotonic() < deadline, "the dead server's HTTP port never became free"
                time.sleep(0.01)
        squatter.listen()
    finally:
        os.kill(serve.process.pid, signal.SIGCONT)
    with squatter:
        serve.wait_for(rf"did not start again: the http port 127.0.0.1:{serve.ports['http']} is taken.*; trying "
                       rf"again in 1 s", RECOVERY_DEADLINE)
        serve.wait_for(r"did not start again: .*; trying again in 2 s", RECOVERY_DEADLINE)
    serve.wait_for(r"tritonserver restarted .* and ready", RECOVERY_DEADLINE)
    assert serve.process.poll() is None and serve.ready(io_spec.PIPELINE_MODEL)
    assert "times within" not in serve.output
    assert serve.log.read_text().count("Started GRPCInferenceService") == 2  # the first server's lines kept
    print(f"stopped in {serve.stop():.1f} s")


@pytest.fixture(scope="module")
def single_instance_repository(exported_segmap: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return segmap_repository(exported_segmap, tmp_path_factory, instances=1)


def test_a_request_to_a_dead_stub_is_retried_until_its_model_is_back(single_instance_repository: Path,
                                                                      exported_segmap: Exported,
                                                                      tmp_path: Path) -> None:
    """The generator's only stub is killed: a request that reaches it fails with a state that passes
    (`ServerUnavailable`: Triton's "Stub process ... is not healthy", or the model out while it is reloaded), and a
    client with the project's own retries gets its image once the supervisor has reloaded the model."""
    serve = Serve(single_instance_repository, tmp_path / "tritonserver.log")
    try:
        feed = exported_segmap.inputs(1, seed=6)
        victim = next(stub for stub in serve.stubs() if stub.model == io_spec.GENERATOR_MODEL)
        with SpadeClient(serve.url, timeout=30) as once, \
                SpadeClient(serve.url, timeout=30, retries=SERVING_RETRIES) as patient:
            once.served, patient.served  # described before the kill
            os.kill(victim.pid, signal.SIGKILL)
            with pytest.raises(ServerUnavailable):
                once.synthesize(feed[io_spec.LABEL])
            images = patient.synthesize(feed[io_spec.LABEL])
        np.testing.assert_array_equal(images, exported_segmap.run_generator(feed)[io_spec.IMAGE])
        print(f"stopped in {serve.stop():.1f} s")
    finally:
        serve.kill()
