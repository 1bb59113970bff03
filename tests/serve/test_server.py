"""spade_deploy.serve: the launcher finds the wheel's server and reports a taken port or a model that cannot load
with the reason; an admin key guards the administrative APIs (real tritonserver processes, no mocks)."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from spade_deploy.cli.serve import admin_key_from
from spade_deploy.client import SpadeClient
from spade_deploy.export.runtime import OnnxGenerator, openvino_unavailable
from spade_deploy.model import io_spec
from spade_deploy.serve.server import (ADMIN_HEADER, SHM_DIR, ServerError, TritonInstallation, TritonServer,
                                       python_stubs)
from spade_deploy.serve.repository import write_repository
from tests.fixtures.hosts import NOT_HERE, skip_where_bound
from tests.fixtures.serving import Exported, Served, as_bf16_export, require_triton


@pytest.fixture
def repository(exported_segmap: Exported, tmp_path: Path) -> Path:
    require_triton()
    write_repository(tmp_path / "repository", exported_segmap.generator_onnx, instances=1)
    return tmp_path / "repository"


def test_finds_the_server_of_the_wheel() -> None:
    require_triton()
    installation = TritonInstallation.find()
    for path in (installation.server, installation.stub, installation.local_cache,
                 installation.python_backend / "libtriton_python.so"):
        assert path.is_file(), path


def test_a_taken_port_is_reported_before_launch(repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(repository, grpc_port=port)
        with pytest.raises(ServerError, match=f"the grpc port 127.0.0.1:{port} is taken .*--grpc-port"):
            server.start()
        assert server.pid is None


def test_an_address_of_no_machine_is_not_called_a_taken_port(repository: Path) -> None:
    skip_where_bound(NOT_HERE)
    for ports in ({}, {"grpc_port": 8001, "http_port": 8000, "metrics_port": 8002}):  # free ports picked, or given
        server = TritonServer(repository, host=NOT_HERE, **ports)
        with pytest.raises(ServerError, match=f"cannot listen on {NOT_HERE}.* the host is not an address of this "
                                              f"machine"):
            server.start()
        assert server.pid is None


def test_not_a_repository(tmp_path: Path) -> None:
    require_triton()
    with pytest.raises(ValueError, match="is not a model repository"):
        TritonServer(tmp_path).start()


def test_a_bf16_export_is_served_in_openvino_as_it_runs_in_process(exported_segmap: Exported, tmp_path: Path) -> None:
    require_triton()
    if openvino_unavailable():
        pytest.skip(openvino_unavailable())
    bf16 = as_bf16_export(exported_segmap.generator_onnx, tmp_path / "bf16.onnx")
    write_repository(tmp_path / "repository", bf16, instances=1)
    labels = exported_segmap.inputs(2, seed=7)[io_spec.LABEL]
    local = OnnxGenerator(bf16, threads=1)  # as the served model runs it (intra_op_threads=1)
    with TritonServer(tmp_path / "repository") as server, SpadeClient(server.grpc_url, timeout=60) as client:
        served = client.synthesize(labels)
    np.testing.assert_array_equal(served, local(labels)[0])
    if local.precision == "bf16":  # OpenVINO ran it at bf16 on this CPU: not the fp32 graph's image
        fp32 = exported_segmap.run_generator({io_spec.LABEL: labels})[io_spec.IMAGE]
        assert not np.array_equal(served, fp32)


def test_stubs_a_killed_server_leaves_behind_are_ended(repository: Path) -> None:
    """A stub that cannot notice its server's death (stopped here; in the wild one sometimes runs on) is found by
    the server's process group and ended by `stop`, its shared memory removed."""
    server = TritonServer(repository).start()
    try:
        first = server.pid
        stub = next(stub for stub in server.stubs() if stub.model == io_spec.GENERATOR_MODEL)
        os.kill(stub.pid, signal.SIGSTOP)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while stub.pid not in {left.pid for left in python_stubs(first, left_behind=True)}:
            assert time.monotonic() < deadline, "the stopped stub was not reparented"
            time.sleep(0.05)
        assert python_stubs(first) == []  # no longer the server's child (the others end by themselves)
    finally:
        server.stop()
    assert python_stubs(first, left_behind=True) == []
    assert not (SHM_DIR / stub.shm_region).exists()


