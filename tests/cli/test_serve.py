"""`spade-deploy serve` and `spade-deploy synthesize --server`, as a user runs them: the server in a subprocess until
SIGTERM, the synthesize command writing the served images."""
from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from spade_deploy import cli
from spade_deploy.model import io_spec
from spade_deploy.model.images import read_rgb
from spade_deploy.cli.serve import admin_key_from
from spade_deploy.model.labels import write_label_png
from spade_deploy.serve.server import TritonServer, free_ports
from spade_deploy.serve.supervisor import Supervisor
from spade_deploy.serve.repository import write_repository
from tests.fixtures.hosts import NOT_HERE, skip_where_bound
from tests.fixtures.serving import Exported, require_triton


def test_serve_until_sigterm_and_synthesize_through_it(exported_segmap: Exported, tmp_path: Path) -> None:
    require_triton()
    write_repository(tmp_path / "repository", exported_segmap.generator_onnx, instances=1)
    feed = exported_segmap.inputs(3, seed=70)
    labels = []
    for index, label in enumerate(feed[io_spec.LABEL]):
        labels.append(tmp_path / f"map{index}.png")
        write_label_png(labels[-1], label, exported_segmap.config)
    grpc_port, http_port, metrics_port, dead_port = free_ports(4)
    command = [sys.executable, "-m", "spade_deploy.cli", "serve", "--repository", str(tmp_path / "repository"),
               "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    try:
        seen = [lines.get(timeout=180)]
        while not seen[-1].startswith("ready:"):
            seen.append(lines.get(timeout=180))
        seen.append(lines.get(timeout=10))
        assert seen[-1].split() == ["gRPC", f"127.0.0.1:{grpc_port}"], seen

        # Two replicas, the first one down: the client goes on to the next.
        assert cli.main(["synthesize", "--server", f"127.0.0.1:{dead_port}, 127.0.0.1:{grpc_port}",
                         "--labels", *map(str, labels), "--out", str(tmp_path / "out")]) == 0
        images = np.stack([read_rgb(tmp_path / "out" / path.name) for path in labels])
        np.testing.assert_array_equal(images, exported_segmap.run_generator(feed)[io_spec.IMAGE])

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    output = "".join(seen) + "".join(lines.get() for _ in range(lines.qsize()))
    assert "stopping" in output and "stopped (tritonserver exit status 0)" in output, output


@pytest.mark.parametrize("option, value, message", [
    ("--stall-timeout", "0", "expected a positive number of seconds, got '0'"),
    ("--stall-timeout", "soon", "expected a number of seconds, got 'soon'"),
    ("--execute-timeout", "-1", "expected a number of seconds >= 0 (0: no limit), got '-1'"),
    ("--execute-timeout", "inf", "expected a finite number of seconds, got 'inf'"),
    ("--grpc-port", "70000", "expected a port number 0..65535 (0: a free one), got 70000"),
    ("--http-port", "-5", "expected a port number 0..65535 (0: a free one), got -5"),
    ("--metrics-port", "metrics", "expected a port number 0..65535 (0: a free one), got 'metrics'"),
    ("--startup-timeout", "0", "expected a positive number of seconds, got '0'"),
])
def test_timeouts_and_ports_are_checked(option: str, value: str, message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--repository", str(tmp_path), option, value])
    assert exit_info.value.code == cli.USER_ERROR
    assert f"argument {option}: {message}" in capsys.readouterr().err


def _fake_repository(folder: Path) -> Path:
    """What the checks before launch take for a model repository; nothing here is ever served."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.pbtxt").write_text("")
    return folder


@pytest.mark.parametrize("host, message", [
    ("256.1.1.1", "--host 256.1.1.1 cannot be resolved to an IPv4 address ("),
    (NOT_HERE, f"--host {NOT_HERE} is not an address of this machine; give one of its addresses: 127.0.0.1"),
])
def test_a_bad_host_is_reported_as_such_before_any_port(host: str, message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    if host == NOT_HERE:
        skip_where_bound(host)
    key = tmp_path / "admin.key"
    status = cli.main(["serve", "--repository", str(_fake_repository(tmp_path / "repository")), "--host", host,
                       "--admin-key-file", str(key)])
    err = capsys.readouterr().err
    assert status == cli.USER_ERROR, err
    assert message in err and "port" not in err, err
    assert not key.exists()


@pytest.mark.parametrize("make, options, message", [
    (None, [], "--repository {tmp}/missing does not exist; expected the folder of a model repository"),
    ("file", [], "--repository {tmp}/missing is a file; expected the folder of a model repository"),
    ("folder", [], "--repository {tmp}/missing holds no model (no <model>/config.pbtxt inside); write a repository "
                   "with `spade-deploy export onnx"),
    ("repository", ["--grpc-port", "8000"], "--grpc-port and --http-port are both 8000; each endpoint needs a port"),
    ("repository", ["--log-file", "{tmp}"], "--log-file {tmp} is a folder; expected the path of a file to write"),
])
def test_the_key_file_is_written_only_once_the_options_are_checked(
        make: str | None, options: list[str], message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "missing"
    if make == "file":
        repository.write_text("")
    elif make == "folder":
        repository.mkdir()
    elif make == "repository":
        _fake_repository(repository)
    key = tmp_path / "keys" / "admin.key"
    status = cli.main(["serve", "--repository", str(repository), "--admin-key-file", str(key),
                       *(option.format(tmp=tmp_path) for option in options)])
    assert status == cli.USER_ERROR
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not key.parent.exists()


def test_a_key_file_that_is_a_folder_is_refused_as_a_folder(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    require_triton()  # the checks before the key file include finding the server
    folder = tmp_path / "keys"
    folder.mkdir()
    status = cli.main(["serve", "--repository", str(_fake_repository(tmp_path / "repository")),
                       "--admin-key-file", str(folder)])
    assert status == cli.USER_ERROR
    assert f"--admin-key-file {folder} is a folder; expected a key file (read when it exists, made when it does " \
           f"not)" in capsys.readouterr().err


def test_a_key_file_triton_cannot_take_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_triton()
    key = tmp_path / "admin.key"
    key.write_text("short\n")
    key.chmod(0o600)
    status = cli.main(["serve", "--repository", str(_fake_repository(tmp_path / "repository")),
                       "--admin-key-file", str(key)])  # refused before the server is launched
    assert status == cli.USER_ERROR
    assert f"--admin-key-file {key}: admin_key must be at least 16 characters" in capsys.readouterr().err


def test_the_key_file_is_made_in_missing_folders_and_must_be_a_file(tmp_path: Path) -> None:
    key = admin_key_from(tmp_path / "new" / "deeper" / "admin.key")
    assert (tmp_path / "new" / "deeper" / "admin.key").read_text() == key + "\n"
    with pytest.raises(ValueError, match=r"--admin-key-file /dev/null is not a regular file \(mode c"):
        admin_key_from(Path("/dev/null"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--admin-key-file .*file/admin.key: .*file is a file, not a folder"):
        admin_key_from(tmp_path / "file" / "admin.key")


def test_the_supervisor_refuses_timeouts_that_are_not_positive(tmp_path: Path) -> None:
    server = TritonServer(tmp_path)
    with pytest.raises(ValueError,
                       match=r"stall_timeout and execute_timeout must be positive \(seconds\), got 0 and 600"):
        Supervisor(server, stall_timeout=0)
    with pytest.raises(ValueError, match="got 10.0 and -1"):
        Supervisor(server, execute_timeout=-1)


@pytest.mark.parametrize("value", ["", "127.0.0.1:8001,", ",127.0.0.1:8001", "a:1,,b:2"])
def test_server_addresses_need_every_entry(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synthesize", "--server", value, "--labels", "map.png", "--out", "out"])
    assert exit_info.value.code == cli.USER_ERROR
    assert f"argument --server: expected gRPC addresses 'host:port', comma-separated, got {value!r}" in \
        capsys.readouterr().err


def test_synthesize_server_refuses_local_only_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["synthesize", "--server", "127.0.0.1:1", "--encoder", "E.pth", "--labels", "map.png",
                       "--out", str(tmp_path)])
    assert status == cli.USER_ERROR
    assert "--encoder: with --server the served model (and its encoder) decide" in capsys.readouterr().err
