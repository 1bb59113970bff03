"""The demo and the bundled landscape model: the demo's files agree with each other, `synthesize` needs no
checkpoint, and the bundled model goes through export (sparse graph, parity), Triton and the client intact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spade_deploy import cli, demo
from spade_deploy.client import SpadeClient
from spade_deploy.data.landscapes import CLASSES, VALIDATION_SEED, bundled_model, colorize, render, sample_seed
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.images import read_rgb
from spade_deploy.model.labels import read_label_png
from spade_deploy.model.tensors import tensor_to_rgb, to_semantic_input
from spade_deploy.serve.server import TritonServer
from tests.fixtures.serving import require_triton


@pytest.fixture(scope="module")
def bundled():
    return load_generator(bundled_model())


def test_bundled_model_is_the_landscape_generator(bundled) -> None:
    config = bundled.config
    assert (config.preset, config.label_nc, config.semantic_nc, config.image_size) == ("custom", len(CLASSES),
                                                                                       len(CLASSES), (128, 128))
    assert bundled_model().stat().st_size <= 25 * 2 ** 20


def test_demo_outputs_agree_with_each_other(tmp_path: Path, capsys: pytest.CaptureFixture, bundled) -> None:
    assert demo.main(["--out", str(tmp_path), "--maps", "2"]) == 0
    printed = capsys.readouterr().out
    for name in ("labels", "previews", "images", "real", "overview.png"):
        assert str(tmp_path / name) in printed
    for index in range(2):
        name = f"map_{index:02d}.png"
        labels, real = render(sample_seed(VALIDATION_SEED, index), demo.SIZE)  # held out: seed 0 trains
        assert np.array_equal(read_label_png(tmp_path / "labels" / name, bundled.config), labels)
        assert np.array_equal(read_rgb(tmp_path / "previews" / name), colorize(labels))
        assert np.array_equal(read_rgb(tmp_path / "real" / name), real)
        with torch.inference_mode():
            image = tensor_to_rgb(bundled(to_semantic_input(labels, None, bundled.config)))[0]
        assert np.array_equal(read_rgb(tmp_path / "images" / name), image)
    assert read_rgb(tmp_path / "overview.png").shape == (2 * 128 + 4, 3 * 128 + 8, 3)  # label | generated | real


def test_synthesize_uses_the_bundled_model_without_a_checkpoint(tmp_path: Path, bundled) -> None:
    assert demo.main(["--out", str(tmp_path / "demo"), "--maps", "1", "--first", "5"]) == 0
    label = tmp_path / "demo" / "labels" / "map_05.png"
    assert cli.main(["synthesize", "--labels", str(label), "--out", str(tmp_path / "out")]) == 0
    assert np.array_equal(read_rgb(tmp_path / "out" / "map_05.png"), read_rgb(tmp_path / "demo" / "images" /
                                                                              "map_05.png"))


@pytest.mark.parametrize("args, message", [(["--maps", "0"], "--maps must be at least 1"),
                                           (["--first", "-1"], "--first must be at least 0")])
def test_demo_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                  message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bundled_model_exports_serves_and_matches_local(tmp_path: Path, bundled) -> None:
    """Export (sparse graph, parity checked), Triton repository, server, client: within one 8-bit level of local."""
    require_triton()
    assert cli.main(["export", "onnx", str(bundled_model()), "--out", str(tmp_path / "onnx"), "--repository",
                     str(tmp_path / "repository"), "--parity-samples", "1"]) == 0
    maps = np.stack([render(sample_seed(VALIDATION_SEED, index), demo.SIZE)[0] for index in range(3)])
    with torch.inference_mode():
        local = tensor_to_rgb(bundled(to_semantic_input(maps, None, bundled.config)))
    with TritonServer(tmp_path / "repository", log_file=tmp_path / "server.log") as server, \
            SpadeClient(server.grpc_url) as client:
        served = client.synthesize(maps)
    assert served.shape == local.shape and np.abs(served.astype(int) - local.astype(int)).max() <= 1
