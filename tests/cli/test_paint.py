"""`spade-deploy paint` as a user runs it: the studio in a subprocess until SIGTERM, and the options and failures it
reports before serving anything."""
from __future__ import annotations

import socket

import pytest

from spade_deploy import cli
from spade_deploy.serve.server import free_port, free_ports
from tests.fixtures.hosts import NOT_HERE, skip_where_bound
from tests.studio.process import Studio


def test_paint_serves_the_page_until_sigterm() -> None:
    studio = Studio()
    try:
        page = studio.get("/")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b'<canvas id="labels"' in page.body
        for asset in ("/static/studio.js", "/static/studio.css"):
            assert studio.get(asset).status == 200, asset
    finally:
        status, output = studio.stop()
    assert status == 0, output
    assert output.startswith("ready: the studio for ") and "(pytorch; 128x128, 10 classes)" in output, output
    assert output.rstrip().endswith("stopped"), output


@pytest.mark.parametrize("options, words", [
    (["--encoder", "E.pth"], "--encoder goes with --checkpoint: give both, or drop --encoder"),
    (["--onnx-encoder", "encoder.onnx"], "--onnx-encoder goes with --onnx: give both, or drop --onnx-encoder"),
    (["--onnx", "generator.onnx", "--preset", "ade20k"], "--preset goes with --checkpoint"),
    (["--onnx", "missing/generator.onnx"], "no such ONNX file: missing/generator.onnx"),
])
def test_paint_refuses_options_that_cannot_work(options: list[str], words: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["paint", "--port", "0", *options]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("value", ["70000", "-1"])
def test_paint_takes_only_ports_in_the_range(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["paint", "--port", value])
    assert exit_info.value.code == cli.USER_ERROR
    assert f"argument --port: expected a port number 0..65535 (0: a free one), got {value}" in \
        capsys.readouterr().err


@pytest.mark.parametrize("host, words", [
    ("256.1.1.1", "--host 256.1.1.1 cannot be resolved to an IPv4 address ("),
    ("::1.2", "--host ::1.2 cannot be resolved to an IPv6 address ("),
    (NOT_HERE, f"--host {NOT_HERE} is not an address of this machine; give one of its addresses: 127.0.0.1"),
])
def test_paint_reports_a_bad_host_as_such(host: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    if host == NOT_HERE:
        skip_where_bound(host)
    assert cli.main(["paint", "--host", host, "--port", "0"]) == cli.USER_ERROR
    err = capsys.readouterr().err
    assert words in err and "--port" not in err, err


def test_paint_reports_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["paint", "--port", str(port)]) == cli.USER_ERROR
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); stop what uses it or choose another " \
           f"--port" in capsys.readouterr().err


def test_paint_fails_when_the_server_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert cli.main(["paint", "--server", address, "--port", "0"]) == cli.FAILURE
    assert f"spade-deploy paint: error: cannot reach the Triton server at {address}" in capsys.readouterr().err


def test_paint_tries_every_replica_given(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = (f"127.0.0.1:{port}" for port in free_ports(2))
    assert cli.main(["paint", "--server", f"{first},{second}", "--port", "0"]) == cli.FAILURE
    err = capsys.readouterr().err
    assert "no Triton server answered: 2 attempts (1 round(s) over 2 address(es)" in err
    assert first in err and second in err
