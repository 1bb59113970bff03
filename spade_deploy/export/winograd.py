"""A 3x3 convolution (stride 1, zero padding 1) by Winograd's minimal filtering F(2x2, 3x3): the same function with
16 multiplications per 2x2 output tile and channel pair instead of 36.

Per tile, `Y = A^T [(G W G^T) . (B^T D B)] A` for the 4x4 input tile D (stride 2). The module stores the 3x3 weight
W only: `U = G W G^T` is one Einsum of two constants per tile position, which ONNX Runtime and OpenVINO fold into
constants when they load the model (and ONNX Runtime then pre-packs as MatMul weights). The TorchScript exporter does
not fold Einsum, so the file holds W rather than U, which is 16/9 its size. The transforms of D and of the product are
additions and subtractions, and the product is one MatMul per tile position (16). The rounding differs from a direct
conv by a few float32 ulps of the result.

It pays where the MatMuls dominate the memory-bound transforms: many channels at low resolution (on a 2-core CPU in
ONNX Runtime, 1.5-1.7x for 1024 channels at 16x16 and 32x32; at 256x256 with 64-128 channels it is slower than the
direct conv). `spade_deploy.export.sparse.WINOGRAD_UP_TO` is where the generator's sparse graph uses it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Row 4a + b: the coefficients of U[a][b] = (G W G^T)[a, b] over the 9 taps (3y + x), G[a, y] G[b, x]. Products of
# 0, +-1/2 and 1: exact in float32.
_TAP_COEFFICIENTS = torch.einsum("ay,bx->abyx", _G, _G).reshape(16, 9)


def _input_transform(pairs: torch.Tensor, axis: int) -> list[torch.Tensor]:
    """B^T along a padded spatial axis split into (tiles + 1, 2) at `axis`, `axis + 1`: the 4 rows of tile i are
    (even, odd) of pair i and of pair i + 1."""
    even, odd = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
    tiles = even.shape[axis] - 1
    e0, e1 = even.narrow(axis, 0, tiles), even.narrow(axis, 1, tiles)
    o0, o1 = odd.narrow(axis, 0, tiles), odd.narrow(axis, 1, tiles)
    return [e0 - e1, o0 + e1, e1 - o0, o0 - o1]


def _output_transform(m: list[torch.Tensor]) -> list[torch.Tensor]:
    """A^T over the 4 tile positions -> the 2 output positions."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


class WinogradConv3x3(nn.Module):
    """`conv(x)` for a 3x3, stride-1, padding-1 `nn.Conv2d` (groups 1, dilation 1) on channels-last tensors:
    `[N, H, W, C]` with even H and W -> `[N, H, W, O]`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
        if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"):
            raise ValueError(f"WinogradConv3x3 needs a 3x3 conv with stride 1, zero padding 1, no dilation or groups; "
                             f"got {conv}")
        weight = conv.weight.detach()  # [O, C, 3, 3]
        self.out_channels = weight.shape[0]
        # Taps last, so that contracting them gives each tile position's [C, O] matrix directly: ONNX Runtime
        # pre-packs only 2-D MatMul weights (a [16, C, O] batch it would repack on every call).
        self.register_buffer("taps", weight.permute(1, 0, 2, 3).reshape(weight.shape[1], self.out_channels, 9)
                             .contiguous())  # [C, O, 9]
        self.register_buffer("tap_coefficients", _TAP_COEFFICIENTS.clone(), persistent=False)  # [16, 9]
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(self.out_channels)
        self.register_buffer("bias", bias.clone())

    def transformed_weight(self, a: int, b: int) -> torch.Tensor:
        """U[a][b] = (G W G^T)[a, b] as [C, O]: in the exported graph an Einsum of two constants, which the runtime
        folds at load. (ONNX Runtime folds a MatMul of [C, O, 9] by [9] about 100x slower, as a batch of C
        products.)"""
        return torch.einsum("cot,t->co", self.taps, self.tap_coefficients[4 * a + b])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape  # [N, H, W, C]
        padded = F.pad(x, (0, 0, 1, 1, 1, 1))  # [N, H + 2, W + 2, C]
        rows = _input_transform(padded.reshape(n, h // 2 + 1, 2, w + 2, c), 1)  # 4 x [N, H/2, W + 2, C]
        m = [[tile @ self.transformed_weight(a, b)  # [N, H/2, W/2, O]
              for b, tile in enumerate(_input_transform(row.reshape(n, h // 2, w // 2 + 1, 2, c), 2))]
             for a, row in enumerate(rows)]
        by_column = [_output_transform(list(column)) for column in zip(*m)]  # [b][i]: A^T over the rows a
        y = [_output_transform(list(row)) for row in zip(*by_column)]  # [i][j]: then over the columns b
        # Output pixel (2 t_y + i, 2 t_x + j), channels last: stacking keeps whole rows of O contiguous.
        out = torch.stack([torch.stack(row, 3) for row in y], 2)  # [N, H/2, 2, W/2, 2, O]
        return out.reshape(n, h, w, self.out_channels) + self.bias
