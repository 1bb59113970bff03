"""spade_deploy.serve: the launcher finds the wheel's server and reports a taken port or a model that cannot load
with the reason (real tritonserver processes, no mocks)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spade_deploy.model import io_spec
from spade_deploy.serve.server import ServerError, TritonInstallation, TritonServer
from spade_deploy.serve.repository import write_repository
from tests.fixtures.serving import Exported, Served, require_triton


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


def test_not_a_repository(tmp_path: Path) -> None:
    require_triton()
    with pytest.raises(ValueError, match="is not a model repository"):
        TritonServer(tmp_path).start()


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
