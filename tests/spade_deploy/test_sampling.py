"""Seeded latents and style encoding: the only places that draw random numbers."""
from __future__ import annotations

import torch

from spade_deploy.config import EncoderConfig
from spade_deploy.networks import ConvEncoder
from spade_deploy.sampling import encode_style, reparameterize, sample_z


def test_sample_z_is_a_function_of_the_seed() -> None:
    first, again, other = sample_z(2, 16, seed=3), sample_z(2, 16, seed=3), sample_z(2, 16, seed=4)
    assert first.shape == (2, 16) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first, torch.randn(2, 16, generator=torch.Generator().manual_seed(3)))


def test_reparameterize_is_mu_plus_seeded_noise_times_sigma() -> None:
    mu, logvar = torch.full((2, 8), 0.5), torch.full((2, 8), 2 * torch.log(torch.tensor(3.0)))
    z = reparameterize(mu, logvar, seed=7)
    assert torch.allclose(z, 0.5 + 3.0 * sample_z(2, 8, seed=7), atol=1e-6)


def test_encode_style_gives_mu_or_a_seeded_sample() -> None:
    torch.manual_seed(0)
    encoder = ConvEncoder(EncoderConfig(ngf=4, num_layers=5)).eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mu, logvar = encoder(image)
    assert torch.equal(encode_style(encoder, image), mu)
    assert torch.equal(encode_style(encoder, image, seed=5), reparameterize(mu, logvar, seed=5))
