"""Boundary-sparse SPADE modulation: the same function as the folded graph, with the gamma/beta conv evaluated only
where the label map is not locally constant.

Inside a SPADE, `actv(q)` depends on the labels in the 3x3 window of q, and `[A, B](p) = conv(actv)(p)` on the actv
in the 3x3 window of p. Where p's 5x5 window is one class c and inside the image, `[A, B](p)` is a per-class
constant `ClassAB[c]` computed once at export. Call B5 the other pixels. By linearity of the conv,
    AB(p) = b + sum_t T[code(p + d_t), t],    T[q, t] = W_t @ actv(q),
with `code` a zero row outside the image (the conv's zero padding). So
- actv and its matmul with the 9 taps are computed only for the pixels near B5, and only once per distinct 3x3
  window: along a boundary the same few window patterns repeat (ONNX Unique, in the form each runtime runs fastest;
  TensorRT, which cannot build Unique, keeps one row per pixel: `distinct_rows`);
- on B5, AB is a 9-row gather and sum (once per distinct 5x5 window), everywhere else a table look-up;
- the modulation `x * A + B` runs channels last, the layout of the look-ups, and so do the activations between
  sparse blocks; a block's input is upsampled inside the products that read it (`times`), and ONNX Runtime folds
  the transposes around direct convs into their layout reorders;
- the learned shortcut's 1x1 conv is applied to its SPADE's B at export (`SparseShortcut`), and the Winograd
  convs' biases are taken in by the next op that adds anyway;
- the block's own 3x3 convs run as Winograd F(2x2, 3x3) or F(4x4, 3x3) on those channels-last activations where
  that pays (`spade_deploy.export.winograd`, `winograd_tile`), its 1x1 shortcut conv as a MatMul, and the
  generator's output conv after a sparse last block as one MatMul and 9 shifted sums (`TapSumConv`): the rewrites
  here of work that does not depend on the labels.
All of it is standard ONNX (NonZero, Gather, MatMul, CumSum, Where, MaxPool, Unique). Blocks at resolutions where
most pixels are boundary keep the dense folded path (see DENSE_BELOW).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy.export.fold import (LEAKY_SLOPE, ChannelAffine, FoldedGenerator, FoldedResBlock, Modulation,
                                      to_channels_first, to_channels_last, upsample_last)
from spade_deploy.export.winograd import WinogradConv3x3, check_same_3x3
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import SPADEGenerator, SPADEResBlock

# Blocks whose label map is smaller than this (on its shorter side) run dense: there nearly every pixel is near a
# label boundary and the sparse bookkeeping costs about what it saves (8, 16 and 32 px measure alike; A/B runs on
# ADE20K 256x256 chose it).
DENSE_BELOW = 16
# The bf16 graph in OpenVINO: dense below 32 px, where OpenVINO's bf16 convs cost less than the bookkeeping (ADE20K
# 256x256 on AMD Zen 5, AVX512-BF16: 0.962-0.979 of the time with dense below 16 px in four same-process runs, 47.8
# against 47.7 dB from float64; below 64 px 0.975-0.999). With AMX, dense convs are cheaper still.
DENSE_BELOW_BF16 = 32
# Sparse blocks at most this size (shorter side) run their main 3x3 convs as Winograd convs
# (spade_deploy.export.winograd): up to it the MatMuls save more than the transforms cost, above it (at 256x256 with
# 64-128 channels) they do not. From LARGE_TILES_FROM up, in 4x4 output tiles (4x fewer multiplications than the
# direct conv), below it in 2x2 tiles (2.25x), which round less and run as fast where the weights, not the
# activations, are most of the memory traffic. Both chosen by timing each conv of ADE20K 256x256 in ONNX Runtime on
# a 2-core CPU. The file keeps the 3x3 weights; the runtime computes the Winograd ones (16/9 or 4x the size) when it
# loads the model, which costs load time, not file size.
WINOGRAD_UP_TO = 128
LARGE_TILES_FROM = 32
# How `distinct_rows` finds the distinct windows: ONNX Unique of the rows (fastest in ONNX Runtime), of one int32 key
# per row (in OpenVINO, whose Unique of rows is slow and whose CPU plugin computes int64 as int32), or not at all
# (every row its own: TensorRT builds no Unique).
ROWS, KEYS, EVERY_ROW = "rows", "keys", "every-row"
DEDUPLICATIONS = (ROWS, KEYS, EVERY_ROW)
_KEY_LIMIT = 2**31  # keys stay below it: int32
_INDEX = object()  # a key's bound in `distinct_rows`: an index among rows (or a column bounded by the data)


class Level:
    """Index bookkeeping of one resolution, shared by every block that runs at it.

    Flat indices address a label map padded by 2 on each side (`[N, h + 4, w + 4]`), so every 3x3 neighbour of a
    pixel within 1 of the image exists; padding positions carry the sentinel label.

    T is computed once per distinct window (`deduplicate`, one of DEDUPLICATIONS): `actv(q)` depends only on q's 3x3
    label (and edge) window, and AB(p) only on the T rows of p's 3x3 neighbours, so pixels with equal windows share
    rows. Along a boundary the same few window patterns repeat (on synthetic 16-region maps, 5,492 A3 pixels at
    256x256 have 624 distinct windows). With EVERY_ROW every pixel keeps its rows.
    """

    def __init__(self, labels: torch.Tensor, edge: torch.Tensor | None, num_labels: int,
                 deduplicate: str = ROWS) -> None:
        # labels: [N, h, w] int64; edge: [N, 1, h, w] float or None
        batch, height, width = labels.shape
        # A3: the 3x3 window is mixed, leaves the image (padding with -1 makes such windows mixed), or holds an
        # instance edge. Label indices are exact in float32.
        as_float = F.pad(labels.unsqueeze(1).float(), (1, 1, 1, 1), value=-1.0)  # [N, 1, h + 2, w + 2]
        a3 = F.max_pool2d(as_float, 3, stride=1) != -F.max_pool2d(-as_float, 3, stride=1)  # [N, 1, h, w]
        if edge is not None:
            a3 = a3 | (F.max_pool2d(edge, 3, stride=1, padding=1) > 0)
        b5 = F.max_pool2d(a3.float(), 3, stride=1, padding=1)  # A3 dilated: the 5x5 window is mixed
        near = F.max_pool2d(b5, 3, stride=1, padding=1)  # B5 dilated: the pixels whose T rows B5 reads

        offsets = torch.tensor([dy * (width + 4) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        near_padded = F.pad(near, (2, 2, 2, 2)).flatten() > 0  # [N * (h+4) * (w+4)]
        near_taps = torch.nonzero(near_padded).flatten().unsqueeze(1) + offsets  # [P, 9] padded flat indices
        windows = F.pad(labels, (2, 2, 2, 2), value=num_labels).flatten()[near_taps]  # [P, 9]
        if edge is not None:
            windows = torch.cat([windows, F.pad(edge, (2, 2, 2, 2)).flatten()[near_taps].long()], dim=1)
        bases = [num_labels + 1] * 9 + [2] * (windows.shape[1] - 9)  # labels and the sentinel; edge flags
        windows, inverse = distinct_rows(windows, bases, deduplicate)
        # Rows of the mlp_shared per-tap label tables ([9 * (labels + 1), 3 * hidden]) for each distinct window.
        self.window_label_rows = windows[:, :9] + torch.arange(9) * (num_labels + 1)  # [U, 9]
        self.window_edges = windows[:, 9:].float() if edge is not None else None  # [U, 9]
        # Code of every padded position near B5: 1 + its window's row; elsewhere (in particular outside the image,
        # the conv's zero padding) 0, a zero row. Row `code * 9 + t` of a modulation's table holds W_t @ actv there.
        rank = torch.cumsum(near_padded.long(), 0) - 1
        code = torch.where(near_padded, inverse[rank.clamp(min=0)] + 1, 0)
        b5_flat = b5.flatten() > 0
        b5_taps = torch.nonzero(F.pad(b5, (2, 2, 2, 2)).flatten() > 0).flatten().unsqueeze(1) + offsets
        b5_codes, b5_inverse = distinct_rows(code[b5_taps], [None] * 9, deduplicate)  # [U5, 9]: B5 is not empty
        self.b5_rows = b5_codes * 9 + torch.arange(9)
        # Assembly code of every pixel: its class (constant AB) or labels + its B5 row.
        b5_rank = torch.cumsum(b5_flat.long(), 0) - 1
        self.assembly = torch.where(b5_flat, num_labels + b5_inverse[b5_rank.clamp(min=0)],
                                    labels.flatten()).view(batch, height, width)


def check_deduplicate(deduplicate: str) -> None:
    """Raise unless `deduplicate` is one of DEDUPLICATIONS."""
    if deduplicate not in DEDUPLICATIONS:
        raise ValueError(f"deduplicate must be one of {list(DEDUPLICATIONS)}, got {deduplicate!r}")


def distinct_rows(rows: torch.Tensor, bases: list[int | None], deduplicate: str = ROWS
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct rows of `rows` [P, C] (int64; column c in [0, bases[c]), or bounded by the data where None), the
    index of each row among them); with EVERY_ROW, every row as its own.

    ROWS is ONNX Unique of the rows. KEYS tells rows apart by one integer key per row, built a few columns at a
    time: columns are multiplied into the key while it stays below 2**31, and then the key is replaced by its index
    among the distinct keys so far (ONNX Unique of a 1-D tensor). OpenVINO's CPU plugin computes int64 tensors as
    int32, and there its Unique of rows is slow (20-100 ms on 10-40 thousand rows; of a 1-D tensor, unsorted,
    0.2-0.6 ms). An index is below P, so a key stays in range while P times a column's base is below 2**31 (P below
    14 million rows for 151 labels); where int32 products wrap beyond that, equal keys may stand for different rows:
    every row is compared with its key's row, and if any differs, every row is kept as its own (exact, slower)."""
    check_deduplicate(deduplicate)
    every = torch.arange(rows.shape[0])
    if deduplicate == EVERY_ROW:
        return rows, every
    if deduplicate == ROWS:
        return torch.unique(rows, dim=0, return_inverse=True)
    # bound: an int where the key is below it by construction; INDEX where it is an index (or a column bounded by
    # the data), which one more column may be multiplied into; None where neither.
    key, bound = None, 1
    for column, base in sorted(zip(rows.unbind(1), bases), key=lambda pair: pair[1] or _KEY_LIMIT):
        if key is None:
            key, bound = column, base or _INDEX
            continue
        if not (bound is _INDEX or (bound and base and bound * base < _KEY_LIMIT)):
            key, bound = torch.unique(key, sorted=False, return_inverse=True)[1], _INDEX
        key = key * (column.max() + 1 if base is None else base) + column
        bound = bound * base if bound is not _INDEX and base else None
    distinct, inverse = torch.unique(key, sorted=False, return_inverse=True)
    # Each distinct key's row: any row with that key (all equal where the keys are exact).
    first = torch.zeros_like(distinct).scatter_(0, inverse, every)
    exact = (rows[first][inverse] == rows).all()
    kept = torch.cat([first, every])[torch.cat([torch.ones_like(first, dtype=torch.bool) & exact,
                                                torch.ones_like(every, dtype=torch.bool) & ~exact])]
    return rows[kept], torch.where(exact, inverse, every)


