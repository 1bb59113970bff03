from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spade_deploy.training.discriminator import DiscriminatorConfig, MultiscaleDiscriminator
from spade_deploy.training.losses import (VGGLoss, feature_matching, hinge_discriminator, hinge_generator,
                                          kl_divergence, load_vgg19)
from spade_deploy.training.options import LossOptions


def test_discriminator_scales_features_and_official_keys() -> None:
    discriminator = MultiscaleDiscriminator(DiscriminatorConfig(input_nc=11, ndf=8, num_d=2))
    outputs = discriminator(torch.randn(2, 11, 64, 64))
    assert len(outputs) == 2 and all(len(scale) == 5 for scale in outputs)
    # 64 -> 33 -> 17 -> 9 (k4 s2 p2) -> 10 (s1) -> 11 (prediction); the second scale sees 32 px.
    assert [list(f.shape) for f in outputs[0]] == [[2, 8, 33, 33], [2, 16, 17, 17], [2, 32, 9, 9],
                                                   [2, 64, 10, 10], [2, 1, 11, 11]]
    assert list(outputs[1][-1].shape) == [2, 1, 7, 7]
    keys = discriminator.state_dict().keys()
    assert {"discriminator_1.model0.0.weight", "discriminator_1.model1.0.0.weight_orig",
            "discriminator_0.model4.0.bias"} <= set(keys)
    assert "discriminator_0.model1.0.0.bias" not in keys  # conv before instance norm has no bias


def test_gan_losses_match_the_official_formulas() -> None:
    pred = [[torch.zeros(1), torch.tensor([[2.0, -0.5]])], [torch.zeros(1), torch.tensor([[0.0, 3.0]])]]
    # real: mean(relu(1 - D)) per scale = (0 + 1.5) / 2, (1 + 0) / 2 -> mean 0.625
    assert hinge_discriminator(pred, real=True).item() == pytest.approx(0.625)
    # fake: mean(relu(1 + D)) per scale = (3 + 0.5) / 2, (1 + 4) / 2 -> mean 2.125
    assert hinge_discriminator(pred, real=False).item() == pytest.approx(2.125)
    assert hinge_generator(pred).item() == pytest.approx(-(0.75 + 1.5) / 2)
    other = [[torch.ones(1), torch.zeros(1, 2)], [torch.full((1,), 3.0), torch.zeros(1, 2)]]
    assert feature_matching(pred, other).item() == pytest.approx((1 + 3) / 2)  # logits excluded, / num_D


def test_kld_is_a_sum() -> None:
    mu, logvar = torch.full((2, 3), 1.0), torch.zeros(2, 3)
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 * 6)
    assert kl_divergence(torch.zeros(4, 5), torch.zeros(4, 5)).item() == 0


def test_vgg_loss_from_a_torchvision_layout_file(vgg_file: Path) -> None:
    loss = VGGLoss(load_vgg19(vgg_file))
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(image, image).item() == 0
    value = loss(image, -image)
    assert torch.isfinite(value) and value.item() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    fake = image.clone().requires_grad_()
    loss(fake, -image).backward()
    assert fake.grad.abs().sum() > 0


def test_vgg_errors_say_what_to_do(tmp_path: Path, vgg_file: Path) -> None:
    with pytest.raises(ValueError, match="--no-vgg-loss"):
        load_vgg19(tmp_path / "absent.pth")
    state = torch.load(vgg_file, weights_only=True)
    del state["features.28.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing \\['features.28.weight'\\]"):
        load_vgg19(tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="--vgg-weights PATH .* --no-vgg-loss"):
        LossOptions()
