"""The official NVlabs/SPADE side of the tests: its checkpoint files and an independent functional re-statement of
its forward, in eval mode and (for the loss parity test) in training mode.

`official_generator_forward` / `official_encoder_forward` compute the official networks' output straight from an
official state dict with `torch.nn.functional`, reading the options as the official code does (`norm_G` strings,
`crop_size // 2**n` latent grid), and share no code with `spade_deploy.model.networks`. Matching them guards
faithfulness to the official code independently of how our modules are written.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.model.config import EncoderConfig, GeneratorConfig

StateDict = Mapping[str, torch.Tensor]
BN_EPS = 1e-5  # nn.BatchNorm2d / SynchronizedBatchNorm2d / nn.InstanceNorm2d default
LRELU = 0.2


# --------------------------------------------------------------------------------------------- checkpoint files

def official_options(config: GeneratorConfig, encoder: EncoderConfig | None = None) -> dict[str, Any]:
    """The options an official run of this configuration has, under their official names (with `norm_E` when there
    is an encoder)."""
    norm_g = f"{'spectral' if config.spectral else ''}spade{config.norm}{config.spade_kernel}x{config.spade_kernel}"
    options: dict[str, Any] = dict(
        dataset_mode=config.preset, label_nc=config.label_nc, contain_dontcare_label=config.contain_dontcare_label,
        no_instance=not config.use_instance, ngf=config.ngf, z_dim=config.z_dim, use_vae=config.use_vae,
        crop_size=config.crop_size, aspect_ratio=config.aspect_ratio,
        num_upsampling_layers=config.num_upsampling_layers, norm_G=norm_g)
    if encoder is not None:
        options["norm_E"] = "spectralinstance" if encoder.spectral else "instance"
    return options


def write_opt_txt(directory: Path, options: Mapping[str, Any]) -> Path:
    """`opt.txt` as the official `BaseOptions.print_options` writes it (with a few options it always has)."""
    defaults = dict(name="label2coco", gpu_ids="0", checkpoints_dir="./checkpoints", model="pix2pix",
                    norm_D="spectralinstance", preprocess_mode="scale_width_and_crop", batchSize=1)
    lines = ["----------------- Options ---------------"]
    for key, value in sorted({**defaults, **options}.items()):
        lines.append(f"{key:>25}: {str(value):<30}\t[default: x]")
    lines.append("----------------- End -------------------")
    path = directory / "opt.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@torch.no_grad()
def official_state_dict(module: nn.Module, seed: int) -> OrderedDict[str, torch.Tensor]:
    """`module.state_dict()` (official key names) made to look like an official checkpoint that nothing can recompute:
    batch-norm running statistics moved off their calibrated values (the counter at 0: the official SyncBN never
    counts), and spectral-norm vectors that are not the converged singular vectors (v turned by about 9 degrees,
    u = W v / |W v|, so sigma = u . W v is positive but below the largest singular value)."""
    generator = torch.Generator().manual_seed(seed)
    source = module.state_dict()
    state = OrderedDict((key, value.clone()) for key, value in source.items())
    for key, value in source.items():
        noise = torch.randn(value.shape, generator=generator) if value.is_floating_point() else None
        if key.endswith("running_mean"):
            state[key] = value + 0.1 * source[key[: -len("mean")] + "var"].sqrt() * noise
        elif key.endswith("running_var"):
            state[key] = value * torch.exp(0.15 * noise)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("weight_v"):
            prefix = key[: -len("_v")]
            matrix = source[prefix + "_orig"].reshape(source[prefix + "_orig"].shape[0], -1)
            v = F.normalize(value + 0.15 * F.normalize(noise, dim=0), dim=0)
            state[key] = v
            state[prefix + "_u"] = F.normalize(matrix @ v, dim=0)
    return state


def save_official(state: StateDict, directory: Path, name: str = "latest_net_G.pth") -> Path:
    """`torch.save(net.state_dict(), ...)` as the official `save_network` does."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------ functional forward

def _weight(state: StateDict, prefix: str, *, training: bool = False) -> torch.Tensor:
    """A layer's weight. Spectral norm divides weight_orig by sigma = u . (W_mat v); in eval mode with the stored
    vectors, in training mode after one power iteration (no gradient through u, v), whose vectors are written back
    into `state` as the module writes its buffers."""
    if prefix + ".weight_orig" not in state:
        return state[prefix + ".weight"]
    weight = state[prefix + ".weight_orig"]
    matrix = weight.reshape(weight.shape[0], -1)
    u, v = state[prefix + ".weight_u"], state[prefix + ".weight_v"]
    if training:
        with torch.no_grad():
            v = F.normalize(matrix.t() @ u, dim=0, eps=1e-12)
            u = F.normalize(matrix @ v, dim=0, eps=1e-12)
        state[prefix + ".weight_u"], state[prefix + ".weight_v"] = u, v
    return weight / torch.dot(u, matrix @ v)


