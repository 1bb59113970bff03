"""The SPADE objective: hinge GAN, discriminator feature matching, VGG19 perceptual loss and the encoder's KLD.

Weights and formulas follow the official code, down to the VGG19 being fed the raw [-1, 1] images although its
torchvision weights were trained on ImageNet-normalised ones: the normalisation roughly halves the perceptual term
against the others, so it is an option (`LossOptions.vgg_imagenet_norm`), not the default. The networks are passed in
per call, so the loop can hand over DDP-wrapped or plain modules and keeps the optimisers.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.model.sampling import reparameterize
from spade_deploy.training.options import LossOptions

# torchvision's vgg19 `features` up to relu5_1 (indices 0..29): conv widths, "M" = 2x2 max-pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
VGG_SLICE_ENDS = (2, 7, 12, 21, 30)  # features[:2] -> relu1_1, [2:7] -> relu2_1, ... [21:30] -> relu5_1
VGG_SLICE_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Predictions = list[list[torch.Tensor]]  # per discriminator scale, its activations; the last one is the logits


class VGG19Features(nn.Module):
    """Frozen VGG19 `features[:30]` (torchvision key names); image in [-1, 1] -> relu1_1 .. relu5_1 activations.

    `imagenet_norm` maps the image to ImageNet statistics first; the official loss feeds it as it is."""

    def __init__(self, *, imagenet_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image + 1) / 2 - self.mean) / self.std if self.imagenet_norm else image  # [N, 3, H, W]
        activations = []
        start = 0
        for end in VGG_SLICE_ENDS:
            x = self.features[start:end](x)
            activations.append(x)
            start = end
        return activations


def load_vgg19(path: str | Path, *, imagenet_norm: bool = False) -> VGG19Features:
    """VGG19 features from a torchvision-layout state dict file (`features.N.weight/bias`; other keys ignored)."""
    path = Path(path)
    hint = ("save one with torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), PATH) on a "
            "machine with torchvision, or train with --no-vgg-loss")
    if not path.is_file():
        raise ValueError(f"VGG19 weights not found: {path}; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a file that is not a state dict
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(error).__name__}); {hint}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a VGG19 state dict; {hint}")
    model = VGG19Features(imagenet_norm=imagenet_norm)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    mismatched = [f"{key} {list(state[key].shape)} (expected {list(expected[key].shape)})"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or mismatched:
        raise ValueError(f"{path} is not a torchvision VGG19 state dict: missing {missing[:6]}, wrong shapes "
                         f"{mismatched[:6]}; {hint}")
    model.load_state_dict({key: state[key] for key in expected})
    return model


class VGGLoss(nn.Module):
    """Sum over relu1_1 .. relu5_1 of weight * L1(features(fake), features(real)), weights 1/32 .. 1."""

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.vgg(real)
        return sum(weight * F.l1_loss(feature.float(), target.float())
                   for weight, feature, target in zip(VGG_SLICE_WEIGHTS, self.vgg(fake), targets))


def hinge_discriminator(predictions: Predictions, real: bool) -> torch.Tensor:
    """`-mean(min(D - 1, 0))` for real, `-mean(min(-D - 1, 0))` for fake, averaged over the scales."""
    sign = 1.0 if real else -1.0
    losses = [-torch.clamp(sign * scale[-1].float() - 1, max=0).mean() for scale in predictions]
    return sum(losses) / len(losses)


def hinge_generator(predictions: Predictions) -> torch.Tensor:
    """`-mean(D(fake))`, averaged over the scales."""
    return sum(-scale[-1].float().mean() for scale in predictions) / len(predictions)


def feature_matching(fake: Predictions, real: Predictions) -> torch.Tensor:
    """L1 between the intermediate activations (not the logits) on fake and real, summed, divided by the scales."""
    total = sum(F.l1_loss(f.float(), r.detach().float())
                for fake_scale, real_scale in zip(fake, real) for f, r in zip(fake_scale[:-1], real_scale[:-1]))
    return total / len(fake)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """`-0.5 * sum(1 + logvar - mu^2 - exp(logvar))`: a sum over batch and latent, as in the official code."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def sample_posterior(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """The reparameterised latent, differentiable in mu and logvar, with `eps` drawn from `noise` (a generator on
    mu's device: training's random stream, unlike the numpy one of inference)."""
    eps = torch.randn(mu.shape, generator=noise, device=mu.device, dtype=torch.float32)
    return reparameterize(mu, logvar, eps.to(mu.dtype))


class SPADELoss:
    """Runs G (and E) and D on a batch and returns the named, weighted loss terms of one optimiser step."""

    def __init__(self, options: LossOptions, vgg: VGGLoss | None) -> None:
        self.options = options
        self.vgg = vgg

    def generator_losses(self, generator: nn.Module, encoder: nn.Module | None, discriminator: nn.Module,
                         semantic: torch.Tensor, real: torch.Tensor,
                         noise: torch.Generator) -> dict[str, torch.Tensor]:
        """G-step terms: GAN, GAN_Feat, VGG (if enabled), KLD (with an encoder)."""
        fake, mu, logvar = _generate(generator, encoder, semantic, real, noise)
        pred_fake, pred_real = _discriminate(discriminator, semantic, fake, real)
        options = self.options
        losses = {"GAN": hinge_generator(pred_fake),
                  "GAN_Feat": feature_matching(pred_fake, pred_real) * options.lambda_feat}
        if self.vgg is not None:
            losses["VGG"] = self.vgg(fake, real) * options.lambda_vgg
        if mu is not None:
            losses["KLD"] = kl_divergence(mu, logvar) * options.lambda_kld
        return losses

    def discriminator_losses(self, generator: nn.Module, encoder: nn.Module | None, discriminator: nn.Module,
                             semantic: torch.Tensor, real: torch.Tensor,
                             noise: torch.Generator) -> dict[str, torch.Tensor]:
        """D-step terms (D_fake, D_real) on a fake regenerated without gradients, as the official trainer does."""
        with torch.no_grad():
            fake, _, _ = _generate(generator, encoder, semantic, real, noise)
        pred_fake, pred_real = _discriminate(discriminator, semantic, fake.detach(), real)
        return {"D_fake": hinge_discriminator(pred_fake, real=False),
                "D_real": hinge_discriminator(pred_real, real=True)}


def _generate(generator: nn.Module, encoder: nn.Module | None, semantic: torch.Tensor, real: torch.Tensor,
              noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if encoder is None:
        return generator(semantic), None, None
    mu, logvar = encoder(real)  # [N, 256] each
    return generator(semantic, sample_posterior(mu, logvar, noise)), mu, logvar


def _discriminate(discriminator: nn.Module, semantic: torch.Tensor, fake: torch.Tensor,
                  real: torch.Tensor) -> tuple[Predictions, Predictions]:
    """Fake and real through D as one batch (one pass, as the official code), split back into the two halves."""
    batch = torch.cat([torch.cat([semantic, fake], dim=1), torch.cat([semantic, real], dim=1)])
    outputs = discriminator(batch)
    half = fake.shape[0]
    return ([[f[:half] for f in scale] for scale in outputs], [[f[half:] for f in scale] for scale in outputs])
