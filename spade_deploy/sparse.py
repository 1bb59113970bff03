"""Boundary-sparse SPADE modulation: the same function as the folded graph, with the gamma/beta conv evaluated only
where the label map is not locally constant.

Inside a SPADE, `actv(q)` depends on the labels in the 3x3 window of q, and `[A, B](p) = conv(actv)(p)` on the actv
in the 3x3 window of p. Where q's window is one class c and inside the image, `actv(q) = class_actv[c]`, a constant
computed once at export. Call A3 the pixels where that fails (mixed window, window leaving the image, or an instance
edge in it). By linearity of the conv,
    AB(p) = b + sum_t T[code(p + d_t), t],    T[c, t] = W_t @ class_actv[c],  T[q, t] = W_t @ actv(q) for q in A3,
with `code` a pixel's class (a zero row outside the image: the conv's zero padding) or, on A3, its own row. So
- actv and its matmul with the 9 taps are computed only on A3 (|A3| x 128 x 9 x 2C multiply-adds instead of
  H x W x 128 x 9 x 2C); the class rows of T come from the same matmul;
- AB differs from the per-class constant `ClassAB[c]` only on B5 = A3 dilated by 3x3 (the 5x5 window is mixed):
  there it is a 9-row gather and sum, everywhere else a table look-up.
All of it is standard ONNX (NonZero, Gather, MatMul, CumSum, Where, MaxPool), so the same graph runs in ONNX Runtime
and TensorRT. Blocks at resolutions where most pixels are boundary keep the dense folded path (see DENSE_BELOW).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.config import GeneratorConfig
from spade_deploy.fold import LEAKY_SLOPE, FoldedGenerator, FoldedResBlock, Modulation
from spade_deploy.networks import SPADE, SPADEGenerator, SPADEResBlock

# Blocks whose label map is smaller than this (on its shorter side) run dense: there nearly every pixel is near a
# label boundary and the sparse bookkeeping costs more than it saves. Measured on ADE20K 256x256 (ONNX Runtime,
# 2 threads, 16-region maps): sparse from 16 px up ran 2.81x the plain export, from 32 px up 2.29x, from 64 px 2.08x.
DENSE_BELOW = 16


class Level:
    """Index bookkeeping of one resolution, shared by every block that runs at it.

    Flat indices address a label map padded by 2 on each side (`[N, h + 4, w + 4]`), so every 3x3 neighbour of a
    pixel within 1 of the image exists; padding positions carry the sentinel label and belong to no set.
    """

    def __init__(self, labels: torch.Tensor, edge: torch.Tensor | None, num_labels: int) -> None:
        # labels: [N, h, w] int64; edge: [N, 1, h, w] float or None
        batch, height, width = labels.shape
        # A3: the 3x3 window is mixed, leaves the image (padding with -1 makes such windows mixed), or holds an
        # instance edge. Label indices are exact in float32.
        as_float = F.pad(labels.unsqueeze(1).float(), (1, 1, 1, 1), value=-1.0)  # [N, 1, h + 2, w + 2]
        a3 = F.max_pool2d(as_float, 3, stride=1) != -F.max_pool2d(-as_float, 3, stride=1)  # [N, 1, h, w]
        if edge is not None:
            a3 = a3 | (F.max_pool2d(edge, 3, stride=1, padding=1) > 0)
        b5 = F.max_pool2d(a3.float(), 3, stride=1, padding=1) > 0  # A3 dilated: the 5x5 window is mixed

        a3_padded = F.pad(a3.float(), (2, 2, 2, 2)).flatten() > 0  # [N * (h+4) * (w+4)]
        labels_padded = F.pad(labels, (2, 2, 2, 2), value=num_labels).flatten()
        a3_list = torch.nonzero(a3_padded).flatten()  # [P3] padded flat indices
        b5_list = torch.nonzero(F.pad(b5.float(), (2, 2, 2, 2)).flatten() > 0).flatten()  # [P5]
        offsets = torch.tensor([dy * (width + 4) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        tap_base = torch.arange(9) * (num_labels + 1)  # rows of tap t start at t * (labels + 1)
        a3_taps = a3_list.unsqueeze(1) + offsets  # [P3, 9]
        b5_taps = b5_list.unsqueeze(1) + offsets  # [P5, 9]
        # Rows of the mlp_shared per-tap label tables ([9 * (labels + 1), 3 * hidden]) for the windows of A3.
        self.a3_label_rows = labels_padded[a3_taps] + tap_base
        self.edge_taps = None
        if edge is not None:
            self.edge_taps = F.pad(edge, (2, 2, 2, 2)).flatten()[a3_taps]  # [P3, 9]
        # Code of every padded position: its label (the sentinel outside the image) or, on A3, labels + 1 + its rank
        # in the A3 list. Row `code * 9 + t` of a modulation's table holds W_t @ actv at that position.
        rank = torch.cumsum(a3_padded.long(), 0) - 1
        code = torch.where(a3_padded, rank + num_labels + 1, labels_padded)
        self.b5_rows = code[b5_taps] * 9 + torch.arange(9)  # [P5, 9]
        # Assembly code of every pixel: its class (constant AB) or labels + its rank in B5.
        b5_flat = b5.flatten()
        b5_rank = torch.cumsum(b5_flat.long(), 0) - 1
        self.assembly = torch.where(b5_flat, num_labels + b5_rank, labels.flatten()).view(batch, height, width)


class SparseModulation(nn.Module):
    """One SPADE as `norm(x) * A + B`, with `[A, B]` a per-class constant off B5 and, on B5,
    `b + sum_t T[code(p + d_t), t]`: T holds `W_t @ class_actv[c]` for classes (zero outside the image) and
    `W_t @ actv(q)` for A3 pixels, the only ones whose actv is not their class's."""

    def __init__(self, spade: SPADE, class_actv: torch.Tensor, num_labels: int) -> None:
        super().__init__()
        dense = Modulation(spade)  # batch-norm folding and gamma/beta merging, as in the dense graph
        self.instance_norm = dense.instance_norm
        self.eps = getattr(dense, "eps", 1e-5)
        weight = dense.affine.weight.detach().double()  # [2C, hidden, k, k]
        bias = dense.affine.bias.detach().double()
        out_channels, hidden = weight.shape[:2]  # 3x3 kernels: sparse_generator keeps other sizes dense
        self.channels = out_channels // 2
        taps = weight.permute(1, 2, 3, 0).reshape(hidden, 9, out_channels)  # [hidden, t, 2C]: W_t
        class_taps = torch.einsum("kh,htc->ktc", class_actv, taps)  # [labels, 9, 2C]
        self.register_buffer("class_ab", (class_taps.sum(1) + bias).float())  # [labels, 2C]
        self.register_buffer("bias", bias.float())
        self.register_buffer("tap_weight", taps.reshape(hidden, 9 * out_channels).float())

    def forward(self, x: torch.Tensor, actv: torch.Tensor, level: Level) -> torch.Tensor:
        # actv: [labels + 1 + P3, hidden]: class_actv, a zero row (outside the image), then the actv on A3; one
        # matmul gives the whole table T, rows `code * 9 + t`.
        table = (actv @ self.tap_weight).view(-1, 2 * self.channels)  # [(labels + 1 + P3) * 9, 2C]
        boundary = F.embedding(level.b5_rows, table).sum(1) + self.bias  # [P5, 2C]
        c = self.channels
        # A and B gathered separately: slicing a dense [N, 2C, h, w] map would copy it once more.
        scale = F.embedding(level.assembly, torch.cat([self.class_ab[:, :c], boundary[:, :c]]))
        shift = F.embedding(level.assembly, torch.cat([self.class_ab[:, c:], boundary[:, c:]]))
        if self.instance_norm:
            x = F.instance_norm(x, eps=self.eps)
        return x * scale.permute(0, 3, 1, 2) + shift.permute(0, 3, 1, 2)


