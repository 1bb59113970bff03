"""A 3x3 convolution (stride 1, zero padding 1) by Winograd's minimal filtering F(m x m, 3 x 3), m = 2 or 4: the same
function with (m + 2)^2 multiplications per m x m output tile and channel pair instead of 9 m^2 (16 instead of 36 for
m = 2, 36 instead of 144 for m = 4).

Per tile, `Y = A^T [(G W G^T) . (B^T D B)] A` for the (m + 2)^2 input tile D (stride m). The matrices are Toom-Cook's
for the interpolation points 0, 1, -1 (m = 2) and 0, 1, -1, 1/2, -2 (m = 4), and infinity: with those points F(4x4)
rounds about 3x less than with the textbook 0, +-1, +-2 (on 256-channel convs, max |error| 4e-5 against 1.2e-4 for
outputs of magnitude 16; F(2x2) and the direct conv 6e-6). The graph is four steps, each one ONNX op:
- a Gather cuts every input tile out of the zero-padded input, one `[tiles, C]` matrix per tile position;
- one MatMul by `B^T (x) B^T` (a Kronecker product, `(m + 2)^2` square) transforms them all;
- the products by `U = G W G^T`: one [C, O] matrix per tile position, either one batched MatMul or one 2-D MatMul per
  position. ONNX Runtime pre-packs 2-D MatMul weights when it loads the model and packs a batched one's on every call,
  so per-position MatMuls pay where the weights outweigh the activations (`per_position`);
- one MatMul by `A^T (x) A^T` gives the m x m outputs of every tile, and a transpose puts them in place.
The module stores the 3x3 weight W only: U is an Einsum of two constants, which ONNX Runtime and OpenVINO fold into
constants when they load the model. The TorchScript exporter does not fold Einsum, so the file holds W rather than U,
which is (m + 2)^2 / 9 its size. Per-position products take one Einsum per position, straight from W: an Einsum for
all positions cut into per-position slices would have the runtime hold U twice while it folds (ONNX Runtime keeps
every folded tensor until the pass ends), which raised the ADE20K 256x256 sparse export's peak memory while loading
by ~300 MiB and doubled its load time.

It pays where the MatMuls dominate the memory-bound transforms. On a 2-core CPU in ONNX Runtime (channels-last input
and output, against the direct conv with its layout reorders): F(2x2) 1.5x at 16x16 with 1024 channels; F(4x4)
1.4-2.3x from 32x32 (1024 channels) to 128x128 (128-256 channels), F(2x2) only 0.9-1.6x there; at 256x256 with 64-128
channels both are slower than the direct conv. `spade_deploy.export.sparse.winograd_tile` is where the generator's
sparse graph uses which.
"""
from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn


def _matrix(rows: list[list[Fraction | int]]) -> torch.Tensor:
    return torch.tensor([[float(value) for value in row] for row in rows], dtype=torch.float64)


