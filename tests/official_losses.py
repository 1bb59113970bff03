"""The official NVlabs/SPADE training objective, restated: `Pix2PixModel.compute_generator_loss` and
`compute_discriminator_loss` with the modules they use (MultiscaleDiscriminator, the VGG19 slices, GANLoss in hinge
mode, VGGLoss, KLDLoss) and the trainer's reduction, as functions of state dicts.

It follows the official code's own structure, not ours: fake and real go through D as one batch that `divide_pred`
halves; GANLoss takes a per-sample mean of each scale's loss (`view(bs, -1)`) and averages the scales; feature
matching adds `L1 * lambda_feat / num_D` per layer into a 1-element tensor; the trainer steps on
`sum(losses.values()).mean()`. The networks run in training mode, as in a training step (see tests/official.py); only
the option values come from `spade_deploy.training`, none of the computation.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spade_deploy.training.discriminator import DiscriminatorConfig
from spade_deploy.training.options import LossOptions
from tests.official import BN_EPS, LRELU, _weight, official_encoder_forward, official_generator_forward

Predictions = list[list[torch.Tensor]]  # per D scale, its intermediate outputs; the last is the patch logits
State = MutableMapping[str, torch.Tensor]  # training forwards write the spectral-norm and batch-norm buffers back

VGG_MAXPOOLS = (4, 9, 18, 27)  # torchvision vgg19 `features` indices of the max-pools (the rest: conv, ReLU pairs)
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # official VGG19 slice1..slice5 -> relu1_1 .. relu5_1
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


@dataclass
class OfficialNets:
    """State dicts (official key names) of netG, netE (or None), netD and the loss's VGG19 (torchvision keys)."""
    netG: State
    netE: State | None
    netD: State
    vgg: Mapping[str, torch.Tensor]


def official_training_options(discriminator: DiscriminatorConfig, loss: LossOptions) -> dict[str, Any]:
    """The official training options of this discriminator and loss setting (to merge with `official_options`)."""
    return dict(num_D=discriminator.num_d, n_layers_D=discriminator.n_layers, ndf=discriminator.ndf,
                norm_D="spectralinstance" if discriminator.spectral else "instance", gan_mode="hinge",
                lambda_feat=loss.lambda_feat, lambda_vgg=loss.lambda_vgg, lambda_kld=loss.lambda_kld,
                no_ganFeat_loss=False, no_vgg_loss=loss.lambda_vgg == 0)


# ------------------------------------------------------------------------------------------------------- networks

def official_discriminator_forward(state: State, x: torch.Tensor, opt: Mapping[str, Any]) -> Predictions:
    """`MultiscaleDiscriminator.forward` (training mode): every `discriminator_i` on the input, average-pooled (k3 s2
    pad 1, padding excluded from the mean) after each scale; each returns its intermediate features."""
    result = []
    for index in range(opt["num_D"]):
        result.append(_nlayer_discriminator(state, f"discriminator_{index}", x, opt))
        x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=[1, 1], count_include_pad=False)
    return result


def _nlayer_discriminator(state: State, prefix: str, x: torch.Tensor, opt: Mapping[str, Any]) -> list[torch.Tensor]:
    """`NLayerDiscriminator`: 4x4 convs with padding ceil(3 / 2) = 2; `model0` conv s2 + lrelu; `model1 ..
    model{n-1}` (spectral) conv + instance norm + lrelu, stride 2 except the last one; `model{n}` conv s1 -> 1
    channel. Returns every `model_i` output."""
    def conv(x: torch.Tensor, index: int, stride: int) -> torch.Tensor:
        name = f"{prefix}.model{index}.0" + (".0" if 0 < index < opt["n_layers_D"] else "")
        return F.conv2d(x, _weight(state, name, training=True), state.get(name + ".bias"), stride=stride, padding=2)

    n_layers = opt["n_layers_D"]
    outputs = [F.leaky_relu(conv(x, 0, 2), LRELU)]
    for index in range(1, n_layers):
        stride = 1 if index == n_layers - 1 else 2
        outputs.append(F.leaky_relu(F.instance_norm(conv(outputs[-1], index, stride), eps=BN_EPS), LRELU))
    outputs.append(conv(outputs[-1], n_layers, 1))
    return outputs


