"""Seeded latents and style encoding: the only places that draw random numbers (numpy, so the torch-free served
pipeline draws the same latents)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
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