_HALF, _THIRD, _FIFTEENTH = Fraction(1, 2), Fraction(1, 3), Fraction(1, 15)
# (B^T, G, A^T) by output tile size m. Every entry of B^T and A^T is exact in float32; G's thirds and fifteenths
# round once, in the weights.
TRANSFORMS: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {
    2: (_matrix([[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]),
        _matrix([[-1, 0, 0], [_HALF, _HALF, _HALF], [_HALF, -_HALF, _HALF], [0, 0, 1]]),
        _matrix([[1, 1, 1, 0], [0, 1, -1, 1]])),
    4: (_matrix([[1, -3 * _HALF, -2, 3 * _HALF, 1, 0], [0, -1, _HALF, 5 * _HALF, 1, 0],
                 [0, 1, -5 * _HALF, _HALF, 1, 0], [0, -2, -1, 2, 1, 0], [0, _HALF, -1, -_HALF, 1, 0],
                 [0, 1, -3 * _HALF, -2, 3 * _HALF, 1]]),
        _matrix([[1, 0, 0], [_THIRD, _THIRD, _THIRD], [-_THIRD, _THIRD, -_THIRD],
                 [-16 * _FIFTEENTH, -8 * _FIFTEENTH, -4 * _FIFTEENTH], [_FIFTEENTH, -2 * _FIFTEENTH, 4 * _FIFTEENTH],
                 [0, 0, 1]]),
        _matrix([[1, 1, 1, 1, 1, 0], [0, 1, -1, _HALF, -2, 0], [0, 1, 1, _HALF ** 2, 4, 0],
                 [0, 1, -1, _HALF ** 3, -8, 1]])),
}


def check_same_3x3(conv: nn.Conv2d, user: str) -> None:
    """Raise unless `conv` is a 3x3 conv with stride 1, zero padding 1, no dilation or groups (what `user`, a class
    name for the message, rewrites)."""
    shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros"):
        raise ValueError(f"{user} needs a 3x3 conv with stride 1, zero padding 1, no dilation or groups; got {conv}")


class TileTransform(nn.Module):
    """A constant matrix applied to every tile at once: `[N, positions in, X]` -> `[N, positions out, X]` (its own
    module so that profiles name its MatMul apart from the products by U)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x


class WinogradConv3x3(nn.Module):
    """`conv(x)` for a 3x3, stride-1, padding-1 `nn.Conv2d` (groups 1, dilation 1) on channels-last tensors of the size
    it is built for: `[N, height, width, C]` -> `[N, height, width, O]`, in output tiles of `tile` x `tile` (2 or 4;
    height and width multiples of it)."""

    def __init__(self, conv: nn.Conv2d, height: int, width: int, tile: int = 2, bias: bool = True) -> None:
        super().__init__()
        check_same_3x3(conv, "WinogradConv3x3")
        if tile not in TRANSFORMS:
            raise ValueError(f"tile must be one of {sorted(TRANSFORMS)}, got {tile}")
        if height % tile or width % tile or height < 1 or width < 1:
            raise ValueError(f"height and width must be positive multiples of the tile ({tile}); got {height}x{width}")
        weight = conv.weight.detach()  # [O, C, 3, 3]
        out_channels, in_channels = weight.shape[:2]
        self.tile, self.height, self.width, self.out_channels = tile, height, width, out_channels
        b_t, g, a_t = TRANSFORMS[tile]
        span = tile + 2  # the input tile's side
        # Taps last, so that contracting them gives each tile position's [C, O] matrix directly.
        self.register_buffer("taps", weight.permute(1, 0, 2, 3).reshape(in_channels, out_channels, 9).contiguous())
        # Row `span * a + b`: the coefficients of U[a][b] = (G W G^T)[a, b] over the 9 taps (3y + x).
        self.register_buffer("tap_coefficients", torch.einsum("ay,bx->abyx", g, g).reshape(span ** 2, 9).float(),
                             persistent=False)
        self.input_transform = TileTransform(torch.kron(b_t, b_t))
        self.output_transform = TileTransform(torch.kron(a_t, a_t))
        # Flat index, in the padded [height + 2, width + 2] grid, of tile position (a, b) of every tile (ty, tx).
        rows = torch.arange(span).view(-1, 1) + torch.arange(0, height, tile)  # [a, ty]: padded row of tile row a
        columns = torch.arange(span).view(-1, 1) + torch.arange(0, width, tile)  # [b, tx]
        index = rows.view(span, 1, -1, 1) * (width + 2) + columns.view(1, span, 1, -1)  # [a, b, ty, tx]
        self.register_buffer("tile_index", index.reshape(span ** 2, -1), persistent=False)
        # bias=False leaves the conv's bias out, for the caller to add where it costs no pass of its own
        self.register_buffer("bias", conv.bias.detach().clone() if bias and conv.bias is not None else None)
        tiles = (height // tile) * (width // tile)
        self.per_position = in_channels * out_channels > tiles * (in_channels + out_channels)

    def transformed_weights(self) -> torch.Tensor:
        """U = G W G^T for every tile position, `[span^2, C, O]`: in the exported graph an Einsum of two constants,
        which the runtime folds at load."""
        return torch.einsum("cot,kt->kco", self.taps, self.tap_coefficients)

    def position_weights(self, position: int) -> torch.Tensor:
        """U's `[C, O]` matrix for one tile position, an Einsum of W alone (the runtime folds it at load)."""
        return torch.einsum("cot,t->co", self.taps, self.tap_coefficients[position])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Every shape but the batch is known here: static reshapes (-1 for the batch) leave the exported graph without
        # the Shape/Gather/Concat chains that computing them from x would add.
        positions, tiles = self.tile_index.shape
        channels = self.taps.shape[0]
        flat = F.pad(x, (0, 0, 1, 1, 1, 1)).reshape(-1, (self.height + 2) * (self.width + 2), channels)
        picked = flat[:, self.tile_index]  # [N, positions, tiles, C]
        transformed = self.input_transform(picked.reshape(-1, positions, tiles * channels))
        transformed = transformed.reshape(-1, positions, tiles, channels)
        if self.per_position:
            products = torch.stack([transformed[:, k] @ self.position_weights(k) for k in range(positions)], 1)
        else:
            products = transformed @ self.transformed_weights()  # [N, positions, tiles, O]
        out = self.output_transform(products.reshape(-1, positions, tiles * self.out_channels))  # [N, tile^2, .]
        out = out.reshape(-1, self.tile, self.tile, self.height // self.tile, self.width // self.tile,
                          self.out_channels)
        out = out.permute(0, 3, 1, 4, 2, 5).reshape(-1, self.height, self.width, self.out_channels)
        return out if self.bias is None else out + self.bias