class PixelTable(nn.Module):
    """One output of a SPADE's 3x3 conv of its hidden activations (A, B, or B through the shortcut conv) at every
    pixel: a per-class constant off B5 and, on B5, `b + sum_t T[code(p + d_t), t]`, where T holds `W_t @ actv(q)`
    for the windows near B5 and a zero row for the conv's padding."""

    def __init__(self, taps: torch.Tensor, bias: torch.Tensor, class_actv: torch.Tensor) -> None:
        # taps: [hidden, 9, K] (W_t, float64); bias: [K]; class_actv: [labels, hidden], the actv amid each class
        super().__init__()
        hidden, _, self.channels = taps.shape
        per_class = torch.einsum("kh,htc->kc", class_actv, taps) + bias  # [labels, K]
        self.register_buffer("taps", taps.reshape(hidden, 9 * self.channels).float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("per_class", per_class.float())

    def forward(self, actv: torch.Tensor, level: Level) -> torch.Tensor:
        # actv: [1 + U, hidden]: a zero row (the padding), then the actv of each window -> [N, h, w, K]
        table = (actv @ self.taps).view(-1, self.channels)  # [(1 + U) * 9, K]: row `code * 9 + t`
        boundary = F.embedding(level.b5_rows, table).sum(1) + self.bias  # [U5, K]
        return F.embedding(level.assembly, torch.cat([self.per_class, boundary]))


def _spade_taps(dense: Modulation) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A's taps, A's bias, B's taps, B's bias) of a SPADE, float64, taps `[hidden, 9, C]`, after the batch-norm
    folding and gamma/beta merging of the dense graph (`fold.Modulation`)."""
    weight = dense.affine.weight.detach().double()  # [2C, hidden, 3, 3]: sparse_generator keeps other sizes dense
    bias = dense.affine.bias.detach().double()
    out_channels, hidden = weight.shape[:2]
    taps = weight.permute(1, 2, 3, 0).reshape(hidden, 9, out_channels)  # [hidden, t, 2C]: W_t
    c = out_channels // 2
    return taps[:, :, :c], bias[:c], taps[:, :, c:], bias[c:]


def _batch_norm_step(dense: Modulation, input_bias: torch.Tensor | None = None) -> ChannelAffine | None:
    """The batch-norm step a `normalize_first` modulation keeps, channels last and taking in a per-channel bias of its
    input (None where the modulation folds batch norm)."""
    return None if dense.batch_norm is None else dense.batch_norm.channels_last(input_bias)


class SparseModulation(nn.Module):
    """One SPADE as `norm(x) * A + B`, A and B `PixelTable`s (each its own table: the look-ups need them apart,
    and slicing one [2C] table would copy it). `input_bias` b is a per-channel bias the SPADE's input still lacks
    (the conv before it leaves it out), taken in here: `(x + b) A + B = x A + (B + b A)`, or into the batch-norm step
    where the dense modulation keeps one (`fold.Modulation`'s `normalize_first`)."""

    def __init__(self, dense: Modulation, class_actv: torch.Tensor, input_bias: torch.Tensor | None = None,
                 upsample: bool = False) -> None:
        # dense: the SPADE folded as in the dense graph. upsample: x comes at half the size, to be upsampled (`times`)
        super().__init__()
        self.upsample = upsample
        self.norm = _batch_norm_step(dense, input_bias)
        scale_taps, scale_bias, shift_taps, shift_bias = _spade_taps(dense)
        if input_bias is not None and self.norm is None:
            input_bias = input_bias.double()
            shift_taps, shift_bias = shift_taps + input_bias * scale_taps, shift_bias + input_bias * scale_bias
        self.scale = PixelTable(scale_taps, scale_bias, class_actv)
        self.shift = PixelTable(shift_taps, shift_bias, class_actv)

    def forward(self, x: torch.Tensor, actv: torch.Tensor, level: Level) -> torch.Tensor:
        # x: [N, h, w, C], channels last like the table look-ups (and instance-normalised by the block where the
        # SPADE uses instance norm)
        if self.norm is not None:
            x = self.norm(x)
        return times(x, self.scale(actv, level), self.upsample) + self.shift(actv, level)


class SparseShortcut(nn.Module):
    """The learned shortcut `conv_s(SPADE(x))`, its 1x1 conv W (+ c) applied to the shift at export:
    `(x A + B) W + c = (x A) W + (B W + c)`. The per-pixel shift then has the conv's O output channels, not its C
    inputs (half as many in the generator's up blocks), and no `+ B` pass runs on the C channels. `output_bias` is a
    bias of the block's other branch added here too (the Winograd conv_1 leaves it out)."""

    def __init__(self, dense: Modulation, conv: nn.Conv2d, class_actv: torch.Tensor,
                 output_bias: torch.Tensor | None = None, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm = _batch_norm_step(dense)
        scale_taps, scale_bias, shift_taps, shift_bias = _spade_taps(dense)
        self.conv = PointwiseConv(conv)
        weight = self.conv.weight.double()  # [C, O]
        bias = torch.zeros(weight.shape[1], dtype=torch.float64)
        for extra in (conv.bias, output_bias):
            if extra is not None:
                bias = bias + extra.detach().double()
        self.scale = PixelTable(scale_taps, scale_bias, class_actv)
        self.shift = PixelTable(shift_taps @ weight, shift_bias @ weight + bias, class_actv)

    def forward(self, x: torch.Tensor, actv: torch.Tensor, level: Level) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return self.conv(times(x, self.scale(actv, level), self.upsample)) + self.shift(actv, level)


def times(x: torch.Tensor, factor: torch.Tensor, upsample: bool = False) -> torch.Tensor:
    """`x * factor`, channels last; where `upsample`, x is half factor's size and upsampled first (nearest 2x) by
    broadcasting each of its pixels over a 2x2 block of factor, without writing the upsampled x out (in ONNX Runtime
    the two SPADEs that read an upsampled x at 256x256, 128 channels, take 1.25x less time so)."""
    if not upsample:
        return x * factor
    batch, height, width, channels = x.shape
    blocks = factor.reshape(batch, height, 2, width, 2, channels)
    return (x[:, :, None, :, None, :] * blocks).reshape(batch, 2 * height, 2 * width, channels)


class SparseResBlock(nn.Module):
    """A SPADE residual block whose SPADEs share the label bookkeeping of their resolution and one look-up of their
    hidden activations. It takes and returns channels-last activations `[N, h, w, C]`, the layout of the look-ups."""

    channels_last = True

    def __init__(self, block: SPADEResBlock, config: GeneratorConfig, deduplicate: str = ROWS,
                 winograd: tuple[int, int, int] | None = None, upsample: bool = False,
                 normalize_first: bool = False) -> None:
        # winograd: (height, width, tile) of the Winograd main convs, or None for direct ones. upsample: the block
        # takes its input at half its size and upsamples it (nearest 2x) itself, inside the ops that read it.
        # normalize_first: batch norm as a step of its own before each modulation (`fold.Modulation`).
        super().__init__()
        check_deduplicate(deduplicate)  # here, not first when the graph runs
        self.upsamples = upsample
        dense = FoldedResBlock(block, config, normalize_first)
        num_labels = config.num_label_channels
        self.hidden = config.spade_hidden
        self.deduplicate = deduplicate
        shared = dense.shared  # LabelConv of the fused mlp_shared convs: tables [9, labels + 1, 3 * hidden]
        self.register_buffer("label_taps", shared.tables.reshape(9 * (num_labels + 1), -1))
        self.register_buffer("shared_bias", shared.bias.flatten())
        self.register_buffer("edge_weight", None if shared.edge_weight is None
                             else shared.edge_weight.flatten(1).t().contiguous())  # [9, 3 * hidden]
        self.num_labels = num_labels
        # The actv of a pixel amid its class: what makes AB a per-class constant off B5.
        class_actv = F.relu(shared.tables[:, :num_labels].double().sum(0) + shared.bias.flatten().double())
        actvs = class_actv.split(self.hidden, dim=1)  # norm_0, norm_1, norm_s
        norm = block.norm_0.param_free_norm  # the same kind and eps in every SPADE of a block
        self.instance_norm_eps = norm.eps if isinstance(norm, nn.InstanceNorm2d) else None
        self.learned_shortcut = block.learned_shortcut
        # A Winograd conv adds its bias in a pass of its own; the biases go where they cost none: conv_0's into
        # mod_1's shift (instance norm would remove it: there it is left out), conv_1's into the learned shortcut's.
        # A direct Conv adds its bias in the same pass.
        bias_0 = bias_1 = None
        if winograd is None:
            self.conv_0, self.conv_1 = ChannelsLastConv(dense.conv_0), ChannelsLastConv(dense.conv_1)
        else:
            bias_0 = dense.conv_0.bias
            self.conv_0 = WinogradConv3x3(dense.conv_0, *winograd, bias=False)
            bias_1 = dense.conv_1.bias if self.learned_shortcut else None
            self.conv_1 = WinogradConv3x3(dense.conv_1, *winograd, bias=not self.learned_shortcut)
        self.mod_0 = SparseModulation(dense.mod_0, actvs[0], upsample=upsample)
        self.mod_1 = SparseModulation(dense.mod_1, actvs[1],
                                      input_bias=None if self.instance_norm_eps is not None else bias_0)
        if self.learned_shortcut:
            self.mod_s = SparseShortcut(dense.mod_s, dense.conv_s, actvs[2], output_bias=bias_1, upsample=upsample)

    def prepare(self, labels: torch.Tensor, edge: torch.Tensor | None) -> Level:
        return Level(labels, edge, self.num_labels, self.deduplicate)

    def forward(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        # x: [N, h, w, C]. The modulations and the convs run channels last too: ONNX Runtime folds the transposes
        # next to direct convs into their own layout reorders and cancels the pairs around Winograd ones.
        actv = F.embedding(level.window_label_rows, self.label_taps).sum(1) + self.shared_bias  # [U, 3 * hidden]
        if self.edge_weight is not None:
            actv = actv + level.window_edges @ self.edge_weight
        actv = torch.cat([actv.new_zeros(1, actv.shape[1]), F.relu(actv)]).split(self.hidden, dim=1)
        # Instance norm commutes with nearest upsampling (each pixel repeated 4 times: the same mean and variance).
        normalized = self.normalize(x)
        dx = self.conv_0(F.leaky_relu(self.mod_0(normalized, actv[0], level), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.mod_1(self.normalize(dx), actv[1], level), LEAKY_SLOPE))
        if self.learned_shortcut:
            return self.mod_s(normalized, actv[2], level) + dx
        if self.upsamples:
            return upsample_last(x) + dx
        return x + dx

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The SPADEs' parameter-free norm where it is instance norm (batch norm is folded into the tables, or is a
        step of the modulations); one for the SPADEs that share an input."""
        if self.instance_norm_eps is None:
            return x
        # A unit scale and zero shift given explicitly: without them the ONNX exporter needs a static channel count,
        # which it loses through the reshape of `fold.upsample_last`.
        ones = x.new_ones(x.shape[-1])
        normalized = F.instance_norm(to_channels_first(x), weight=ones, bias=torch.zeros_like(ones),
                                     eps=self.instance_norm_eps)
        return to_channels_last(normalized)


class PointwiseConv(nn.Module):
    """A 1x1 conv's weights (the learned shortcut's) on channels-last tensors as one MatMul, `[N, h, w, C]` ->
    `[N, h, w, O]`: no layout reorders around it, as a Conv would need (1.1-1.5x faster in ONNX Runtime from 32x32 to
    256x256). The conv's bias is left out, for the caller to add (`SparseShortcut` adds it with its shift)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or conv.padding != (0, 0):
            raise ValueError(f"PointwiseConv needs a 1x1 conv with stride 1, no padding or groups; got {conv}")
        self.register_buffer("weight", conv.weight.detach()[:, :, 0, 0].t().contiguous())  # [C, O]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class TapSumConv(nn.Module):
    """The generator's output conv (3x3, padding 1, few output channels) on the channels-last activations of a
    sparse last block, `[N, h, w, C]` -> `[N, O, h, w]`: one MatMul gives every pixel's contribution to each of its 9
    neighbours (`[N, h, w, 9 O]`), which are moved channels first (9 O channels, not C) and summed at their 9 offsets.
    Without it the C-channel input needs a transpose and a Conv layout reorder, and the Conv pads O = 3 output channels
    to a vector's width (in ONNX Runtime on ADE20K 256x256 about half the time of transpose, reorder and Conv)."""

    channels_last = True  # of its input; the output is channels first, the image's layout

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        check_same_3x3(conv, "TapSumConv")
        weight = conv.weight.detach()  # [O, C, 3, 3]
        self.out_channels = weight.shape[0]
        # Column (3 dy + dx) O + o: what a pixel adds to channel o of the output at offset (1 - dy, 1 - dx) from it.
        self.register_buffer("taps", weight.permute(1, 2, 3, 0).flatten(1).contiguous())  # [C, 9 O]
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(self.out_channels)
        self.register_buffer("bias", bias.view(-1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        taps = (x @ self.taps).view(batch, height, width, 9, self.out_channels).permute(0, 3, 4, 1, 2)
        taps = F.pad(taps, (1, 1, 1, 1))  # [N, 9, O, h + 2, w + 2]
        # Output (y, x) takes tap (dy, dx) of the input at (y + dy - 1, x + dx - 1): row y + dy of the padded taps.
        out = sum(taps[:, 3 * dy + dx, :, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))
        return out + self.bias


class ChannelsLastConv(nn.Module):
    """A conv on channels-last tensors, `[N, h, w, C]` -> `[N, h, w, O]`, like `WinogradConv3x3`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_last(self.conv(to_channels_first(x)))


def sparse_generator(generator: SPADEGenerator, height: int | None = None, width: int | None = None,
                     dense_below: int = DENSE_BELOW, deduplicate: str = ROWS,
                     winograd_up_to: int = WINOGRAD_UP_TO, normalize_first: bool = False) -> FoldedGenerator:
    """The folded graph with boundary-sparse blocks wherever the block's label map at the export size
    (default: the config's) is at least `dense_below` on its shorter side; `deduplicate` is how they find the
    distinct label windows (DEDUPLICATIONS: ROWS for ONNX Runtime, KEYS for OpenVINO, EVERY_ROW for TensorRT). The
    main 3x3 convs of sparse blocks at most `winograd_up_to` on their shorter side run as Winograd convs
    (`winograd_tile`); 0 turns it off.
    `normalize_first` keeps batch norm as a step of its own before each modulation, for bf16 (`fold.Modulation`)."""
    check_deduplicate(deduplicate)
    graph = FoldedGenerator(generator, normalize_first)
    if generator.config.spade_kernel != 3:
        warnings.warn(f"the sparse graph needs 3x3 SPADE kernels; this model's are {generator.config.spade_kernel}x"
                      f"{generator.config.spade_kernel}, so every block stays dense", stacklevel=2)
        return graph.eval()
    default_height, default_width = generator.config.image_size
    height, width = height or default_height, width or default_width
    for index, (name, factor) in enumerate(zip(graph.block_names, graph.factors)):
        block_height, block_width = height // factor, width // factor
        if min(block_height, block_width) >= dense_below:
            tile = winograd_tile(block_height, block_width, winograd_up_to)
            graph.blocks[index] = SparseResBlock(getattr(generator, name), generator.config, deduplicate,
                                                 (block_height, block_width, tile) if tile else None,
                                                 upsample=graph.ups[index], normalize_first=normalize_first)
    if graph.blocks[-1].channels_last:
        graph.conv_img = TapSumConv(graph.conv_img)
    return graph.eval()


def winograd_tile(height: int, width: int, up_to: int = WINOGRAD_UP_TO) -> int:
    """The Winograd output tile (4 or 2) for a block's main convs at height x width, or 0 for direct convs: Winograd
    up to `up_to` on the shorter side, 4x4 tiles from LARGE_TILES_FROM where both sides are multiples of 4, 2x2 tiles
    where both are even."""
    shorter = min(height, width)
    if shorter > up_to:
        return 0
    if shorter >= LARGE_TILES_FROM and height % 4 == 0 and width % 4 == 0:
        return 4
    return 2 if height % 2 == 0 and width % 2 == 0 else 0
