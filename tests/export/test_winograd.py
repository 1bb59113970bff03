"""Winograd F(2x2, 3x3) computes the direct conv's function (to float rounding) in PyTorch, ONNX Runtime and
OpenVINO; its file holds the 3x3 weight, and ONNX Runtime folds the per-position weights into 2-D MatMul constants (the
ones it pre-packs) at load."""
from __future__ import annotations

import warnings

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


def exported(tmp_path):
    """(conv, channels-last input [3, 12, 8, 16], its expected output, the ONNX file of its Winograd form with a
    dynamic batch)."""
    conv, x = conv_and_input(16, 24, 12, 8, 3)
    path = tmp_path / "winograd.onnx"
    x_last = x.permute(0, 2, 3, 1).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and constant-folding notices
        torch.onnx.export(WinogradConv3x3(conv), (x_last,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    with torch.no_grad():
        expected = conv(x).permute(0, 2, 3, 1).numpy()
    return conv, x_last.numpy(), expected, path


def test_onnx_runtime(tmp_path):
    """The file stores the 3x3 weight (not the 16/9 larger U), ONNX Runtime folds U into 16 2-D MatMul constants at
    load, and the output is the direct conv's to the same tolerance, at any batch."""
    conv, x, expected, path = exported(tmp_path)
    model = onnx.load(str(path))
    stored = sum(onnx.numpy_helper.to_array(tensor).nbytes for tensor in model.graph.initializer)
    assert stored == (conv.weight.numel() + conv.bias.numel()) * 4
    constants = [onnx.numpy_helper.to_array(attribute.t) for node in model.graph.node if node.op_type == "Constant"
                 for attribute in node.attribute]
    assert max(constant.size for constant in constants) < 16 * 24  # coefficients and shapes; no [C, O] matrix

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL  # as make_session
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # its notice that an ORT_ENABLE_ALL graph is hardware-specific
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(options.optimized_model_filepath).graph
    initializers = {tensor.name: tensor for tensor in folded.initializer}
    matmuls = [node for node in folded.node if node.op_type == "MatMul"]
    assert len(matmuls) == 16
    assert all(node.input[0] not in initializers and list(initializers[node.input[1]].dims) == [16, 24]
               for node in matmuls)
    for batch in (3, 1):
        (y,) = session.run(None, {"x": x[:batch]})
        assert np.abs(y - expected[:batch]).max() <= TOLERANCE


def test_openvino(tmp_path):
    """OpenVINO folds U at load as well, and gives the direct conv's output (in f32)."""
    openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    _, x, expected, path = exported(tmp_path)
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    y = compiled({"x": x})[compiled.output("y")]
    assert np.abs(y - expected).max() <= TOLERANCE


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 5, padding=2),
                                  nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                  nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")],
                         ids=["stride-2", "5x5", "no-padding", "groups", "reflect-padding"])
def test_rejects_other_convs(conv):
    with pytest.raises(ValueError, match="needs a 3x3 conv with stride 1, zero padding 1"):
        WinogradConv3x3(conv)