class SparseResBlock(nn.Module):
    """A SPADE residual block whose three SPADEs share the sparse label bookkeeping and one residual gather."""

    def __init__(self, block: SPADEResBlock, config: GeneratorConfig) -> None:
        super().__init__()
        dense = FoldedResBlock(block, config)
        num_labels = config.num_label_channels
        self.hidden = config.spade_hidden
        shared = dense.shared  # LabelConv of the fused mlp_shared convs: tables [9, labels + 1, 3 * hidden]
        self.register_buffer("label_taps", shared.tables.reshape(9 * (num_labels + 1), -1))
        self.register_buffer("shared_bias", shared.bias.flatten())
        self.register_buffer("edge_weight", None if shared.edge_weight is None
                             else shared.edge_weight.flatten(1).t().contiguous())  # [9, 3 * hidden]
        class_actv = F.relu(shared.tables[:, :num_labels].double().sum(0) + shared.bias.flatten().double())
        self.num_labels = num_labels
        # Rows 0..labels-1: the actv of a pixel amid its class; row `labels`: zero, the conv's padding.
        self.register_buffer("class_actv", torch.cat([class_actv, class_actv.new_zeros(1, class_actv.shape[1])])
                             .float())
        spades = [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])
        mods = [SparseModulation(spade, class_actv[:, i * self.hidden:(i + 1) * self.hidden], num_labels)
                for i, spade in enumerate(spades)]
        self.mod_0, self.mod_1 = mods[0], mods[1]
        self.conv_0, self.conv_1 = dense.conv_0, dense.conv_1
        self.learned_shortcut = block.learned_shortcut
        if self.learned_shortcut:
            self.mod_s, self.conv_s = mods[2], dense.conv_s

    def prepare(self, labels: torch.Tensor, edge: torch.Tensor | None) -> Level:
        return Level(labels, edge, self.num_labels)

    def forward(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        actv = F.embedding(level.a3_label_rows, self.label_taps).sum(1) + self.shared_bias  # [P3, 3 * hidden]
        if self.edge_weight is not None:
            actv = actv + level.edge_taps @ self.edge_weight
        actv = torch.cat([self.class_actv, F.relu(actv)]).split(self.hidden, dim=1)
        x_s = self.conv_s(self.mod_s(x, actv[2], level)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.mod_0(x, actv[0], level), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.mod_1(dx, actv[1], level), LEAKY_SLOPE))
        return x_s + dx


def sparse_generator(generator: SPADEGenerator, height: int | None = None, width: int | None = None,
                     dense_below: int = DENSE_BELOW) -> FoldedGenerator:
    """The folded graph with boundary-sparse blocks wherever the block's label map at the export size
    (default: the config's) is at least `dense_below` on its shorter side."""
    graph = FoldedGenerator(generator)
    if generator.config.spade_kernel != 3:
        warnings.warn(f"the sparse graph needs 3x3 SPADE kernels; this model's are {generator.config.spade_kernel}x"
                      f"{generator.config.spade_kernel}, so every block stays dense", stacklevel=2)
        return graph.eval()
    default_height, default_width = generator.config.image_size
    height, width = height or default_height, width or default_width
    for index, (name, factor) in enumerate(zip(graph.block_names, graph.factors)):
        if min(height, width) // factor >= dense_below:
            graph.blocks[index] = SparseResBlock(getattr(generator, name), generator.config)
    return graph.eval()
