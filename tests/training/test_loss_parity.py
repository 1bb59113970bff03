"""Our training objective against the official one restated in tests/official_losses.py: with the same G, E, D and
VGG19 weights, the same batch and the same latent draws, a generator step and a discriminator step give the same loss
terms, the same gradients and the same network buffers afterwards.

The networks run in training mode, as in `Trainer._train_step`: batch norm on the batch's statistics (the same batch
on both sides, so the same statistics), and spectral norm doing one power iteration per forward from its stored u.
The official side starts from a copy of our state dicts taken before the step, so both iterate from the same u, v; it
writes its moved u, v and running statistics back into that copy, so the discriminator step also starts from the
same (once-iterated) vectors on both sides, and the buffers can be compared at the end.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator, init_weights
from spade_deploy.model.synthetic import random_style, synthetic_batch
from spade_deploy.model.tensors import rgb_to_tensor, to_semantic_input
from spade_deploy.training.discriminator import DiscriminatorConfig, MultiscaleDiscriminator
from spade_deploy.training.losses import SPADELoss, VGGLoss, load_vgg19
from spade_deploy.training.options import LossOptions
from tests.official import official_options
from tests.official_losses import (OfficialNets, official_discriminator_losses, official_generator_losses,
                                   official_step_loss, official_training_options)

# The smallest setting that runs every part: the VAE (encoder + KLD) needs z_dim 256; the encoder resizes its input to
# 256 px whatever the crop, so a 64 px crop (a 2x2 latent grid) suffices. Five encoder layers, as training builds it
# for crops below 256 (the official encoder would only run with crop >= 256 and six).
GENERATOR = GeneratorConfig(label_nc=4, ngf=8, z_dim=256, use_vae=True, crop_size=64, spade_hidden=16)
ENCODER = EncoderConfig.for_crop_size(GENERATOR.crop_size, ngf=8)
DISCRIMINATOR = DiscriminatorConfig(input_nc=GENERATOR.semantic_nc + 3, ndf=8)
BATCH = 2
SEED = 3
OFFICIAL_NAMES = {"GAN": "GAN", "GAN_Feat": "GAN_Feat", "VGG": "VGG", "KLD": "KLD", "D_fake": "D_Fake",
                  "D_real": "D_real"}
# float32, as training runs. Losses: |ours - official| <= TOL + TOL * |official|. Gradients: <= TOL * max(1, largest
# |official gradient| of the tensor): absolute where gradients are small, as some are float noise around an exact 0
# (the biases of convs that a batch norm follows), relative where the VGG term drives them to ~50 (fc, conv_img) and
# 1e-5 is a few float32 ulps.
TOL = 1e-5


@torch.no_grad()
def _networks() -> tuple[SPADEGenerator, ConvEncoder, MultiscaleDiscriminator]:
    """Training's initialisation, then moved towards a state training reaches: `init_weights` zeroes every bias (a
    bias missing on one side would not show) and leaves D's logits within +-0.1, where neither hinge clamps. Random
    biases, and prediction convs scaled so that about 40% of the logits lie beyond +-1, make every part count."""
    torch.manual_seed(SEED)
    networks = SPADEGenerator(GENERATOR), ConvEncoder(ENCODER), MultiscaleDiscriminator(DISCRIMINATOR)
    noise = torch.Generator().manual_seed(SEED)
    for network in networks:
        init_weights(network)
        for module in network.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=noise))
        network.train()
    generator, _, discriminator = networks
    generator.conv_img.weight.mul_(5)  # fakes about as varied as the real images, not a near-uniform grey
    for scale in discriminator.children():
        getattr(scale, f"model{DISCRIMINATOR.n_layers}")[0].weight.mul_(100)
    return networks


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Blob label maps and real images that follow them: a colour per class over a smooth texture, in [-1, 1]."""
    labels, _ = synthetic_batch(GENERATOR, BATCH, seed=SEED)
    palette = np.random.default_rng(SEED).uniform(-0.8, 0.8, size=(GENERATOR.label_nc, 3))
    height, width = GENERATOR.image_size
    texture = rgb_to_tensor(random_style(BATCH, height, width, seed=SEED))
    real = 0.6 * torch.from_numpy(palette[labels]).permute(0, 3, 1, 2).float() + 0.4 * texture
    return to_semantic_input(labels, None, GENERATOR), real


