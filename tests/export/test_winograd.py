"""Winograd F(2x2, 3x3) computes the direct conv's function (to float rounding), in PyTorch and in ONNX Runtime, with
its per-position weights as 2-D MatMul constants (the ones ONNX Runtime pre-packs)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from spade_deploy.export.winograd import WinogradConv3x3

TOLERANCE = 1e-5  # on outputs of magnitude ~1; the direct conv's own float32 rounding is of the same order


def conv_and_input(in_channels: int, out_channels: int, height: int, width: int, batch: int, bias: bool = True):
    torch.manual_seed(in_channels * 1000 + height)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias).eval()
    with torch.no_grad():
        conv.weight.mul_(1.7)  # outputs of order 1, like the generator's activations
    return conv, torch.randn(batch, in_channels, height, width)


@pytest.mark.parametrize("shape", [(8, 5, 6, 10, 2), (64, 32, 16, 8, 1), (3, 4, 2, 2, 3), (32, 48, 32, 32, 1)])
def test_matches_direct_conv(shape):
    conv, x = conv_and_input(*shape)
    with torch.no_grad():
        expected = conv(x)
        got = WinogradConv3x3(conv)(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert expected.abs().max() > 0.5
    assert (got - expected).abs().max() <= TOLERANCE


def test_without_bias():
    conv, x = conv_and_input(6, 7, 4, 8, 1, bias=False)
    with torch.no_grad():
        assert (WinogradConv3x3(conv)(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) - conv(x)).abs().max() <= TOLERANCE


@pytest.mark.filterwarnings("ignore")  # the TorchScript exporter's deprecation and constant-folding notices
def test_onnx_runtime(tmp_path):
    """Exported with a dynamic batch, it runs in ONNX Runtime to the same tolerance, and every MatMul multiplies by a
    2-D initializer."""
    conv, x = conv_and_input(16, 24, 12, 8, 3)
    path = tmp_path / "winograd.onnx"
    x_last = x.permute(0, 2, 3, 1).contiguous()
    torch.onnx.export(WinogradConv3x3(conv), (x_last,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    model = onnx.load(str(path))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    matmuls = [node for node in model.graph.node if node.op_type == "MatMul"]
    assert len(matmuls) == 16
    assert all(len(initializers[node.input[1]].dims) == 2 for node in matmuls)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (3, 1):
        (y,) = session.run(None, {"x": x_last[:batch].numpy()})
        with torch.no_grad():
            expected = conv(x[:batch]).permute(0, 2, 3, 1).numpy()
        assert np.abs(y - expected).max() <= TOLERANCE


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 5, padding=2),
                                  nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")],
                         ids=["stride-2", "5x5", "no-padding", "groups", "reflect-padding"])
def test_rejects_other_convs(conv):
    with pytest.raises(ValueError, match="needs a 3x3 conv with stride 1, zero padding 1"):
        WinogradConv3x3(conv)
