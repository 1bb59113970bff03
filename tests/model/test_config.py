"""Generator and encoder configs: the official presets, derived sizes, and refusal of impossible settings."""
from __future__ import annotations

import pytest

from spade_deploy.model.config import EncoderConfig, GeneratorConfig, generator_preset


@pytest.mark.parametrize("preset, semantic_nc, image_size, latent", [
    ("ade20k", 151, (256, 256), (8, 8)),
    ("coco", 184, (256, 256), (8, 8)),
    ("cityscapes", 36, (256, 512), (4, 8)),  # 'more': 512 // 2**6 = 8 wide, round(8 / 2) = 4 high
])
def test_official_presets(preset: str, semantic_nc: int, image_size: tuple[int, int],
                          latent: tuple[int, int]) -> None:
    config = generator_preset(preset)
    assert config.preset == preset and config.semantic_nc == semantic_nc and config.image_size == image_size
    assert (config.latent_height, config.latent_width) == latent


def test_custom_preset_takes_overrides_and_round_trips_through_a_dict() -> None:
    config = generator_preset("custom", label_nc=10, use_instance=True, num_upsampling_layers="most", crop_size=512)
    assert (config.semantic_nc, config.num_upsamplings, config.image_size) == (11, 7, (512, 512))
    assert GeneratorConfig.from_dict(config.to_dict()) == config
    encoder = EncoderConfig.for_crop_size(128, ngf=16)
    assert (encoder.num_layers, encoder.final_size) == (5, 8)
    assert EncoderConfig.from_dict(encoder.to_dict()) == encoder


@pytest.mark.parametrize("make, message", [
    (lambda: generator_preset("pascal"), r"unknown preset 'pascal'; expected one of \['ade20k', 'cityscapes', "
                                         r"'coco', 'custom'\]"),
    (lambda: generator_preset("custom"), r"preset 'custom' needs label_nc"),
    (lambda: GeneratorConfig(norm="group"), r"norm must be one of \['batch', 'syncbatch', 'instance'\], got 'group'"),
    (lambda: GeneratorConfig(num_upsampling_layers="many"), r"num_upsampling_layers must be one of"),
    (lambda: GeneratorConfig(ngf=0), r"ngf must be a positive integer, got 0"),
    (lambda: GeneratorConfig(label_nc=True), r"label_nc must be a positive integer, got True"),
    (lambda: GeneratorConfig(spade_kernel=4), r"spade_kernel must be a positive odd number, got 4"),
    (lambda: GeneratorConfig(aspect_ratio=0), r"aspect_ratio must be a finite positive number, got 0"),
    (lambda: GeneratorConfig(aspect_ratio=float("nan")), r"aspect_ratio must be a finite positive number, got nan"),
    (lambda: GeneratorConfig(use_vae="yes"), r"use_vae must be True or False, got 'yes'"),
    (lambda: GeneratorConfig().replace(bogus=1), r"unknown GeneratorConfig fields \['bogus'\]; known fields"),
    (lambda: GeneratorConfig(ngf=7, num_upsampling_layers="most"), r"'most' needs an even ngf"),
    (lambda: GeneratorConfig(crop_size=16), r"crop_size must be at least 32"),
    (lambda: GeneratorConfig(crop_size=64, aspect_ratio=8.0), r"leaves an empty latent grid \(0x2\)"),
    (lambda: GeneratorConfig.from_dict({"label_nc": 3, "ngf_typo": 8}), r"unknown GeneratorConfig fields "
                                                                         r"\['ngf_typo'\]"),
    (lambda: EncoderConfig(num_layers=7), r"encoder num_layers must be 5 or 6, got 7"),
])
def test_impossible_configs_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
