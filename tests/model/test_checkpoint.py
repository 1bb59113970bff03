"""Loading official NVlabs/SPADE state dicts and our own checkpoints; every way a checkpoint can be wrong."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spade_deploy.model.checkpoint import (FORMAT, CheckpointError, load_encoder, load_generator, save_encoder,
                                     save_generator, write_checkpoint)
from spade_deploy.model.config import EncoderConfig, GeneratorConfig, generator_preset
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.synthetic import random_encoder, random_generator
from tests.official import (official_encoder_forward, official_generator_forward, official_options,
                            official_state_dict, save_official, write_opt_txt)
from tests.fixtures.models import TINY, Variant

TOLERANCE = 1e-5  # max |delta| against the official functional forward


def run(generator: SPADEGenerator, variant: Variant) -> torch.Tensor:
    with torch.inference_mode():
        return generator(variant.semantic, variant.z)


def hints(config: GeneratorConfig) -> dict:
    """What an official state dict cannot tell: the label layout, and the upsampling mode of a segmap generator
    (a VAE generator's follows from its fc once the crop size is known)."""
    given = dict(label_nc=config.label_nc, contain_dontcare_label=config.contain_dontcare_label,
                 use_instance=config.use_instance)
    if config.use_vae:
        given["crop_size"] = config.crop_size
    else:
        given["num_upsampling_layers"] = config.num_upsampling_layers
    return given


# ----------------------------------------------------------------------------------------- official checkpoints

def test_official_checkpoint_with_opt_txt_loads_unchanged(variant: Variant, tmp_path: Path) -> None:
    generator = load_generator(variant.write_official(tmp_path, with_opt_txt=True))
    assert not generator.training
    assert generator.config == variant.config
    # The stored u, v and statistics are used as they are: no power iteration, no re-estimation.
    for key, value in generator.state_dict().items():
        assert torch.equal(value, variant.state[key]), key
    assert (run(generator, variant) - variant.reference).abs().max().item() <= TOLERANCE


def test_config_is_inferred_from_the_tensors(variant: Variant, tmp_path: Path) -> None:
    generator = load_generator(variant.write_official(tmp_path, with_opt_txt=False), **hints(variant.config))
    config, expected = generator.config, variant.config
    assert (config.ngf, config.use_vae, config.spectral, config.spade_hidden, config.spade_kernel) == (
        expected.ngf, expected.use_vae, expected.spectral, expected.spade_hidden, expected.spade_kernel)
    assert config.num_upsampling_layers == expected.num_upsampling_layers
    # Batch and synchronized batch norm store the same tensors and agree in eval; instance norm stores none.
    assert (config.norm == "instance") == (expected.norm == "instance")
    if expected.use_vae:
        assert (config.z_dim, config.latent_height, config.latent_width, config.image_size) == (
            expected.z_dim, expected.latent_height, expected.latent_width, expected.image_size)
    assert (run(generator, variant) - variant.reference).abs().max().item() <= TOLERANCE


def tiny_official(tmp_path: Path, seed: int = 0, **fields) -> tuple[GeneratorConfig, Path]:
    config = GeneratorConfig(**{**TINY, "label_nc": 4, **fields})
    return config, save_official(official_state_dict(SPADEGenerator(config), seed), tmp_path)


def test_segmap_upsampling_mode_comes_from_the_override(tmp_path: Path) -> None:
    """`more` and `normal` segmap generators have the same tensors: only opt.txt or an override can tell."""
    config = GeneratorConfig(**{**TINY, "crop_size": 128}, label_nc=4, num_upsampling_layers="more")
    state = official_state_dict(random_generator(config, calibration_batches=1), seed=1)
    path = save_official(state, tmp_path)
    semantic = torch.nn.functional.one_hot(torch.arange(128 * 128).reshape(1, 128, 128) // 700 % 4, 4)
    semantic = semantic.permute(0, 3, 1, 2).float()
    with torch.no_grad():
        reference = official_generator_forward(state, semantic, None, official_options(config))
    normal = load_generator(path, label_nc=4)
    more = load_generator(path, label_nc=4, num_upsampling_layers="more")
    assert (normal.config.num_upsampling_layers, more.config.num_upsampling_layers) == ("normal", "more")
    with torch.inference_mode():
        assert (more(semantic) - reference).abs().max().item() <= TOLERANCE
        assert (normal(semantic) - reference).abs().max().item() > 0.01


def test_vae_latent_grid_gives_size_and_aspect(tmp_path: Path) -> None:
    _, path = tiny_official(tmp_path, use_vae=True, crop_size=128, aspect_ratio=2.0, num_upsampling_layers="more")
    alone = load_generator(path).config  # fc holds 16*ngf*1*2 outputs: a 1x2 grid, width >= height assumed
    assert (alone.latent_height, alone.latent_width, alone.aspect_ratio) == (1, 2, 2.0)
    assert (alone.num_upsampling_layers, alone.image_size) == ("normal", (32, 64))
    with_crop = load_generator(path, crop_size=128).config
    assert (with_crop.num_upsampling_layers, with_crop.image_size) == ("more", (64, 128))
    tall = load_generator(path, aspect_ratio=0.5).config
    assert (tall.latent_height, tall.latent_width, tall.image_size) == (2, 1, (64, 32))


def test_preset_size_gives_way_to_the_vae_grid(tmp_path: Path) -> None:
    """A preset's size is a default: a VAE's fc fixes its latent grid, so a 64 px ADE20K-layout VAE loads with
    preset="ade20k" at 64 px; where the grid allows the preset's aspect ratio (Cityscapes 2:1), it is taken."""
    _, path = tiny_official(tmp_path / "ade", use_vae=True, label_nc=150, contain_dontcare_label=True)
    config = load_generator(path, preset="ade20k").config
    assert (config.preset, config.image_size, config.num_upsampling_layers) == ("ade20k", (64, 64), "normal")
    _, path = tiny_official(tmp_path / "city", use_vae=True, label_nc=35, use_instance=True, crop_size=128,
                            aspect_ratio=2.0, num_upsampling_layers="more")  # a 1x2 grid
    config = load_generator(path, preset="cityscapes").config
    assert (config.image_size, config.num_upsampling_layers) == ((64, 128), "more")


def test_most_instance_norm_and_encoder_depth_come_from_the_tensors(tmp_path: Path) -> None:
    _, path = tiny_official(tmp_path / "g", crop_size=128, num_upsampling_layers="most", norm="instance")
    config = load_generator(path).config
    assert (config.num_upsampling_layers, config.norm) == ("most", "instance")
    for layers, spectral in ((5, False), (6, True)):
        encoder_path = save_official(official_state_dict(ConvEncoder(EncoderConfig(ngf=4, num_layers=layers,
                                                                                     spectral=spectral)), 0),
                                     tmp_path / f"e{layers}", "latest_net_E.pth")
        assert load_encoder(encoder_path).config == EncoderConfig(ngf=4, num_layers=layers, spectral=spectral)


def test_official_preset_is_recognised_by_its_channel_count(tmp_path: Path) -> None:
    # 151 input channels: ADE20K's 150 classes + don't-care, no instance edges.
    _, path = tiny_official(tmp_path, label_nc=150, contain_dontcare_label=True)
    with pytest.warns(UserWarning, match="151 input channels match the official 'ade20k' preset"):
        config = load_generator(path).config
    assert (config.preset, config.label_nc, config.contain_dontcare_label, config.use_instance) == (
        "ade20k", 150, True, False)
    assert load_generator(path, preset="ade20k").config.preset == "ade20k"  # told, so no warning


def test_official_encoder_loads_unchanged(tmp_path: Path) -> None:
    config = EncoderConfig(ngf=4, num_layers=6)
    state = official_state_dict(random_encoder(config, seed=2), seed=2)
    path = save_official(state, tmp_path, "latest_net_E.pth")
    write_opt_txt(tmp_path, {"ngf": 4, "crop_size": 256})
    encoder = load_encoder(path)
    assert encoder.config == config and not encoder.training
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        mu, logvar = encoder(image)
        ref_mu, ref_logvar = official_encoder_forward(state, image, {"crop_size": 256})
    assert (mu - ref_mu).abs().max().item() <= TOLERANCE
    assert (logvar - ref_logvar).abs().max().item() <= TOLERANCE


# --------------------------------------------------------------------------------------------- own checkpoints

def test_own_generator_checkpoint_round_trip_is_lossless(variant: Variant, tmp_path: Path) -> None:
    generator = SPADEGenerator(variant.config)
    generator.load_state_dict(variant.state)
    save_generator(generator, tmp_path / "first.pth")
    first = load_generator(tmp_path / "first.pth")
    save_generator(first, tmp_path / "second.pth")
    second = load_generator(tmp_path / "second.pth")
    assert first.config == second.config == variant.config
    for key, value in variant.state.items():
        assert torch.equal(first.state_dict()[key], value) and torch.equal(second.state_dict()[key], value), key
    assert torch.equal(run(second, variant), run(generator.eval(), variant))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.pth", "second.pth"]  # no temporary left


def test_own_encoder_checkpoint_round_trip_is_lossless(tmp_path: Path) -> None:
    encoder = random_encoder(EncoderConfig(ngf=4, num_layers=5, spectral=False), seed=1)
    save_encoder(encoder, tmp_path / "e.pth")
    loaded = load_encoder(tmp_path / "e.pth")
    save_encoder(loaded, tmp_path / "e2.pth")
    again = load_encoder(tmp_path / "e2.pth")
    assert loaded.config == again.config == encoder.config
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(encoder(image), again(image)))


def test_own_checkpoint_is_versioned_and_loads_without_unpickling_code(tmp_path: Path) -> None:
    config = GeneratorConfig(**TINY, label_nc=3)
    save_generator(SPADEGenerator(config), tmp_path / "g.pth")
    payload = torch.load(tmp_path / "g.pth", weights_only=True)
    assert (payload["format"], payload["format_version"], payload["generator"]["config"]) == (
        FORMAT, 1, config.to_dict())


# ----------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("overrides, message", [
    (dict(ngf=16), r"ngf=16 contradicts the weights, which give ngf=8"),
    (dict(norm="instance"), r"norm='instance' contradicts the weights: they hold batch-norm running statistics"),
    (dict(num_upsampling_layers="most"), r"'most' contradicts the weights: they have no up_4 block"),
    (dict(use_vae=True), r"use_vae=True contradicts the weights, which give use_vae=False"),
    (dict(spectral=False), r"spectral=False contradicts the weights, which give spectral=True"),
    (dict(preset="coco"), r"label_nc=182 \+ contain_dontcare_label=True \+ use_instance=True gives 184 input "
                          r"channels, but the weights take 4"),
    (dict(label_nc=4, use_instance=True), r"gives 5 input channels, but the weights take 4"),
])
def test_config_contradicting_the_weights_is_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    _, path = tiny_official(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_generator(path, **overrides)


def test_opt_txt_contradicting_the_weights_is_refused(tmp_path: Path) -> None:
    config, path = tiny_official(tmp_path)
    write_opt_txt(tmp_path, {**official_options(config), "ngf": 64})
    with pytest.raises(CheckpointError, match=r"ngf=64 contradicts the weights, which give ngf=8"):
        load_generator(path)


@pytest.mark.parametrize("overrides, message", [
    (dict(crop_size=100), r"crop_size=100 contradicts the weights: the VAE latent grid is 2x2"),
    (dict(crop_size=256, num_upsampling_layers="normal"), r"crop_size=256 with num_upsampling_layers='normal' "
                                                          r"contradicts the weights: .* giving width 64"),
    (dict(aspect_ratio=0.3), r"aspect_ratio=0.3 contradicts the weights: the VAE fc has 4 latent positions"),
])
def test_vae_size_contradicting_the_fc_is_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    _, path = tiny_official(tmp_path, use_vae=True)
    with pytest.raises(CheckpointError, match=message):
        load_generator(path, **overrides)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    config = GeneratorConfig(**TINY, label_nc=4)
    state = official_state_dict(SPADEGenerator(config), 0)
    del state["up_1.conv_0.bias"], state["G_middle_0.norm_1.mlp_beta.weight"]
    state["up_9.conv_0.bias"] = torch.zeros(8)
    with pytest.raises(CheckpointError) as error:
        load_generator(save_official(state, tmp_path), label_nc=4)
    assert "missing keys (2): G_middle_0.norm_1.mlp_beta.weight, up_1.conv_0.bias" in str(error.value)
    assert "unexpected keys (1): up_9.conv_0.bias" in str(error.value)


def test_shape_mismatch_names_key_expected_and_found(tmp_path: Path) -> None:
    config = GeneratorConfig(**TINY, label_nc=4)
    state = official_state_dict(SPADEGenerator(config), 0)
    state["up_1.conv_0.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): up_1\.conv_0\.bias: expected \[32\], "
                                              r"found \[5\]"):
        load_generator(save_official(state, tmp_path), label_nc=4)


def test_own_checkpoint_with_contradicting_override_is_refused(tmp_path: Path) -> None:
    save_generator(SPADEGenerator(GeneratorConfig(**TINY, label_nc=4)), tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*head_0\.conv_0\.weight_orig: expected "
                                              r"\[256, 256, 3, 3\], found \[128, 128, 3, 3\]"):
        load_generator(tmp_path / "g.pth", ngf=16)


def test_state_dict_without_the_tensors_that_define_it_is_refused(tmp_path: Path) -> None:
    state = official_state_dict(SPADEGenerator(GeneratorConfig(**TINY, label_nc=4)), 0)
    del state["fc.weight"]
    with pytest.raises(CheckpointError, match=r"lacks \['fc.weight'\], which determine its configuration"):
        load_generator(save_official(state, tmp_path))


@pytest.mark.parametrize("content, message", [
    ("text", r"is not a readable PyTorch checkpoint: .*the file is damaged or not a checkpoint"),
    ("other text", r"is not a readable PyTorch checkpoint: it is not a file torch.save writes \(KeyError: \d+\); "
                   r"the file is damaged or not a checkpoint"),
    ("folder", r"latest_net_G.pth is a folder; expected a checkpoint file \(.pth\)"),
    ("list", r"holds a list, not a checkpoint dict or state dict"),
    ("pickled object", r"is not a readable PyTorch checkpoint: it holds a Python object \(argparse.Namespace\)"),
    ("random bytes", r"is not a readable PyTorch checkpoint: its bytes are not the pickle data torch.save writes"),
    ("other model", r"is a state dict, but not of a SPADE generator or encoder"),
    ("mixed dict", r"neither a spade-deploy checkpoint nor a state dict of tensors"),
    ("newer format", r"has format version 2; this spade-deploy reads up to version 1: upgrade spade-deploy"),
])
def test_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "latest_net_G.pth"
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "other text":
        path.write_text("hi\n")
    elif content == "folder":
        path.mkdir()
    elif content == "random bytes":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    elif content == "newer format":
        write_checkpoint({}, path)
        payload = torch.load(path, weights_only=True)
        torch.save({**payload, "format_version": 2}, path)
    else:
        torch.save({"list": [1, 2], "pickled object": {"opt": argparse.Namespace(ngf=64)},
                    "other model": nn.Linear(2, 2).state_dict(),
                    "mixed dict": {"weight": torch.zeros(1), "epoch": 3}}[content], path)
    with pytest.raises(CheckpointError, match=message) as refused:
        load_generator(path)
    assert "weights_only" not in str(refused.value)  # never advise loading code from a file


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nowhere.pth"):
        load_generator(tmp_path / "nowhere.pth")


def test_generator_and_encoder_files_are_not_interchangeable(tmp_path: Path) -> None:
    generator = SPADEGenerator(GeneratorConfig(**TINY, label_nc=4))
    encoder = ConvEncoder(EncoderConfig(ngf=4))
    official_g = save_official(official_state_dict(generator, 0), tmp_path / "official")
    official_e = save_official(official_state_dict(encoder, 0), tmp_path / "official", "latest_net_E.pth")
    save_generator(generator, tmp_path / "g.pth")
    save_encoder(encoder, tmp_path / "e.pth")
    with pytest.raises(CheckpointError, match=r"is a SPADE generator state dict, not an? encoder; use load_generator"):
        load_encoder(official_g)
    with pytest.raises(CheckpointError, match=r"is a SPADE encoder state dict, not a generator; use load_encoder"):
        load_generator(official_e)
    with pytest.raises(CheckpointError, match=r"is a spade-deploy checkpoint that holds no encoder; it holds "
                                              r"\['generator'\]"):
        load_encoder(tmp_path / "g.pth")
    with pytest.raises(CheckpointError, match=r"that holds no generator; it holds \['encoder'\]"):
        load_generator(tmp_path / "e.pth")


def test_preset_given_for_own_checkpoint_must_fit_its_config(tmp_path: Path) -> None:
    """Our checkpoints carry their config: a preset that agrees is taken (its size gives way to the stored one), one
    that contradicts the label layout is refused by name, not by 19 shape mismatches."""
    config = generator_preset("coco", ngf=8, crop_size=64, spade_hidden=16)
    save_generator(SPADEGenerator(config), tmp_path / "g.pth")
    loaded = load_generator(tmp_path / "g.pth", preset="coco").config
    assert (loaded.label_nc, loaded.crop_size) == (182, 64)
    with pytest.raises(CheckpointError, match=r"g.pth is a spade-deploy checkpoint, which carries its own config, and "
                                              r"preset 'cityscapes' contradicts it \(label_nc 182, the preset's 35; "
                                              r"contain_dontcare_label True, the preset's False.*leave it out"):
        load_generator(tmp_path / "g.pth", preset="cityscapes")
