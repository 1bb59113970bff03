"""Initialisation as the official code really runs it: `.cuda()` first, then `init_weights('xavier', 0.02)`."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spade_deploy.model.config import EncoderConfig, GeneratorConfig
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator, init_weights
from spade_deploy.training.discriminator import DiscriminatorConfig, MultiscaleDiscriminator

GENERATOR = GeneratorConfig(label_nc=6, crop_size=64, ngf=16, spade_hidden=32)
NETWORKS = {
    "generator": lambda: SPADEGenerator(GENERATOR),
    "encoder": lambda: ConvEncoder(EncoderConfig.for_crop_size(256, ngf=16)),
    "discriminator": lambda: MultiscaleDiscriminator(DiscriminatorConfig(input_nc=GENERATOR.semantic_nc + 3, ndf=16)),
}


def official_order_init(network: nn.Module, gain: float = 0.02) -> None:
    """Restated from the official `create_network` + `BaseNetwork.init_weights`: the move to the GPU (here a clone,
    which gives every parameter new storage the same way) happens before the init function is applied by class name."""
    network._apply(lambda tensor: tensor.clone())

    def init(module: nn.Module) -> None:
        name = type(module).__name__
        if hasattr(module, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.xavier_normal_(module.weight.data, gain=gain)
            if getattr(module, "bias", None) is not None:
                nn.init.constant_(module.bias.data, 0.0)

    network.apply(init)


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_init_matches_the_official_order_parameter_by_parameter(kind: str) -> None:
    torch.manual_seed(0)
    official = NETWORKS[kind]()
    official_order_init(official)
    torch.manual_seed(0)
    ours = NETWORKS[kind]()
    init_weights(ours)

    theirs = dict(official.named_parameters())
    spectral = 0
    for name, parameter in ours.named_parameters():
        reference = theirs[name].detach()
        if name.endswith("weight_orig"):
            # Both keep the constructor's default init, drawn from the same seed: equal, value for value.
            spectral += 1
            torch.testing.assert_close(parameter.detach(), reference, rtol=0, atol=0)
        elif name.endswith("bias"):
            assert not parameter.any() and not reference.any(), name
        else:
            # Xavier-normal draws from streams that differ (the official init also draws for the stale copies):
            # compare the statistics, with the sampling error of a std over n values.
            n = parameter.numel()
            fan_out, fan_in = parameter.shape[0], parameter[0].numel()
            receptive = parameter[0, 0].numel()
            expected = 0.02 * math.sqrt(2.0 / (fan_in + fan_out * receptive))
            for value in (parameter.detach(), reference):
                assert abs(value.std().item() / expected - 1) < 6 / math.sqrt(n), name
                assert abs(value.mean().item()) < 6 * expected / math.sqrt(n), name
    assert spectral > 0


def test_spectral_layers_start_at_pytorch_default_scale() -> None:
    """The point of the official order: spectral-norm weights are ~30x larger than a gain-0.02 xavier init."""
    torch.manual_seed(0)
    generator = SPADEGenerator(GENERATOR)
    init_weights(generator)
    conv = generator.head_0.conv_0
    fan_in = conv.weight_orig[0].numel()
    default_std = 1 / math.sqrt(3 * fan_in)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv.weight_orig.std().item() == pytest.approx(default_std, rel=0.05)
