"""The SPADE generator and the ConvEncoder, faithful to the paper and to the official NVlabs/SPADE code.

Module and parameter names follow the official release, so its `*_net_G.pth` / `*_net_E.pth` state dicts load
unchanged (spectral norm as `weight_orig`, `weight_u`, `weight_v`). `forward` never draws random numbers: the latent
`z` is an argument, drawn from a seed by `spade_deploy.model.sampling` (as a tensor by
`spade_deploy.model.tensors.sample_z`) or encoded from a style image by `spade_deploy.model.tensors.encode_style`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from spade_deploy.model.config import ENCODER_LATENT, EncoderConfig, GeneratorConfig

LEAKY_SLOPE = 0.2


def _param_free_norm(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    # "syncbatch" is plain BatchNorm here; training converts it with nn.SyncBatchNorm.convert_sync_batchnorm.
    return nn.BatchNorm2d(channels, affine=False)


def _maybe_spectral(conv: nn.Conv2d, spectral: bool) -> nn.Module:
    return spectral_norm(conv) if spectral else conv


class SPADE(nn.Module):
    """Spatially-adaptive normalisation: `norm(x) * (1 + gamma(seg)) + beta(seg)`."""

    def __init__(self, norm_nc: int, label_nc: int, *, norm: str = "syncbatch", hidden: int = 128,
                 kernel_size: int = 3) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.param_free_norm = _param_free_norm(norm, norm_nc)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=padding), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=padding)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """Residual block with SPADE before each conv; a learned 1x1 shortcut when the width changes."""

    def __init__(self, fin: int, fout: int, config: GeneratorConfig) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        spade = dict(label_nc=config.semantic_nc, norm=config.norm, hidden=config.spade_hidden,
                     kernel_size=config.spade_kernel)
        self.conv_0 = _maybe_spectral(nn.Conv2d(fin, fmiddle, 3, padding=1), config.spectral)
        self.conv_1 = _maybe_spectral(nn.Conv2d(fmiddle, fout, 3, padding=1), config.spectral)
        self.norm_0 = SPADE(fin, **spade)
        self.norm_1 = SPADE(fmiddle, **spade)
        if self.learned_shortcut:
            self.conv_s = _maybe_spectral(nn.Conv2d(fin, fout, 1, bias=False), config.spectral)
            self.norm_s = SPADE(fin, **spade)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LEAKY_SLOPE))
        return x_s + dx


class SPADEGenerator(nn.Module):
    """Label map (one-hot + instance edges, `[N, semantic_nc, H, W]`) and optional `z` -> image in [-1, 1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        nf = config.ngf
        if config.use_vae:
            self.fc = nn.Linear(config.z_dim, 16 * nf * config.latent_height * config.latent_width)
        else:
            self.fc = nn.Conv2d(config.semantic_nc, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResBlock(16 * nf, 16 * nf, config)
        self.G_middle_0 = SPADEResBlock(16 * nf, 16 * nf, config)
        self.G_middle_1 = SPADEResBlock(16 * nf, 16 * nf, config)
        self.up_0 = SPADEResBlock(16 * nf, 8 * nf, config)
        self.up_1 = SPADEResBlock(8 * nf, 4 * nf, config)
        self.up_2 = SPADEResBlock(4 * nf, 2 * nf, config)
        self.up_3 = SPADEResBlock(2 * nf, 1 * nf, config)
        final_nc = nf
        if config.num_upsampling_layers == "most":
            self.up_4 = SPADEResBlock(nf, nf // 2, config)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    def forward(self, semantic: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        config = self.config
        dtype = _parameter_dtype(self)
        _check_float_tensor("semantic", semantic, dtype, "the one-hot map spade_deploy.model.tensors."
                                                         "to_semantic_input builds")
        if semantic.dim() != 4 or semantic.shape[1] != config.semantic_nc:
            raise ValueError(f"semantic must be [N, {config.semantic_nc}, H, W] (spade_deploy.model.tensors."
                             f"to_semantic_input builds it), got shape {list(semantic.shape)}")
        if min(semantic.shape) < 1:
            raise ValueError(f"semantic must hold at least one label map of at least 1x1, got shape "
                             f"{list(semantic.shape)}")
        height, width = semantic.shape[2:]
        scale = 2 ** config.num_upsamplings
        if config.use_vae:
            if z is None:
                raise ValueError("this generator was trained with a VAE and needs z ([N, z_dim]); draw one with "
                                 "spade_deploy.model.tensors.sample_z or encode a style image")
            _check_float_tensor("z", z, dtype, "a latent")
            if z.dim() != 2 or z.shape[1] != config.z_dim:
                raise ValueError(f"z must be [N, {config.z_dim}] (z_dim={config.z_dim}), got shape {list(z.shape)}")
            if z.shape[0] != semantic.shape[0]:
                # One latent per label map: never broadcast one latent over many maps, or one map over many latents.
                raise ValueError(f"z must hold one latent per label map: z has shape {list(z.shape)}, semantic "
                                 f"{list(semantic.shape)}; their batch sizes must match")
            if (height, width) != config.image_size:
                raise ValueError(f"a VAE generator produces {config.image_size[0]}x{config.image_size[1]} images; "
                                 f"got a {height}x{width} label map")
            x = self.fc(z).unflatten(1, (16 * config.ngf, config.latent_height, config.latent_width))
        else:
            if z is not None:
                raise ValueError(f"this generator is not a VAE: it takes no z; pass z=None (got a z of shape "
                                 f"{list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__})")
            if height % scale or width % scale:
                raise ValueError(f"label map size {height}x{width} must be a multiple of {scale} "
                                 f"(2**{config.num_upsamplings} upsamplings)")
            x = self.fc(F.interpolate(semantic, size=(height // scale, width // scale), mode="nearest"))

        x = self.head_0(x, semantic)
        x = _up(x)
        x = self.G_middle_0(x, semantic)
        if config.num_upsampling_layers in ("more", "most"):
            x = _up(x)
        x = self.G_middle_1(x, semantic)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(_up(x), semantic)
        if config.num_upsampling_layers == "most":
            x = self.up_4(_up(x), semantic)
        x = self.conv_img(F.leaky_relu(x, LEAKY_SLOPE))
        return torch.tanh(x)


class ConvEncoder(nn.Module):
    """Style image in [-1, 1] (`[N, 3, h, w]`, any size) -> (mu, logvar), each `[N, 256]`."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        nf = config.ngf
        widths = [3, nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf, 8 * nf][: config.num_layers + 1]
        for index, (fin, fout) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            # The conv bias is removed because instance norm follows (official key layer<i>.0.*).
            conv = _maybe_spectral(nn.Conv2d(fin, fout, 3, stride=2, padding=1, bias=False), config.spectral)
            self.add_module(f"layer{index}", nn.Sequential(conv, nn.InstanceNorm2d(fout, affine=False)))
        flat = 8 * nf * config.final_size ** 2
        self.fc_mu = nn.Linear(flat, ENCODER_LATENT)
        self.fc_var = nn.Linear(flat, ENCODER_LATENT)

    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer{index}") for index in range(1, self.config.num_layers + 1)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_float_tensor("image", image, _parameter_dtype(self), "an RGB style image in [-1, 1]")
        if image.dim() != 4 or image.shape[1] != 3 or min(image.shape) < 1:
            raise ValueError(f"image must be [N, 3, h, w] RGB in [-1, 1] with every dimension >= 1 (spade_deploy."
                             f"model.tensors.rgb_to_tensor builds it from uint8 [N, h, w, 3]), got shape "
                             f"{list(image.shape)}")
        if image.shape[2:] != (256, 256):
            image = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
        x = image
        for index, layer in enumerate(self.layers()):
            x = layer(x if index == 0 else F.leaky_relu(x, LEAKY_SLOPE))
        x = F.leaky_relu(x, LEAKY_SLOPE).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _parameter_dtype(network: nn.Module) -> torch.dtype:
    return next(network.parameters()).dtype


def _check_float_tensor(name: str, value: object, dtype: torch.dtype, what: str) -> None:
    """Raise `ValueError` unless `value` is a floating tensor of the network's parameter dtype. Under autocast any
    floating dtype is taken: autocast casts the inputs of each op itself. Checks of type and dtype only, no values:
    forward is traced for the ONNX export."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor ({what}), got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor ({what}), got dtype {value.dtype}")
    if value.dtype != dtype and not torch.is_autocast_enabled(value.device.type):
        raise ValueError(f"{name} has dtype {value.dtype} but this network's parameters are {dtype}; convert one "
                         f"to the other (e.g. {name}.to({dtype}))")


@torch.no_grad()
def converge_spectral_norms(network: nn.Module) -> None:
    """Give every spectral-norm layer the top singular vectors of its `weight_orig` as `u`, `v`: the point its power
    iteration converges to, computed directly, since it can take hundreds of iterations where the two largest
    singular values lie close. Eval mode then divides by `u . (W v)`, the exact largest singular value."""
    for layer in network.modules():
        if not hasattr(layer, "weight_orig"):
            continue
        matrix = layer.weight_orig.reshape(layer.weight_orig.shape[0], -1)  # [out, in * kh * kw]
        left, _, right = torch.linalg.svd(matrix.float(), full_matrices=False)
        layer.weight_u.copy_(left[:, 0])
        layer.weight_v.copy_(right[0])


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The official initialisation as it really runs: xavier-normal weights (gain 0.02) for the convs and linears
    without spectral norm, PyTorch's default weights for those with it, zero biases for all.

    The official code moves a network to the GPU before initialising it, and `.cuda()` gives `weight_orig` new storage
    while spectral norm's plain `weight` attribute keeps the old one: the xavier init lands in that stale copy, which
    the next forward overwrites. Writing it into `weight_orig` would start those layers ~30x smaller."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            if not hasattr(layer, "weight_orig"):
                nn.init.xavier_normal_(layer.weight.data, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias.data)