def _conv(x: torch.Tensor, state: StateDict, prefix: str, *, stride: int = 1, training: bool = False) -> torch.Tensor:
    weight = _weight(state, prefix, training=training)
    return F.conv2d(x, weight, state.get(prefix + ".bias"), stride=stride, padding=weight.shape[-1] // 2)


def _spade(x: torch.Tensor, seg: torch.Tensor, state: StateDict, prefix: str, param_free: str,
           training: bool) -> torch.Tensor:
    if param_free == "instance":
        normalized = F.instance_norm(x, eps=BN_EPS)
    else:  # batch and syncbatch are the same on one process: batch statistics in training, running ones in eval
        normalized = F.batch_norm(x, state[prefix + ".param_free_norm.running_mean"],
                                  state[prefix + ".param_free_norm.running_var"], training=training, momentum=0.1,
                                  eps=BN_EPS)
    seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
    actv = F.relu(_conv(seg, state, prefix + ".mlp_shared.0", training=training))
    return (normalized * (1 + _conv(actv, state, prefix + ".mlp_gamma", training=training))
            + _conv(actv, state, prefix + ".mlp_beta", training=training))


def _resblock(x: torch.Tensor, seg: torch.Tensor, state: StateDict, prefix: str, param_free: str,
              training: bool) -> torch.Tensor:
    def norm(value: torch.Tensor, name: str) -> torch.Tensor:
        return _spade(value, seg, state, f"{prefix}.{name}", param_free, training)

    def conv(value: torch.Tensor, name: str) -> torch.Tensor:
        return _conv(value, state, f"{prefix}.{name}", training=training)

    x_s = conv(norm(x, "norm_s"), "conv_s") if any(key.startswith(prefix + ".conv_s.") for key in state) else x
    dx = conv(F.leaky_relu(norm(x, "norm_0"), LRELU), "conv_0")
    dx = conv(F.leaky_relu(norm(dx, "norm_1"), LRELU), "conv_1")
    return x_s + dx


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def official_generator_forward(state: StateDict, seg: torch.Tensor, z: torch.Tensor | None,
                               opt: Mapping[str, Any], *, training: bool = False) -> torch.Tensor:
    """The official `SPADEGenerator.forward` (`opt` as from `official_options`), in eval mode, or in training mode
    updating `state`'s spectral-norm vectors and batch-norm running statistics."""
    param_free = re.search(r"spade(\D+)(\d)x\d", opt["norm_G"]).group(1)
    mode = opt["num_upsampling_layers"]
    n = {"normal": 5, "more": 6, "most": 7}[mode]
    sw = opt["crop_size"] // 2 ** n
    sh = round(sw / opt["aspect_ratio"])
    if opt["use_vae"]:
        x = F.linear(z, state["fc.weight"], state["fc.bias"]).view(-1, 16 * opt["ngf"], sh, sw)
    else:
        x = _conv(F.interpolate(seg, size=(sh, sw), mode="nearest"), state, "fc", training=training)
    x = _resblock(x, seg, state, "head_0", param_free, training)
    x = _up(x)
    x = _resblock(x, seg, state, "G_middle_0", param_free, training)
    if mode in ("more", "most"):
        x = _up(x)
    x = _resblock(x, seg, state, "G_middle_1", param_free, training)
    for name in ("up_0", "up_1", "up_2", "up_3"):
        x = _resblock(_up(x), seg, state, name, param_free, training)
    if mode == "most":
        x = _resblock(_up(x), seg, state, "up_4", param_free, training)
    return torch.tanh(_conv(F.leaky_relu(x, LRELU), state, "conv_img", training=training))


def official_encoder_forward(state: StateDict, image: torch.Tensor, opt: Mapping[str, Any], *,
                             training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The official `ConvEncoder.forward` (layer6 only when crop_size >= 256) -> (mu, logvar); in training mode the
    spectral norms power-iterate and write their vectors back into `state`."""
    if image.shape[2:] != (256, 256):
        image = F.interpolate(image, size=(256, 256), mode="bilinear")
    names = ["layer1", "layer2", "layer3", "layer4", "layer5"] + (["layer6"] if opt["crop_size"] >= 256 else [])
    x = image
    for index, name in enumerate(names):
        x = F.instance_norm(_conv(x if index == 0 else F.leaky_relu(x, LRELU), state, name + ".0", stride=2,
                                  training=training), eps=BN_EPS)
    x = F.leaky_relu(x, LRELU).view(x.shape[0], -1)
    return (F.linear(x, state["fc_mu.weight"], state["fc_mu.bias"]),
            F.linear(x, state["fc_var.weight"], state["fc_var.bias"]))

