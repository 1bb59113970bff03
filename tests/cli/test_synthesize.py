"""`spade-deploy synthesize` end to end: exact images for every latent source, and a one-line error with exit
status 2 for every bad input."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from spade_deploy import cli
from spade_deploy.model import memory
from spade_deploy.model.checkpoint import load_encoder, load_generator, save_encoder, save_generator
from spade_deploy.model.config import EncoderConfig, GeneratorConfig, generator_preset
from spade_deploy.model.images import read_rgb, write_rgb
from spade_deploy.model.tensors import rgb_to_tensor, tensor_to_rgb
from spade_deploy.model.labels import read_label_png, read_png, write_instance_png, write_label_png
from spade_deploy.model.tensors import to_semantic_input
from spade_deploy.model.tensors import encode_style, sample_z
from spade_deploy.model.synthetic import random_encoder, random_generator, synthetic_label_map
from tests.official import official_state_dict, save_official

ADE = generator_preset("ade20k", ngf=8, crop_size=64, spade_hidden=16)  # segmap, raw PNG 0 = unlabelled
VAE = GeneratorConfig(label_nc=4, use_instance=True, use_vae=True, ngf=8, crop_size=64, spade_hidden=16)


@dataclass(frozen=True)
class Workspace:
    root: Path
    ade: Path  # our checkpoint of the ADE20K-layout segmap generator
    vae: Path  # our checkpoint of the VAE generator with instance edges
    encoder: Path
    style: Path
    ade_labels: list[Path]  # 64x64 and 32x96: a segmap generator takes any multiple of 32
    vae_labels: list[Path]
    vae_instances: list[Path]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    save_generator(random_generator(ADE, seed=1, calibration_batches=1), root / "ade.pth")
    save_generator(random_generator(VAE, seed=2, calibration_batches=1), root / "vae.pth")
    save_encoder(random_encoder(EncoderConfig(ngf=4, num_layers=5), seed=3), root / "encoder.pth")
    write_rgb(root / "style.png", np.random.default_rng(0).integers(0, 256, (48, 80, 3)).astype(np.uint8))
    (root / "in").mkdir()
    ade_labels = []
    for index, (height, width) in enumerate(((64, 64), (32, 96))):
        ade_labels.append(root / "in" / f"ade_{index}.png")
        write_label_png(ade_labels[-1], synthetic_label_map(height, width, num_regions=12, num_classes=151,
                                                            seed=index), ADE)
    vae_labels, vae_instances = [], []
    for index in range(2):
        labels = synthetic_label_map(64, 64, num_regions=10, num_classes=4, seed=10 + index)
        vae_labels.append(root / "in" / f"vae_{index}.png")
        vae_instances.append(root / "in" / f"vae_{index}_instances.png")
        write_label_png(vae_labels[-1], labels, VAE)
        write_instance_png(vae_instances[-1], labels * 1000 + np.arange(64)[None, :] // 20)  # 16-bit ids
    return Workspace(root, root / "ade.pth", root / "vae.pth", root / "encoder.pth", root / "style.png",
                     ade_labels, vae_labels, vae_instances)


def expected_images(checkpoint: Path, labels: list[Path], instances: list[Path] | None = None,
                    z: torch.Tensor | None = None, **load: str) -> list[np.ndarray]:
    """What synthesize must write, computed directly with the library."""
    generator = load_generator(checkpoint, **load)
    images = []
    for index, path in enumerate(labels):
        semantic = to_semantic_input(read_label_png(path, generator.config),
                                     read_png(instances[index]) if instances else None, generator.config)
        with torch.inference_mode():
            images.append(tensor_to_rgb(generator(semantic, z))[0])
    return images


def written(out: Path, labels: list[Path]) -> list[np.ndarray]:
    return [read_rgb(out / path.name) for path in labels]


def test_synthesize_writes_one_exact_image_per_label_map(workspace: Workspace, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    status = cli.main(["synthesize", "--checkpoint", str(workspace.ade), "--labels",
                       *map(str, workspace.ade_labels), "--out", str(tmp_path / "out")])
    assert status == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 images to {tmp_path / 'out'}"
    images = written(tmp_path / "out", workspace.ade_labels)
    assert [image.shape for image in images] == [(64, 64, 3), (32, 96, 3)]
    expected = expected_images(workspace.ade, workspace.ade_labels)
    assert all(np.array_equal(image, want) for image, want in zip(images, expected))
    assert all(float(image.std()) > 10 for image in images)  # not a flat image


@pytest.mark.parametrize("latent_args", [[], ["--seed", "5"], ["style"], ["style", "--seed", "2"]],
                         ids=["default-seed-0", "seed", "style-mean", "style-sample"])
def test_vae_latent_sources(workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture,
                            latent_args: list[str]) -> None:
    style = latent_args[:1] == ["style"]
    seed = int(latent_args[-1]) if "--seed" in latent_args else None
    args = (["--encoder", str(workspace.encoder), "--style", str(workspace.style)] if style else []) + (
        ["--seed", str(seed)] if seed is not None else [])
    status = cli.main(["synthesize", "--checkpoint", str(workspace.vae), "--labels", *map(str, workspace.vae_labels),
                       "--instances", *map(str, workspace.vae_instances), "--out", str(tmp_path), *args])
    assert status == 0
    if style:
        z = encode_style(load_encoder(workspace.encoder), rgb_to_tensor(read_rgb(workspace.style)), seed=seed)
    else:
        z = sample_z(1, VAE.z_dim, 0 if seed is None else seed)
    assert ("without --style or --seed it is drawn with seed 0" in capsys.readouterr().err) == (not args)
    expected = expected_images(workspace.vae, workspace.vae_labels, workspace.vae_instances, z)
    assert all(np.array_equal(image, want) for image, want in zip(written(tmp_path, workspace.vae_labels), expected))
    if args:  # the latent matters: seed 0 gives other images
        seed_0 = expected_images(workspace.vae, workspace.vae_labels[:1], workspace.vae_instances[:1],
                                 sample_z(1, VAE.z_dim, 0))
        assert not np.array_equal(expected[0], seed_0[0])


def test_official_checkpoint_with_preset(workspace: Workspace, tmp_path: Path) -> None:
    path = save_official(official_state_dict(load_generator(workspace.ade), seed=4), tmp_path / "official")
    status = cli.main(["synthesize", "--checkpoint", str(path), "--preset", "ade20k", "--labels",
                       str(workspace.ade_labels[0]), "--out", str(tmp_path / "out")])
    assert status == 0
    expected = expected_images(path, workspace.ade_labels[:1], preset="ade20k")
    assert np.array_equal(written(tmp_path / "out", workspace.ade_labels[:1])[0], expected[0])


def file_with(root: Path, name: str, write: Callable[[Path], object]) -> str:
    path = root / "bad" / name
    path.parent.mkdir(exist_ok=True)
    write(path)
    return str(path)


def ade_args(ws: Workspace, *labels: str) -> list[str]:
    return ["--checkpoint", str(ws.ade), "--labels", *labels]


def vae_args(ws: Workspace) -> list[str]:
    return ["--checkpoint", str(ws.vae), "--labels", *map(str, ws.vae_labels)]


BAD_INPUTS: dict[str, tuple[Callable[[Workspace], list[str]], str]] = {
    "missing label file": (lambda ws: ade_args(ws, str(ws.root / "nowhere.png")), r"no such file: .*nowhere\.png"),
    "label folder": (lambda ws: ade_args(ws, str(ws.ade_labels[0].parent)), r"is a folder; expected an image file"),
    "preset against our checkpoint": (lambda ws: ade_args(ws, str(ws.ade_labels[0])) + ["--preset", "coco"],
                                      r"is a spade-deploy checkpoint, which carries its own config, and preset "
                                      r"'coco' contradicts it \(label_nc 150, the preset's 182.*leave it out"),
    "rgb label map": (lambda ws: ade_args(ws, file_with(ws.root, "rgb.png", lambda p: Image.fromarray(
        np.zeros((64, 64, 3), np.uint8)).save(p))), r"rgb\.png is an image of mode RGB; a label or instance map"),
    "label out of range": (lambda ws: ade_args(ws, file_with(ws.root, "ade_200.png", lambda p: Image.fromarray(
        np.full((64, 64), 200, np.uint8)).save(p))), r"ade_200\.png: labels must lie in \[0, 150\]"),
    "size not a multiple of 32": (lambda ws: ade_args(ws, file_with(ws.root, "odd.png", lambda p: Image.fromarray(
        np.ones((48, 64), np.uint8)).save(p))), r"odd\.png: label map is 48x64; both sides must be positive "
                                                r"multiples of 32"),
    "style without encoder": (lambda ws: ade_args(ws, str(ws.ade_labels[0])) + ["--style", str(ws.style)],
                              r"--style and --encoder go together"),
    "encoder for a segmap model": (lambda ws: ade_args(ws, str(ws.ade_labels[0])) + [
        "--style", str(ws.style), "--encoder", str(ws.encoder)], r"--encoder, --style: this generator is not a VAE "
                                                                 r"\(it takes no latent z\); drop them"),
    "seed for a segmap model": (lambda ws: ade_args(ws, str(ws.ade_labels[0])) + ["--seed", "1"],
                                r"--seed: this generator is not a VAE .* drop it"),
    "not a checkpoint": (lambda ws: ["--checkpoint", file_with(ws.root, "g.pth", lambda p: p.write_text("hello")),
                                     "--labels", str(ws.ade_labels[0])], r"is not a readable PyTorch checkpoint"),
    "encoder as generator": (lambda ws: ["--checkpoint", str(ws.encoder), "--labels", str(ws.ade_labels[0])],
                             r"is a spade-deploy checkpoint that holds no generator; it holds \['encoder'\]"),
    "generator as encoder": (lambda ws: vae_args(ws) + ["--instances", *map(str, ws.vae_instances), "--encoder",
                                                        str(ws.vae), "--style", str(ws.style)],
                             r"that holds no encoder; it holds \['generator'\]"),
    "missing style image": (lambda ws: vae_args(ws) + ["--instances", *map(str, ws.vae_instances), "--encoder",
                                                       str(ws.encoder), "--style", str(ws.root / "none.jpg")],
                            r"no such file: .*none\.jpg"),
    "instances missing": (vae_args, r"this model uses instance edges: pass --instances, one instance-id PNG per "
                                    r"label map"),
    "instances not used": (lambda ws: ade_args(ws, str(ws.ade_labels[0])) + ["--instances", str(ws.vae_instances[0])],
                           r"this model takes no instance maps \(use_instance=False\): drop --instances"),
    "instance count": (lambda ws: vae_args(ws) + ["--instances", str(ws.vae_instances[0])],
                       r"--instances gives 1 maps for 2 --labels; give one per label map"),
    "instance size": (lambda ws: vae_args(ws)[:4] + ["--instances", file_with(
        ws.root, "small_instances.png", lambda p: write_instance_png(p, np.zeros((32, 64), np.uint16)))],
                      r"small_instances\.png: instance map is 32x64, but its label map .*vae_0\.png is 64x64; they "
                      r"must be the same size"),
    "vae label size": (lambda ws: ["--checkpoint", str(ws.vae), "--labels", file_with(
        ws.root, "big.png", lambda p: Image.fromarray(np.zeros((128, 128), np.uint8)).save(p)), "--instances",
        file_with(ws.root, "big_instances.png", lambda p: write_instance_png(p, np.zeros((128, 128), np.uint16)))],
                       r"big\.png: label map is 128x128, but this VAE generator's latent grid fixes its output at "
                       r"64x64"),
    "two maps, one output": (lambda ws: ade_args(ws, str(ws.ade_labels[0]), file_with(
        ws.root, "ade_0.png", lambda p: shutil.copy(ws.ade_labels[0], p))), r"would both be written to "
                                                                            r".*ade_0\.png; rename one"),
    # The largest map decides: 32x96 (3072 px) needs less than 64x64 (4096 px).
    "memory limit": (lambda ws: ade_args(ws, *map(str, ws.ade_labels[::-1])) + ["--memory-limit", "1MiB"],
                     r"ade_0\.png: synthesizing this 64x64 label map needs about [\d.]+ MiB of memory \(estimate for "
                     r"this generator\), above the limit of 1\.0 MiB \(--memory-limit\); use smaller label maps "
                     r"\(split this one into tiles and synthesize them one by one\), or raise --memory-limit"),
    "memory limit with a server": (lambda ws: ["--server", "127.0.0.1:1", "--labels", str(ws.ade_labels[0]),
                                               "--memory-limit", "8GiB"],
                                   r"--memory-limit bounds synthesis in this process; a server has its own "
                                   r"per-request budget \(spade-deploy export --max-request-memory\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_status_2(workspace: Workspace, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture, case: str) -> None:
    make_args, message = BAD_INPUTS[case]
    status = cli.main(["synthesize", *make_args(workspace), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spade-deploy synthesize: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()  # every input is checked before anything is written


def test_default_memory_limit_is_a_share_of_the_available_memory(workspace: Workspace, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_generator(workspace.ade).config
    im2col = not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    needed = memory.generator_bytes(config, 1, 64, 64, im2col=im2col)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(needed / memory.DEFAULT_LIMIT_FRACTION) - 2 ** 20)
    status = cli.main(["synthesize", *ade_args(workspace, str(workspace.ade_labels[0])), "--out", str(tmp_path / "a")])
    assert status == 2 and not (tmp_path / "a").exists()
    assert (f"above the limit of {memory.format_bytes(int(memory.available_bytes() * memory.DEFAULT_LIMIT_FRACTION))}"
            f" (the default: 80% of the {memory.format_bytes(memory.available_bytes())} available now)"
            in capsys.readouterr().err)
    monkeypatch.setattr(memory, "available_bytes", lambda: int(needed / memory.DEFAULT_LIMIT_FRACTION) + 2 ** 20)
    assert cli.main(["synthesize", *ade_args(workspace, str(workspace.ade_labels[0])), "--out",
                     str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "ade_0.png").is_file()


def test_output_never_overwrites_an_input(workspace: Workspace, capsys: pytest.CaptureFixture) -> None:
    before = workspace.ade_labels[0].read_bytes()
    status = cli.main(["synthesize", *ade_args(workspace, str(workspace.ade_labels[0])), "--out",
                       str(workspace.ade_labels[0].parent)])
    assert status == 2
    assert "ade_0.png is an input and would be overwritten; choose another --out" in capsys.readouterr().err
    assert workspace.ade_labels[0].read_bytes() == before


def test_output_paths_are_checked_before_any_image_is_written(workspace: Workspace, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """--out a file, or one map's output an existing folder: refused before the first image, nothing written."""
    (tmp_path / "file").write_text("keep")
    assert cli.main(["synthesize", *ade_args(workspace, str(workspace.ade_labels[0])), "--out",
                     str(tmp_path / "file")]) == 2
    assert "--out " + str(tmp_path / "file") + " is a file; expected a folder" in capsys.readouterr().err
    out = tmp_path / "out"
    (out / workspace.ade_labels[1].name).mkdir(parents=True)
    assert cli.main(["synthesize", *ade_args(workspace, *map(str, workspace.ade_labels)), "--out", str(out)]) == 2
    assert f"{workspace.ade_labels[1].name}, the output of" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == [workspace.ade_labels[1].name]  # nothing written


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synthesize", "--checkpoint", "g.pth"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --labels, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["synthesize", "--labels", "a.png", "--out", "o", "--memory-limit", "lots"])
    assert exit_info.value.code == 2
    assert "argument --memory-limit: expected a memory size such as 8GiB" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "synthesize" in capsys.readouterr().out


def test_console_script(workspace: Workspace, tmp_path: Path) -> None:
    script = shutil.which("spade-deploy", path=str(Path(sys.executable).parent))
    assert script, "the spade-deploy console script is not installed (pip install -e .)"
    ok = subprocess.run([script, "synthesize", "--checkpoint", str(workspace.ade), "--labels",
                         str(workspace.ade_labels[1]), "--out", str(tmp_path)], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert np.array_equal(read_rgb(tmp_path / "ade_1.png"), expected_images(workspace.ade, workspace.ade_labels[1:])[0])
    bad = subprocess.run([script, "synthesize", "--checkpoint", str(workspace.ade), "--labels",
                          str(tmp_path / "nowhere.png"), "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"spade-deploy synthesize: error: no such file: "
                                               f"{tmp_path / 'nowhere.png'}"]