def _official_copy(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict, copied; its parameters as leaves that take gradients."""
    state = {key: value.detach().clone() for key, value in network.state_dict().items()}
    for key, _ in network.named_parameters():
        state[key].requires_grad_(True)
    return state


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, *, rtol: float, atol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda message: f"{what}: {message}")


def _assert_gradients(network: nn.Module, gradients: tuple[torch.Tensor, ...], what: str) -> None:
    """Our gradients (`.grad`) against the official ones, parameter by parameter."""
    for (key, parameter), expected in zip(network.named_parameters(), gradients, strict=True):
        assert parameter.grad is not None, f"{what} {key}: no gradient"
        _assert_close(parameter.grad, expected, f"{what} gradient of {key}", rtol=0,
                      atol=TOL * max(1.0, float(expected.abs().max())))


def test_a_training_step_matches_the_official_objective(vgg_file: Path) -> None:
    generator, encoder, discriminator = _networks()
    semantic, real = _batch()
    with torch.no_grad():  # the hinges see logits on both sides of their kinks, so the clamps count
        logits = torch.cat([scale[-1].flatten() for scale in discriminator(torch.cat([semantic, real], 1))])
    assert (logits > 1).any() and (logits.abs() < 1).any() and (logits < -1).any()
    vgg = load_vgg19(vgg_file)
    loss_options = LossOptions(vgg_weights=str(vgg_file))
    nets = OfficialNets(_official_copy(generator), _official_copy(encoder), _official_copy(discriminator),
                        vgg.state_dict())
    opt = {**official_options(GENERATOR, ENCODER), **official_training_options(DISCRIMINATOR, loss_options)}

    # Ours, as Trainer._train_step calls it (without the optimiser steps, so both steps see the same weights).
    loss = SPADELoss(loss_options, VGGLoss(vgg))
    noise = torch.Generator().manual_seed(SEED)
    discriminator.requires_grad_(False)
    g_losses = loss.generator_losses(generator, encoder, discriminator, semantic, real, noise)
    sum(g_losses.values()).backward()
    discriminator.requires_grad_(True)
    d_losses = loss.discriminator_losses(generator, encoder, discriminator, semantic, real, noise)
    sum(d_losses.values()).backward()

    # The official computation draws its eps with torch.randn_like; here from a generator seeded like ours.
    official_noise = torch.Generator().manual_seed(SEED)

    def randn_like(std: torch.Tensor) -> torch.Tensor:
        return torch.randn(std.shape, generator=official_noise).to(std.dtype)

    official_g = official_generator_losses(nets, semantic, real, opt, randn_like)
    g_gradients = torch.autograd.grad(official_step_loss(official_g),
                                      [nets.netG[key] for key, _ in generator.named_parameters()]
                                      + [nets.netE[key] for key, _ in encoder.named_parameters()])
    official_d = official_discriminator_losses(nets, semantic, real, opt, randn_like)
    d_gradients = torch.autograd.grad(official_step_loss(official_d),
                                      [nets.netD[key] for key, _ in discriminator.named_parameters()])

    ours = {**g_losses, **d_losses}
    assert {OFFICIAL_NAMES[name] for name in ours} == {*official_g, *official_d}
    for name, value in ours.items():
        expected = {**official_g, **official_d}[OFFICIAL_NAMES[name]]
        _assert_close(value, expected.reshape(()), name, rtol=TOL, atol=TOL)

    count = sum(1 for _ in generator.parameters())
    _assert_gradients(generator, g_gradients[:count], "G")
    _assert_gradients(encoder, g_gradients[count:], "E")
    _assert_gradients(discriminator, d_gradients, "D")

    # After the two steps, the same spectral-norm vectors and batch-norm running statistics (the official SyncBN
    # never counts batches, so num_batches_tracked is left out).
    for network, official in ((generator, nets.netG), (encoder, nets.netE), (discriminator, nets.netD)):
        for key, value in network.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                _assert_close(value, official[key].detach(), f"{key} after the step", rtol=TOL, atol=TOL)
