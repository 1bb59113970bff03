"""Winograd F(2x2, 3x3) and F(4x4, 3x3) compute the direct conv's function (to float rounding) in PyTorch, ONNX Runtime
and OpenVINO; the file holds the 3x3 weight, and ONNX Runtime folds the per-position weights into constants at load:
2-D MatMul weights (the ones it pre-packs) where the weights outweigh the activations, one batched weight elsewhere."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from spade_deploy.export.winograd import WinogradConv3x3

# On outputs of magnitude ~1 (by tile size): the direct conv's own float32 rounding is of the order of 2x2 tiles';
# 4x4 tiles round a few times more (the module docstring's measurements).
TOLERANCE = {2: 1e-5, 4: 4e-5}


def conv_and_input(in_channels: int, out_channels: int, height: int, width: int, batch: int, bias: bool = True):
    torch.manual_seed(in_channels * 1000 + height)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias).eval()
    with torch.no_grad():
        conv.weight.mul_(1.7)  # outputs of order 1, like the generator's activations
    return conv, torch.randn(batch, in_channels, height, width)


def winograd(conv: nn.Conv2d, x: torch.Tensor, tile: int) -> torch.Tensor:
    """The Winograd form of `conv` applied to the channels-first `x`, channels first."""
    module = WinogradConv3x3(conv, x.shape[2], x.shape[3], tile)
    return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("tile", [2, 4])
def test_without_its_bias_it_leaves_the_bias_to_the_caller(tile):
    conv, x = conv_and_input(8, 5, 12, 8, 2)
    module = WinogradConv3x3(conv, 12, 8, tile, bias=False)
    assert module.bias is None
    with torch.no_grad():
        got = module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert (got + conv.bias.view(-1, 1, 1) - conv(x)).abs().max() <= TOLERANCE[tile]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", [(8, 5, 12, 8, 2), (64, 32, 16, 8, 1), (3, 4, 4, 4, 3), (32, 48, 32, 32, 1)])
def test_matches_direct_conv(shape, tile):
    conv, x = conv_and_input(*shape)
    with torch.no_grad():
        expected = conv(x)
        got = winograd(conv, x, tile)
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max() <= TOLERANCE[tile]


def test_tile_2_on_sides_not_multiples_of_4():
    conv, x = conv_and_input(5, 6, 6, 10, 2)
    with torch.no_grad():
        assert (winograd(conv, x, 2) - conv(x)).abs().max() <= TOLERANCE[2]


@pytest.mark.parametrize("tile", [2, 4])
def test_without_bias(tile):
    conv, x = conv_and_input(6, 7, 4, 8, 1, bias=False)
    with torch.no_grad():
        assert (winograd(conv, x, tile) - conv(x)).abs().max() <= TOLERANCE[tile]


def test_large_activations_round_like_float32():
    """On activations of ~1e3 (as checkpoints with large activations reach), the error stays a float32 rounding:
    relative to the output's magnitude."""
    conv, x = conv_and_input(64, 32, 16, 16, 1)
    x = x * 1e3
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        for tile in (2, 4):
            error = (winograd(conv, x, tile).double() - expected).abs().max()
            assert error <= TOLERANCE[tile] * expected.abs().max()


def exported(tmp_path, tile: int, in_channels: int = 16, out_channels: int = 24):
    """(module, channels-last input [3, 12, 8, C], its expected output, the ONNX file of its Winograd form with a
    dynamic batch)."""
    conv, x = conv_and_input(in_channels, out_channels, 12, 8, 3)
    module = WinogradConv3x3(conv, 12, 8, tile)
    path = tmp_path / f"winograd-{tile}.onnx"
    x_last = x.permute(0, 2, 3, 1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notices
        torch.onnx.export(module, (x_last,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    with torch.no_grad():
        expected = conv(x).permute(0, 2, 3, 1).numpy()
    return module, x_last.numpy(), expected, path


# (tile, in and out channels): per-position 2-D weights (16 x 24 > 24 tiles x 40), one batched weight (4 x 4 < 6 x 8)
@pytest.mark.parametrize("tile, in_channels, out_channels", [(2, 16, 24), (4, 16, 24), (4, 4, 4)])
def test_onnx_runtime(tmp_path, tile, in_channels, out_channels):
    """The file stores the 3x3 weight (not the larger U), ONNX Runtime folds U into MatMul constants at load (one
    2-D weight per tile position, or one batched weight), and the output is the direct conv's to the same tolerance,
    at any batch."""
    module, x, expected, path = exported(tmp_path, tile, in_channels, out_channels)
    positions = (tile + 2) ** 2
    model = onnx.load(str(path))
    stored = sum(onnx.numpy_helper.to_array(tensor).nbytes for tensor in model.graph.initializer)
    assert stored == (module.taps.numel() + module.bias.numel()) * 4
    constants = [onnx.numpy_helper.to_array(attribute.t) for node in model.graph.node if node.op_type == "Constant"
                 for attribute in node.attribute]
    # The tap coefficients (one row per position where each position's weight is an Einsum of its own) and the two
    # transforms; no [C, O] matrix.
    coefficients = [(9,)] * positions if module.per_position else [(positions, 9)]
    assert sorted(constant.shape for constant in constants if constant.dtype == np.float32 and constant.size > 1) == (
        sorted([(tile ** 2, positions), (positions, positions), *coefficients]))

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL  # as make_session
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # its notice that an ORT_ENABLE_ALL graph is hardware-specific
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(options.optimized_model_filepath).graph
    initializers = {tensor.name: tensor for tensor in folded.initializer}
    weights = [list(initializers[node.input[1]].dims) for node in folded.node
               if node.op_type == "MatMul" and node.input[1] in initializers]
    if module.per_position:
        assert weights == [[in_channels, out_channels]] * positions
    else:
        assert weights == [[positions, in_channels, out_channels]]
    for batch in (3, 1):
        (y,) = session.run(None, {"x": x[:batch]})
        assert np.abs(y - expected[:batch]).max() <= TOLERANCE[tile]


@pytest.mark.parametrize("tile", [2, 4])
def test_openvino(tmp_path, tile):
    """OpenVINO folds U at load as well, and gives the direct conv's output (in f32)."""
    openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    _, x, expected, path = exported(tmp_path, tile)
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    y = compiled({"x": x})[compiled.output("y")]
    assert np.abs(y - expected).max() <= TOLERANCE[tile]


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 5, padding=2),
                                  nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")],
                         ids=["stride-2", "5x5", "no-padding", "groups", "reflect-padding"])
def test_rejects_other_convs(conv):
    with pytest.raises(ValueError, match="needs a 3x3 conv with stride 1, zero padding 1"):
        WinogradConv3x3(conv, 8, 8)


@pytest.mark.parametrize("size, tile, message", [((8, 8), 3, r"tile must be one of \[2, 4\], got 3"),
                                                 ((8, 6), 4, "multiples of the tile \\(4\\); got 8x6"),
                                                 ((0, 8), 2, "positive multiples of the tile \\(2\\); got 0x8")])
def test_rejects_bad_sizes_and_tiles(size, tile, message):
    with pytest.raises(ValueError, match=message):
        WinogradConv3x3(nn.Conv2d(4, 4, 3, padding=1), *size, tile)
