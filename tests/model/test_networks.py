"""SPADEGenerator and ConvEncoder against an independent functional statement of the official eval forward."""
from __future__ import annotations

import pytest
import torch

from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.synthetic import random_encoder
from tests.official import official_encoder_forward, official_state_dict
from tests.fixtures.models import TINY, Variant

TOLERANCE = 1e-5  # max |delta| against the official functional forward


def loaded_generator(variant: Variant) -> SPADEGenerator:
    generator = SPADEGenerator(variant.config)
    generator.load_state_dict(variant.state, strict=True)
    return generator.eval()


def test_generator_matches_official_functional_forward(variant: Variant) -> None:
    with torch.inference_mode():
        output = loaded_generator(variant)(variant.semantic, variant.z)
    assert output.shape == (1, 3, *variant.config.image_size)
    assert (output - variant.reference).abs().max().item() <= TOLERANCE


def test_forward_draws_no_random_numbers_and_repeats_exactly(variant: Variant) -> None:
    generator = loaded_generator(variant)
    state = torch.random.get_rng_state()
    with torch.inference_mode():
        first = generator(variant.semantic, variant.z)
        second = generator(variant.semantic, variant.z)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, second)


def test_module_names_are_the_official_keys() -> None:
    config = GeneratorConfig(**{**TINY, "crop_size": 128}, label_nc=3, num_upsampling_layers="most")
    keys = set(SPADEGenerator(config).state_dict())
    for key in ("fc.weight", "fc.bias", "head_0.conv_0.weight_orig", "head_0.conv_0.weight_u",
                "head_0.conv_0.weight_v", "head_0.conv_1.bias", "up_0.conv_s.weight_orig",
                "up_0.norm_s.param_free_norm.running_var", "up_0.norm_0.mlp_shared.0.weight",
                "up_0.norm_1.mlp_gamma.bias", "up_4.norm_0.mlp_beta.weight", "conv_img.weight"):
        assert key in keys, key
    # Blocks with fin == fout have no shortcut; conv_s has no bias; fc, conv_img are never spectral.
    assert not any(key.startswith(("head_0.conv_s", "G_middle_0.conv_s", "G_middle_1.conv_s")) for key in keys)
    assert not any(key.startswith("up_0.conv_s.bias") for key in keys)
    assert "fc.weight_orig" not in keys and "conv_img.weight_orig" not in keys
    assert SPADEGenerator(config).up_4.conv_1.weight_orig.shape[0] == config.ngf // 2


def test_segmap_generator_takes_any_multiple_of_its_scale() -> None:
    config = GeneratorConfig(**TINY, label_nc=3)
    generator = SPADEGenerator(config).eval()
    with torch.inference_mode():
        output = generator(torch.zeros(2, config.semantic_nc, 96, 32))
    assert output.shape == (2, 3, 96, 32)


@pytest.mark.parametrize("case, message", [
    ("channels", r"semantic must be \[N, 4, H, W\].*got shape \[1, 5, 64, 64\]"),
    ("rank", r"semantic must be \[N, 4, H, W\].*got shape \[4, 64, 64\]"),
    ("segmap size", r"label map size 64x48 must be a multiple of 32"),
    ("no z", r"needs z"),
    ("z size", r"z must be \[N, 16\] \(z_dim=16\), got shape \[1, 8\]"),
    ("vae size", r"a VAE generator produces 64x64 images; got a 128x128 label map"),
])
def test_forward_refuses_bad_input(case: str, message: str) -> None:
    vae = case in ("no z", "z size", "vae size")
    config = GeneratorConfig(**TINY, label_nc=3, contain_dontcare_label=True, use_vae=vae)
    generator = SPADEGenerator(config).eval()
    semantic, z = torch.zeros(1, 4, 64, 64), torch.zeros(1, 16)
    semantic, z = {"channels": (torch.zeros(1, 5, 64, 64), z), "rank": (torch.zeros(4, 64, 64), z),
                   "segmap size": (torch.zeros(1, 4, 64, 48), z), "no z": (semantic, None),
                   "z size": (semantic, torch.zeros(1, 8)),
                   "vae size": (torch.zeros(1, 4, 128, 128), z)}[case]
    with pytest.raises(ValueError, match=message):
        generator(semantic, z)


@pytest.mark.parametrize("config", [EncoderConfig(ngf=4, num_layers=6), EncoderConfig(ngf=4, num_layers=5,
                                                                                      spectral=False)],
                         ids=["6-layers-spectral", "5-layers-plain"])
def test_encoder_matches_official_functional_forward(config: EncoderConfig) -> None:
    state = official_state_dict(random_encoder(config, seed=3), seed=3)
    encoder = ConvEncoder(config)
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    # Not 256x256: both must resize (bilinear, align_corners=False) before the first layer.
    image = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        mu, logvar = encoder(image)
        ref_mu, ref_logvar = official_encoder_forward(state, image, {"crop_size": 256 if config.num_layers == 6
                                                                     else 128})
    assert mu.shape == logvar.shape == (2, 256)
    assert float(mu.std()) > 1e-3  # a flat latent would make the comparison empty
    assert (mu - ref_mu).abs().max().item() <= TOLERANCE
    assert (logvar - ref_logvar).abs().max().item() <= TOLERANCE
