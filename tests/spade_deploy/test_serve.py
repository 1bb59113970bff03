"""spade_deploy.serve: the launcher finds the wheel's server and reports a taken port or a model that cannot load
with the reason (real tritonserver processes, no mocks)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spade_deploy.serve import ServerError, TritonInstallation, TritonServer
from spade_deploy.triton_repo import write_repository
from tests.triton_fixtures import Exported, require_triton


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
