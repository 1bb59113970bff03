"""The demo writes its checkpoint, label maps, previews and the images `spade-deploy synthesize` makes of them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spade_deploy import demo
from spade_deploy.checkpoint import load_generator
from spade_deploy.images import read_rgb, tensor_to_rgb
from spade_deploy.labels import colorize, read_label_png, read_png, to_semantic_input


def test_demo_outputs_agree_with_each_other(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert demo.main(["--out", str(tmp_path), "--maps", "2", "--size", "64"]) == 0
    printed = capsys.readouterr().out
    for name in ("generator.pth", "labels", "previews", "images", "overview.png"):
        assert str(tmp_path / name) in printed
    generator = load_generator(tmp_path / "generator.pth")
    config = generator.config
    assert (config.preset, config.semantic_nc, config.image_size) == ("ade20k", 151, (64, 64))
    for name in ("map_00.png", "map_01.png"):
        raw = read_png(tmp_path / "labels" / name)
        assert raw.dtype == np.uint8 and raw.max() <= 150  # ADE20K's raw encoding: 0 = unlabelled, 1..150
        labels = read_label_png(tmp_path / "labels" / name, config)
        assert len(np.unique(labels)) >= 5
        assert np.array_equal(read_rgb(tmp_path / "previews" / name), colorize(labels, config))
        with torch.inference_mode():
            image = tensor_to_rgb(generator(to_semantic_input(labels, None, config)))[0]
        assert np.array_equal(read_rgb(tmp_path / "images" / name), image)
    assert read_rgb(tmp_path / "overview.png").shape == (128, 128, 3)  # two rows of preview | image


@pytest.mark.parametrize("args, message", [(["--maps", "0"], "--maps must be at least 1"),
                                           (["--size", "100"], "--size must be a positive multiple of 32")])
def test_demo_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                  message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--out", str(tmp_path), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
