"""Seeded latents and style encoding: the only places that draw random numbers (numpy, so the torch-free served
pipeline draws the same latents)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from spade_deploy.model.config import EncoderConfig
from spade_deploy.model.networks import ConvEncoder
from spade_deploy.model.sampling import reparameterize, sample_latent, sample_posterior, style_or_seed_latent
from spade_deploy.model.tensors import encode_style, sample_z


def test_sample_z_is_a_function_of_the_seed() -> None:
    first, again, other = sample_z(2, 16, seed=3), sample_z(2, 16, seed=3), sample_z(2, 16, seed=4)
    assert first.shape == (2, 16) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    expected = np.random.default_rng(3).standard_normal((2, 16), dtype=np.float32)
    assert np.array_equal(first.numpy(), expected) and np.array_equal(sample_latent(2, 16, 3), expected)


@pytest.mark.parametrize("args, message", [
    ((-1, 256), r"batch must be an int >= 1, got -1"),
    ((0, 256), r"batch must be an int >= 1, got 0"),
    ((1.5, 256), r"batch must be an int >= 1, got 1.5"),
    ((1, 0), r"z_dim must be an int >= 1, got 0"),
    ((1, 16.0), r"z_dim must be an int >= 1, got 16.0"),
    ((1, 16, 1.5), r"seed must be an int or None, got float 1.5"),
    ((1, 16, "7"), r"seed must be an int or None, got str '7'"),
    ((1, 16, True), r"seed must be an int or None, got bool True"),
    ((1, 16, 2 ** 63), r"seed must fit int64 .*got 9223372036854775808"),
    ((1, 16, np.uint64(2 ** 64 - 1)), r"seed must fit int64 .*got 18446744073709551615"),
])
def test_sample_z_refuses_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_z(*args)
    with pytest.raises(ValueError, match=message):  # the numpy function the served pipeline uses
        sample_latent(*args)


def test_sample_z_takes_numpy_integers_and_the_whole_int64_range() -> None:
    assert torch.equal(sample_z(np.int64(2), np.int32(16), np.int64(3)), sample_z(2, 16, 3))
    for seed in (-2 ** 63, 2 ** 63 - 1):
        assert torch.equal(sample_z(1, 4, seed), torch.from_numpy(
            np.random.default_rng(seed % 2 ** 64).standard_normal((1, 4), dtype=np.float32)))


def test_reparameterize_is_mu_plus_noise_times_sigma_for_numpy_and_torch() -> None:
    mu, logvar = np.full((2, 8), 0.5, np.float32), np.full((2, 8), 2 * np.log(3.0), np.float32)
    eps = sample_latent(2, 8, 7)
    np.testing.assert_allclose(reparameterize(mu, logvar, eps), 0.5 + 3.0 * eps, atol=1e-6)
    np.testing.assert_allclose(sample_posterior(mu, logvar, 7), 0.5 + 3.0 * eps, atol=1e-6)
    mu_t = torch.from_numpy(mu).requires_grad_()
    z = reparameterize(mu_t, torch.from_numpy(logvar), torch.from_numpy(eps))
    z.sum().backward()  # training differentiates through it
    assert torch.allclose(z, torch.from_numpy(0.5 + 3.0 * eps), atol=1e-6) and torch.equal(mu_t.grad,
                                                                                           torch.ones(2, 8))


def test_encode_style_gives_mu_or_a_seeded_sample() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(EncoderConfig(ngf=4, num_layers=5)).eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mu, logvar = encoder(image)
    assert torch.equal(encode_style(encoder, image), mu)
    assert np.array_equal(encode_style(encoder, image, seed=5).numpy(),
                          sample_posterior(mu.numpy(), logvar.numpy(), seed=5))


@pytest.mark.parametrize("image, message", [
    (torch.zeros(1, 3, 0, 0), r"image must be \[N, 3, h, w\].*every dimension >= 1.*got shape \[1, 3, 0, 0\]"),
    (torch.zeros(1, 3, 0, 64), r"image must be \[N, 3, h, w\].*got shape \[1, 3, 0, 64\]"),
    (torch.zeros(0, 3, 64, 64), r"image must be \[N, 3, h, w\].*got shape \[0, 3, 64, 64\]"),
    (torch.zeros(1, 64, 64, 3), r"image must be \[N, 3, h, w\].*got shape \[1, 64, 64, 3\]"),  # channels-last
    (torch.zeros(1, 1, 64, 64), r"image must be \[N, 3, h, w\].*got shape \[1, 1, 64, 64\]"),  # grey
    (torch.zeros(3, 64, 64), r"image must be \[N, 3, h, w\].*got shape \[3, 64, 64\]"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"image must be a floating-point tensor .*got dtype torch.uint8"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64),
     r"image has dtype torch.float64 but this network's parameters are torch.float32"),
    (np.zeros((1, 3, 64, 64), np.float32), r"image must be a torch.Tensor .*got ndarray"),
], ids=["0x0", "0xW", "empty batch", "channels-last", "grey", "3-D", "uint8", "float64", "numpy"])
def test_encode_style_refuses_bad_images(image: object, message: str) -> None:
    encoder = ConvEncoder(EncoderConfig(ngf=4, num_layers=5)).eval()
    with pytest.raises(ValueError, match=message):
        encode_style(encoder, image)


def test_encode_style_checks_the_seed_first() -> None:
    encoder = ConvEncoder(EncoderConfig(ngf=4, num_layers=5)).eval()
    with pytest.raises(ValueError, match=r"seed must be an int or None, got float 5.0"):
        encode_style(encoder, torch.zeros(1, 3, 64, 64), seed=5.0)


def test_the_torch_free_modules_import_no_torch() -> None:
    """What the client and the served models import: numpy, onnx, onnxruntime, tritonclient, pillow only."""
    modules = ["spade_deploy.client", "spade_deploy.model.io_spec", "spade_deploy.model.sampling",
               "spade_deploy.export.metadata", "spade_deploy.export.precision", "spade_deploy.export.runtime",
               "spade_deploy.serve.served_model",
               "spade_deploy.serve.repository", "spade_deploy.serve.server"]
    code = f"import sys; import {', '.join(modules)}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_pipeline_latent_rule() -> None:
    """A style's mean without a seed, a seeded sample around it with one, a seeded normal sample without a style."""
    mu, logvar = np.full((1, 8), 0.5, np.float32), np.zeros((1, 8), np.float32)
    assert np.array_equal(style_or_seed_latent(8, 3), sample_latent(1, 8, 3))
    assert np.array_equal(style_or_seed_latent(8, None, (mu, logvar)), mu)
    assert np.array_equal(style_or_seed_latent(8, 3, (mu, logvar)), sample_posterior(mu, logvar, 3))