def official_vgg_forward(state: Mapping[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The official `VGG19` module (torchvision's vgg19 `features[:30]` in five slices) -> h_relu1 .. h_relu5."""
    outputs = []
    for start, end in VGG_SLICES:
        for index in range(start, end):
            if index in VGG_MAXPOOLS:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            elif f"features.{index}.weight" in state:
                x = F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
            else:
                x = F.relu(x)
        outputs.append(x)
    return outputs


# --------------------------------------------------------------------------------------------------------- losses

def _hinge(x: torch.Tensor, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
    if not for_discriminator:
        return -torch.mean(x)  # the generator's hinge loss always aims at "real"
    zero = torch.zeros_like(x)
    return -torch.mean(torch.min(x - 1, zero) if target_is_real else torch.min(-x - 1, zero))


def _gan_loss(predictions: Predictions, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
    """`GANLoss.__call__` on a multi-scale output: the last tensor of each scale, its loss viewed as `[bs, -1]` and
    averaged per sample (a scalar loss counts as bs = 1), summed over the scales, divided by their number."""
    loss = 0
    for scale in predictions:
        loss_tensor = _hinge(scale[-1], target_is_real, for_discriminator)
        bs = 1 if loss_tensor.dim() == 0 else loss_tensor.shape[0]
        loss = loss + torch.mean(loss_tensor.view(bs, -1), dim=1)
    return loss / len(predictions)


def _vgg_loss(vgg: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_vgg, y_vgg = official_vgg_forward(vgg, x), official_vgg_forward(vgg, y)
    loss = 0
    for weight, x_feature, y_feature in zip(VGG_WEIGHTS, x_vgg, y_vgg):
        loss = loss + weight * F.l1_loss(x_feature, y_feature.detach())
    return loss


def _kld_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# ------------------------------------------------------------------------------------------------ Pix2PixModel

RandnLike = Callable[[torch.Tensor], torch.Tensor]  # stands in for torch.randn_like, so a test controls the draws


def _generate_fake(nets: OfficialNets, semantics: torch.Tensor, real: torch.Tensor, opt: Mapping[str, Any],
                   randn_like: RandnLike, compute_kld_loss: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = kld_loss = None
    if opt["use_vae"]:
        mu, logvar = official_encoder_forward(nets.netE, real, opt, training=True)
        std = torch.exp(0.5 * logvar)
        z = randn_like(std).mul(std) + mu
        if compute_kld_loss:
            kld_loss = _kld_loss(mu, logvar) * opt["lambda_kld"]
    return official_generator_forward(nets.netG, semantics, z, opt, training=True), kld_loss


def _discriminate(nets: OfficialNets, semantics: torch.Tensor, fake: torch.Tensor, real: torch.Tensor,
                  opt: Mapping[str, Any]) -> tuple[Predictions, Predictions]:
    fake_and_real = torch.cat([torch.cat([semantics, fake], dim=1), torch.cat([semantics, real], dim=1)], dim=0)
    output = official_discriminator_forward(nets.netD, fake_and_real, opt)
    # divide_pred: the first half of the batch is the fake one
    return ([[t[: t.shape[0] // 2] for t in scale] for scale in output],
            [[t[t.shape[0] // 2:] for t in scale] for scale in output])


def official_generator_losses(nets: OfficialNets, semantics: torch.Tensor, real: torch.Tensor,
                              opt: Mapping[str, Any], randn_like: RandnLike) -> dict[str, torch.Tensor]:
    """`compute_generator_loss`: KLD (with the VAE), GAN, GAN_Feat, VGG, under the official names."""
    losses = {}
    fake, kld_loss = _generate_fake(nets, semantics, real, opt, randn_like, compute_kld_loss=opt["use_vae"])
    if opt["use_vae"]:
        losses["KLD"] = kld_loss
    pred_fake, pred_real = _discriminate(nets, semantics, fake, real, opt)
    losses["GAN"] = _gan_loss(pred_fake, True, for_discriminator=False)
    if not opt["no_ganFeat_loss"]:
        num_d = len(pred_fake)
        feat_loss = torch.zeros(1, dtype=real.dtype)
        for fake_scale, real_scale in zip(pred_fake, pred_real):
            for fake_feature, real_feature in zip(fake_scale[:-1], real_scale[:-1]):  # the logits are left out
                feat_loss = feat_loss + F.l1_loss(fake_feature, real_feature.detach()) * opt["lambda_feat"] / num_d
        losses["GAN_Feat"] = feat_loss
    if not opt["no_vgg_loss"]:
        losses["VGG"] = _vgg_loss(nets.vgg, fake, real) * opt["lambda_vgg"]
    return losses


def official_discriminator_losses(nets: OfficialNets, semantics: torch.Tensor, real: torch.Tensor,
                                  opt: Mapping[str, Any], randn_like: RandnLike) -> dict[str, torch.Tensor]:
    """`compute_discriminator_loss`: D_Fake and D_real, on a fake generated again without gradients."""
    with torch.no_grad():
        fake, _ = _generate_fake(nets, semantics, real, opt, randn_like, compute_kld_loss=False)
    fake = fake.detach().requires_grad_()
    pred_fake, pred_real = _discriminate(nets, semantics, fake, real, opt)
    return {"D_Fake": _gan_loss(pred_fake, False, for_discriminator=True),
            "D_real": _gan_loss(pred_real, True, for_discriminator=True)}


def official_step_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """What `Pix2PixTrainer` back-propagates: `sum(losses.values()).mean()`."""
    return sum(losses.values()).mean()