def test_a_model_that_cannot_load_is_named_with_the_reason(exported_segmap: Exported, tmp_path: Path) -> None:
    """The gpu variant needs the onnxruntime backend of NVIDIA's container, which the wheel's server lacks."""
    require_triton()
    write_repository(tmp_path / "repository", exported_segmap.generator_onnx, variant="gpu", instances=1)
    with pytest.raises(ServerError, match=r"exited during startup.*\nmodel 'spade_generator' failed to load: .*"
                                          r"unable to find backend library for backend 'onnxruntime'"):
        TritonServer(tmp_path / "repository").start()


def test_served_python_backend_processes_have_no_torch(spade_server: Served) -> None:
    """The stubs (generator, encoder, pipeline) import numpy and ONNX Runtime only: no libtorch mapped."""
    children = _descendants(spade_server.server.pid)
    stubs = {pid: _read(f"/proc/{pid}/cmdline").replace("\0", " ") for pid in children
             if _read(f"/proc/{pid}/comm").strip() == "triton_python_b"}  # comm is cut at 15 characters
    models = {io_spec.GENERATOR_MODEL, io_spec.ENCODER_MODEL, io_spec.PIPELINE_MODEL}
    assert {model for model in models if any(f"/{model}/" in command for command in stubs.values())} == models, stubs
    for pid, command in stubs.items():
        maps = _read(f"/proc/{pid}/maps")
        assert "libtorch" not in maps, command
    assert any("onnxruntime" in _read(f"/proc/{pid}/maps") for pid in stubs)  # the graphs do run in the stubs


def test_admin_apis_need_the_key_while_inference_goes_on(repository: Path, exported_segmap: Exported) -> None:
    key = secrets.token_urlsafe(32)
    feed = exported_segmap.inputs(2, seed=8)
    with TritonServer(repository, admin_key=key) as server:
        for headers in ({}, {ADMIN_HEADER: "not-the-key-" + "x" * 20}):
            request = urllib.request.Request(f"{server.http_url}/v2/repository/models/{io_spec.PIPELINE_MODEL}/unload",
                                             data=b"{}", headers=headers, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert f"This API is restricted, expecting header '{ADMIN_HEADER}'" in refused.value.read().decode()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for call in (lambda: client.unload_model(io_spec.GENERATOR_MODEL),  # model repository
                         lambda: client.load_model(io_spec.GENERATOR_MODEL, headers={ADMIN_HEADER: key[::-1]}),
                         client.get_model_repository_index,
                         client.get_system_shared_memory_status,  # shared memory
                         client.get_log_settings,  # logging
                         client.get_trace_settings):  # trace
                with pytest.raises(InferenceServerException, match="restricted"):
                    call()
            # Health, metadata and statistics stay open.
            assert client.is_server_ready() and client.is_model_ready(io_spec.PIPELINE_MODEL)
            assert client.get_server_metadata().name == "triton"
            assert client.get_inference_statistics(io_spec.PIPELINE_MODEL).model_stats
        finally:
            client.close()
        with SpadeClient(server.grpc_url, timeout=60) as spade:  # reads the model config, then infers
            np.testing.assert_array_equal(spade.synthesize(feed[io_spec.LABEL]),
                                          exported_segmap.run_generator(feed)[io_spec.IMAGE])
        # The key holder (the supervisor of `spade-deploy serve`) can reload a model.
        server.unload_model(io_spec.PIPELINE_MODEL)
        assert not server.model_ready(io_spec.PIPELINE_MODEL) and not server.ready()
        server.load_model(io_spec.PIPELINE_MODEL)
        assert server.model_ready(io_spec.PIPELINE_MODEL) and server.ready()


def test_a_bad_admin_key_is_refused_before_launch(repository: Path) -> None:
    with pytest.raises(ValueError, match="admin_key must be at least 16 characters"):
        TritonServer(repository, admin_key="short")
    with pytest.raises(ValueError, match="admin_key must be"):
        TritonServer(repository, admin_key="a key with spaces and = signs")


def test_the_admin_key_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    key = admin_key_from(path)  # made and written
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == key + "\n"
    assert admin_key_from(path) == key  # read back: the same key across restarts
    path.chmod(0o640)
    with pytest.raises(ValueError, match="can be read by others .*chmod 600"):
        admin_key_from(path)


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        text = _read(stat)
        if text:
            parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # a process that ended meanwhile
        return ""
