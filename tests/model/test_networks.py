"""SPADEGenerator and ConvEncoder against an independent functional statement of the official eval forward."""
from __future__ import annotations

import copy

import pytest
import torch

from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator
from spade_deploy.model.synthetic import random_encoder, random_generator
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


# Every bad input to a model with 3 classes + don't-care (4 channels), z_dim 16, at 64x64:
# case -> (use_vae, semantic, z, the ValueError's message).
SEMANTIC, Z = torch.zeros(1, 4, 64, 64), torch.zeros(1, 16)
BAD_INPUTS = {
    "channels": (False, torch.zeros(1, 5, 64, 64), None,
                 r"semantic must be \[N, 4, H, W\].*got shape \[1, 5, 64, 64\]"),
    "rank": (False, torch.zeros(4, 64, 64), None, r"semantic must be \[N, 4, H, W\].*got shape \[4, 64, 64\]"),
    "segmap size": (False, torch.zeros(1, 4, 64, 48), None, r"label map size 64x48 must be a multiple of 32"),
    "empty map": (False, torch.zeros(1, 4, 0, 0), None,
                  r"at least one label map of at least 1x1, got shape \[1, 4, 0, 0\]"),
    "empty batch": (False, torch.zeros(0, 4, 64, 64), None, r"at least one label map.*got shape \[0, 4, 64, 64\]"),
    "float64 semantic": (False, SEMANTIC.double(), None,
                         r"semantic has dtype torch.float64 but this network's parameters are torch.float32"),
    "int64 semantic": (False, SEMANTIC.long(), None,
                       r"semantic must be a floating-point tensor .*got dtype torch.int64"),
    "numpy semantic": (False, SEMANTIC.numpy(), None, r"semantic must be a torch.Tensor .*got ndarray"),
    "z of a segmap model": (False, SEMANTIC, Z, r"this generator is not a VAE: it takes no z; pass z=None"),
    "no z": (True, SEMANTIC, None, r"needs z.*spade_deploy\.model\.tensors\.sample_z"),
    "z size": (True, SEMANTIC, torch.zeros(1, 8), r"z must be \[N, 16\] \(z_dim=16\), got shape \[1, 8\]"),
    "vae size": (True, torch.zeros(1, 4, 128, 128), Z,
                 r"a VAE generator produces 64x64 images; got a 128x128 label map"),
    "more latents than maps": (True, SEMANTIC, torch.zeros(3, 16),
                               r"one latent per label map: z has shape \[3, 16\], semantic \[1, 4, 64, 64\]"),
    "fewer latents than maps": (True, torch.zeros(2, 4, 64, 64), Z,
                                r"one latent per label map: z has shape \[1, 16\], semantic \[2, 4, 64, 64\]"),
    "other batch sizes": (True, torch.zeros(2, 4, 64, 64), torch.zeros(3, 16), r"their batch sizes must match"),
    "float64 z": (True, SEMANTIC, Z.double(),
                  r"z has dtype torch.float64 but this network's parameters are torch.float32"),
    "int64 z": (True, SEMANTIC, Z.long(), r"z must be a floating-point tensor .*got dtype torch.int64"),
    "numpy z": (True, SEMANTIC, Z.numpy(), r"z must be a torch.Tensor .*got ndarray"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_forward_refuses_bad_input(case: str) -> None:
    vae, semantic, z, message = BAD_INPUTS[case]
    config = GeneratorConfig(**TINY, label_nc=3, contain_dontcare_label=True, use_vae=vae)
    generator = SPADEGenerator(config).eval()
    with pytest.raises(ValueError, match=message):
        generator(semantic, z)


@pytest.mark.parametrize("vae", [False, True], ids=["segmap", "vae"])
def test_forward_runs_in_the_parameters_dtype_and_under_autocast(vae: bool) -> None:
    """float64 parameters take float64 inputs (the parity reference); under autocast, as training runs, the encoder's
    bfloat16 latent goes into float32 parameters."""
    config = GeneratorConfig(**TINY, label_nc=3, contain_dontcare_label=True, use_vae=vae)
    generator = random_generator(config, calibration_batches=1)
    semantic = torch.zeros(2, 4, 64, 64)
    semantic[:, 1] = 1
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)) if vae else None
    with torch.inference_mode():
        single = generator(semantic, z)
        double = copy.deepcopy(generator).double()(semantic.double(), None if z is None else z.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = generator(semantic, None if z is None else z.bfloat16())
    assert double.dtype == torch.float64 and (double - single).abs().max().item() <= TOLERANCE
    assert mixed.dtype == torch.bfloat16 and (mixed.float() - single).abs().mean().item() < 0.02  # bf16: 8-bit mantissa


def test_encoder_refuses_bad_input() -> None:
    encoder = ConvEncoder(EncoderConfig(ngf=4, num_layers=5)).eval()
    with pytest.raises(ValueError, match=r"image must be \[N, 3, h, w\].*got shape \[1, 3, 0, 64\]"):
        encoder(torch.zeros(1, 3, 0, 64))


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
