"""The exact inference graph: a loaded generator/encoder rewritten to compute the same function with less work.

Rewrites, each exact up to float rounding:
1. spectral norm folded into plain weights from the stored u, v (`W / (u · W_mat v)`);
2. batch-norm running statistics folded into the SPADE modulation: `bn(x)(1 + g) + b = x·A + B`, so no
   normalisation op remains (instance norm depends on x and stays; for reduced precision, `normalize_first` keeps
   batch norm as a per-channel step of its own, `ChannelAffine`);
3. each SPADE's gamma and beta convs merged into one conv with 2C outputs, and the `mlp_shared` convs of a block
   (which read the same label map) fused into one;
4. every conv on the one-hot map (`mlp_shared`, and `fc` of segmap generators) evaluated as 9 table look-ups over
   the integer label map, resized once per resolution; the instance-edge channel is a 1-input-channel conv.
Folding is done in float64 and stored as float32, so the folded weights are as exact as float32 allows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import LEAKY_SLOPE, SPADE, ConvEncoder, SPADEGenerator, SPADEResBlock
from spade_deploy.model.tensors import instance_edges


def folded_weight(conv: nn.Module) -> torch.Tensor:
    """The eval-mode weight of a conv/linear, spectral norm divided out from the stored u, v (float64)."""
    if not hasattr(conv, "weight_orig"):
        return conv.weight.detach().double()
    weight = conv.weight_orig.detach().double()
    u, v = conv.weight_u.detach().double(), conv.weight_v.detach().double()
    sigma = torch.dot(u, weight.reshape(weight.shape[0], -1) @ v)
    return weight / sigma


def _plain_conv(conv: nn.Conv2d, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> nn.Conv2d:
    weight = folded_weight(conv) if weight is None else weight
    if bias is None and conv.bias is not None:
        bias = conv.bias.detach().double()
    plain = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=conv.stride, padding=conv.padding,
                      bias=bias is not None)
    plain.weight.data.copy_(weight.float())
    if bias is not None:
        plain.bias.data.copy_(bias.float())
    return plain.requires_grad_(False)


class LabelConv(nn.Module):
    """A conv over `[one-hot(labels), edge]` evaluated as one table look-up per tap over the label indices.

    `conv(onehot(m))[:, y, x] = sum over taps of W[:, m(y+dy, x+dx), dy, dx]`; zero padding is a sentinel label whose
    table row is zero. The optional instance-edge channel is linear too and stays a (1-input-channel) conv.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, num_label_channels: int, has_edge: bool) -> None:
        super().__init__()
        out_channels, _, kernel, _ = weight.shape  # weight: [C_out, labels (+ edge), k, k], float64
        self.kernel = kernel
        self.sentinel = num_label_channels
        taps = weight[:, :num_label_channels].permute(2, 3, 1, 0).reshape(kernel * kernel, num_label_channels,
                                                                          out_channels)
        tables = torch.cat([taps, taps.new_zeros(kernel * kernel, 1, out_channels)], dim=1)
        self.register_buffer("tables", tables.float())  # [k*k, labels + 1, C_out]
        self.register_buffer("bias", bias.float().view(1, -1, 1, 1))
        if has_edge:
            self.register_buffer("edge_weight", weight[:, num_label_channels:].float().contiguous())
        else:
            self.edge_weight = None

    def forward(self, padded: torch.Tensor, edge: torch.Tensor | None) -> torch.Tensor:
        # padded: [N, h + k - 1, w + k - 1] int64 label indices (sentinel outside); edge: [N, 1, h, w]
        height, width = padded.shape[1] - self.kernel + 1, padded.shape[2] - self.kernel + 1
        out = None
        for tap in range(self.kernel * self.kernel):
            dy, dx = divmod(tap, self.kernel)
            looked_up = F.embedding(padded[:, dy:dy + height, dx:dx + width], self.tables[tap])  # [N, h, w, C]
            out = looked_up if out is None else out + looked_up
        out = out.permute(0, 3, 1, 2) + self.bias
        if self.edge_weight is not None:
            out = out + F.conv2d(edge, self.edge_weight, padding=self.kernel // 2)
        return out


def _label_conv(convs: list[nn.Conv2d], config: GeneratorConfig) -> LabelConv:
    """Convs on the same one-hot map, concatenated along their outputs and turned into one `LabelConv`."""
    weight = torch.cat([folded_weight(conv) for conv in convs])
    bias = torch.cat([conv.bias.detach().double() for conv in convs])
    return LabelConv(weight, bias, config.num_label_channels, config.use_instance)


class ChannelAffine(nn.Module):
    """`x * scale + shift` per channel, batch norm as a step of its own (`Modulation`'s `normalize_first`), on
    channels-first `[N, C, h, w]` tensors or, `channels_last`, on `[N, h, w, C]` ones."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool = False) -> None:
        super().__init__()
        shape = (-1,) if channels_last else (-1, 1, 1)
        self.register_buffer("scale", scale.detach().float().reshape(shape))
        self.register_buffer("shift", shift.detach().float().reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def channels_last(self, input_bias: torch.Tensor | None = None) -> ChannelAffine:
        """The same step on channels-last tensors, taking in a per-channel bias b its input still lacks:
        `(x + b) s + t = x s + (t + b s)` (computed in float64)."""
        scale, shift = self.scale.double().flatten(), self.shift.double().flatten()
        if input_bias is not None:
            shift = shift + input_bias.detach().double() * scale
        return ChannelAffine(scale, shift, channels_last=True)


class Modulation(nn.Module):
    """`norm(x) * A + B` with `[A, B] = conv(actv)`: one SPADE with its gamma/beta convs merged.

    Batch norm is folded into the conv (`A = s(1 + gamma)`, `B = t(1 + gamma) + beta`, `s = 1/sqrt(var + eps)`,
    `t = -mean·s`), leaving no normalisation; instance norm stays and the `1 +` moves into A's bias.
    `normalize_first` keeps batch norm as a per-channel step `x·s + t` before `A = 1 + gamma`, `B = beta`
    (`batch_norm`, a `ChannelAffine`): the same function at one more pass, for reduced precision, where the folded form
    cancels (`x·A` and `B` large and opposite where the mean is large against the deviation) and a runtime fuses the
    step into the op before it (OpenVINO at bf16, ADE20K 256x256: 43.4 dB against 38.4 dB for the dense graph).
    """

    def __init__(self, spade: SPADE, normalize_first: bool = False) -> None:
        super().__init__()
        norm = spade.param_free_norm
        w_gamma, b_gamma = spade.mlp_gamma.weight.detach().double(), spade.mlp_gamma.bias.detach().double()
        w_beta, b_beta = spade.mlp_beta.weight.detach().double(), spade.mlp_beta.bias.detach().double()
        self.instance_norm = isinstance(norm, nn.InstanceNorm2d)
        self.batch_norm = None
        if self.instance_norm:
            self.eps = norm.eps
            scale, shift = torch.ones_like(b_gamma), torch.zeros_like(b_gamma)
        else:
            scale = 1.0 / torch.sqrt(norm.running_var.double() + norm.eps)
            shift = -norm.running_mean.double() * scale
            if normalize_first:
                self.batch_norm = ChannelAffine(scale, shift)
                scale, shift = torch.ones_like(scale), torch.zeros_like(shift)
        w_a = w_gamma * scale.view(-1, 1, 1, 1)
        b_a = b_gamma * scale + scale
        w_b = w_beta + w_gamma * shift.view(-1, 1, 1, 1)
        b_b = b_beta + b_gamma * shift + shift
        self.affine = _plain_conv(spade.mlp_gamma, torch.cat([w_a, w_b]), torch.cat([b_a, b_b]))

    def forward(self, x: torch.Tensor, actv: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(actv).chunk(2, dim=1)
        if self.instance_norm:
            x = F.instance_norm(x, eps=self.eps)
        elif self.batch_norm is not None:
            x = self.batch_norm(x)
        return x * scale + shift


class FoldedResBlock(nn.Module):
    """A SPADE residual block with its three SPADEs' shared convs fused into one label look-up."""

    channels_last = False  # layout of the activations it takes and returns: [N, C, h, w]

    def __init__(self, block: SPADEResBlock, config: GeneratorConfig, normalize_first: bool = False) -> None:
        super().__init__()
        spades = [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])
        self.hidden = config.spade_hidden
        self.shared = _label_conv([spade.mlp_shared[0] for spade in spades], config)
        self.mod_0 = Modulation(block.norm_0, normalize_first)
        self.mod_1 = Modulation(block.norm_1, normalize_first)
        self.conv_0, self.conv_1 = _plain_conv(block.conv_0), _plain_conv(block.conv_1)
        self.learned_shortcut = block.learned_shortcut
        if self.learned_shortcut:
            self.mod_s, self.conv_s = Modulation(block.norm_s, normalize_first), _plain_conv(block.conv_s)

    def prepare(self, labels: torch.Tensor, edge: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-resolution input of this block type (computed once, shared by the blocks at that resolution)."""
        pad = self.shared.kernel // 2
        return F.pad(labels, (pad, pad, pad, pad), value=self.shared.sentinel), edge

    def forward(self, x: torch.Tensor, level: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        padded, edge = level
        actv = F.relu(self.shared(padded, edge)).split(self.hidden, dim=1)
        x_s = self.conv_s(self.mod_s(x, actv[2])) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.mod_0(x, actv[0]), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.mod_1(dx, actv[1]), LEAKY_SLOPE))
        return x_s + dx


class FoldedGenerator(nn.Module):
    """label indices `[N, H, W]` (+ instance ids) (+ z) -> image `[N, 3, H, W]` in [-1, 1]; same function as the
    eager generator on `to_semantic_input(labels, instances)`, with none of the one-hot work.

    `blocks[i]` runs on the label map subsampled by `factors[i]`; a block may be swapped for another type with the
    same `prepare` / `forward` interface (the boundary-sparse block of `spade_deploy.export.sparse`), whose
    `channels_last` says the layout of the activations it takes and returns, and `upsamples` whether it takes them
    before the upsampling that precedes it (and upsamples them itself); the activations change layout only between
    blocks that differ, before upsampling (where they are smallest).
    """

    def __init__(self, generator: SPADEGenerator, normalize_first: bool = False) -> None:
        # normalize_first: batch norm as a step of its own before each modulation (`Modulation`)
        super().__init__()
        config = self.config = generator.config
        self.fc: nn.Module
        if config.use_vae:
            self.fc = nn.Linear(config.z_dim, generator.fc.out_features).requires_grad_(False)
            self.fc.load_state_dict(generator.fc.state_dict())
        else:
            self.fc = _label_conv([generator.fc], config)
        self.block_names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
        # Upsampling before each block; the label map of a block is the input subsampled by its factor.
        self.ups = [False, True, config.num_upsampling_layers in ("more", "most"), True, True, True, True]
        if config.num_upsampling_layers == "most":
            self.block_names.append("up_4")
            self.ups.append(True)
        factor, self.factors = 2 ** config.num_upsamplings, []
        for up in self.ups:
            factor //= 2 if up else 1
            self.factors.append(factor)
        self.blocks = nn.ModuleList(FoldedResBlock(getattr(generator, name), config, normalize_first)
                                    for name in self.block_names)
        self.conv_img = _plain_conv(generator.conv_img)

    def forward(self, label: torch.Tensor, instance: torch.Tensor | None = None,
                z: torch.Tensor | None = None) -> torch.Tensor:
        config = self.config
        labels = label.long()  # [N, H, W]
        edge = instance_edges(instance) if config.use_instance else None  # [N, 1, H, W]

        def subsample(factor: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            # Nearest downsizing by a power of two picks every f-th pixel: resize the integer map, not a one-hot.
            return labels[:, ::factor, ::factor], None if edge is None else edge[:, :, ::factor, ::factor]

        if config.use_vae:
            x = self.fc(z).unflatten(1, (16 * config.ngf, config.latent_height, config.latent_width))
        else:
            small, small_edge = subsample(2 ** config.num_upsamplings)
            x = self.fc(F.pad(small, (1, 1, 1, 1), value=config.num_label_channels), small_edge)  # fc is 3x3
        levels: dict[tuple[type, int], object] = {}
        channels_last = False
        for block, up, factor in zip(self.blocks, self.ups, self.factors):
            if block.channels_last != channels_last:
                channels_last = block.channels_last
                x = to_channels_last(x) if channels_last else to_channels_first(x)
            if up and not getattr(block, "upsamples", False):  # a block may upsample its input itself
                x = upsample_last(x) if channels_last else F.interpolate(x, scale_factor=2, mode="nearest")
            key = (type(block), factor)
            if key not in levels:
                levels[key] = block.prepare(*subsample(factor))
            x = block(x, levels[key])
        # conv_img may take channels-last activations too (the sparse graph's `sparse.TapSumConv`); it returns the
        # image channels first
        takes_last = getattr(self.conv_img, "channels_last", False)
        if channels_last != takes_last:
            x = to_channels_last(x) if takes_last else to_channels_first(x)
        return torch.tanh(self.conv_img(F.leaky_relu(x, LEAKY_SLOPE)))


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N, h, w, C]"""
    return x.permute(0, 2, 3, 1)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """[N, h, w, C] -> [N, C, h, w]"""
    return x.permute(0, 3, 1, 2)


def upsample_last(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling of channels-last `[N, h, w, C]` -> `[N, 2h, 2w, C]` (one Expand in ONNX: no layout
    change, unlike Resize, which works on NCHW)."""
    n, h, w, c = x.shape
    return x[:, :, None, :, None, :].expand(n, h, 2, w, 2, c).reshape(n, 2 * h, 2 * w, c)


class FoldedEncoder(nn.Module):
    """The ConvEncoder with spectral norm folded: image `[N, 3, h, w]` in [-1, 1] -> (mu, logvar)."""

    def __init__(self, encoder: ConvEncoder) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_plain_conv(layer[0]) for layer in encoder.layers())
        self.fc_mu = _linear(encoder.fc_mu)
        self.fc_var = _linear(encoder.fc_var)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)
        for index, conv in enumerate(self.convs):
            x = F.instance_norm(conv(x if index == 0 else F.leaky_relu(x, LEAKY_SLOPE)))
        x = F.leaky_relu(x, LEAKY_SLOPE).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def _linear(linear: nn.Linear) -> nn.Linear:
    plain = nn.Linear(linear.in_features, linear.out_features)
    plain.load_state_dict({"weight": folded_weight(linear).float(), "bias": linear.bias.detach()})
    return plain.requires_grad_(False)


def fold_generator(generator: SPADEGenerator) -> FoldedGenerator:
    """The exact inference graph of a loaded generator (eval mode, float32, CPU)."""
    return FoldedGenerator(generator).eval()


def fold_encoder(encoder: ConvEncoder) -> FoldedEncoder:
    return FoldedEncoder(encoder).eval()
