"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API; `tensorrt` is imported lazily).

Written against the documented TensorRT 10 API (Builder, OnnxParser, IBuilderConfig, IOptimizationProfile). It cannot
run on the development and CI machines (no GPU, TensorRT not installable there); its test skips with the reason.
FP16 builds keep the normalisation-sensitive layers in FP32: instance normalisation (its variance loses precision in
half), the last conv and the tanh (they decide the 8-bit output). TensorRT 11 drops the weakly-typed FP16 flag this
relies on, hence the `tensorrt<11` pin of the `gpu` extra.

Every engine is written with `<engine>.json` beside it: how it was built and its optimisation profile, which a Triton
repository serving it must follow (`spade_deploy.serve.repository` reads it; this module imports neither torch nor
TensorRT at import time). The contract's uint8 tensors (`label`, `style`, `image`) stay engine bindings, which
Triton's TensorRT backend binds as TYPE_UINT8: TensorRT (8.5 and later) takes uint8 at the network's edges only, so a
graph must cast a uint8 input before any other op and make a uint8 output by a cast; its ONNX parser refuses a uint8
tensor inside the network.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from spade_deploy.errors import Failure
from spade_deploy.files import atomic_path

WORKSPACE_BYTES = 4 << 30
# Style images of any size go through the encoder; the engine accepts this range (opt = the official 256).
STYLE_SIDE_RANGE = (32, 256, 1024)


class EngineUnavailable(Failure):
    """TensorRT or a CUDA GPU is missing: engines cannot be built on this machine."""


def unavailable_reason() -> str | None:
    """Why engines cannot be built here, or None when TensorRT and a CUDA GPU are present."""
    try:
        import tensorrt  # noqa: F401  (only probing)
    except ImportError:
        return "TensorRT is not installed (pip install 'spade-deploy[gpu]' on a machine with an NVIDIA GPU)"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


@dataclass(frozen=True)
class EngineOptions:
    fp16: bool = True  # FP16 kernels, normalisation-sensitive layers pinned to FP32
    max_batch: int = 8  # optimisation profile: batch 1..max_batch, tuned for max_batch


def fp32_node_names(onnx_path: Path) -> set[str]:
    """ONNX nodes that must stay FP32: instance norms, and the output conv and tanh before the image output. The
    output conv is the exporter's `conv_img` module: one Conv, or in the sparse graphs the MatMul, shifts and sums of
    `sparse.TapSumConv`; a Conv feeding the Tanh is pinned whatever its name."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    names = {node.name for node in graph.node
             if node.op_type == "InstanceNormalization" or "/conv_img/" in node.name}
    producer = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type == "Tanh":
            names.add(node.name)
            conv = producer.get(node.input[0])
            if conv is not None and conv.op_type == "Conv":
                names.add(conv.name)
    return names


def build_engine(onnx_path: Path, engine_path: Path, options: EngineOptions) -> dict[str, Any]:
    """Build and write `engine_path` plus its metadata (`write_engine`); returns the metadata."""
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(reason)
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise Failure(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for name, (minimum, optimum, maximum) in engine_profile(onnx_path, options.max_batch).items():
        profile.set_shape(name, minimum, optimum, maximum)
    config.add_optimization_profile(profile)
    # TensorRT computes fp32 convs in TF32 (10-bit mantissas) on Ampere and newer unless told not to: an fp32 engine,
    # and the fp32 layers of an fp16 one, are fp32.
    config.clear_flag(trt.BuilderFlag.TF32)

    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = fp32_node_names(onnx_path)
        floats = (trt.float32, trt.float16)
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            outputs = [layer.get_output(output) for output in range(layer.num_outputs)]
            # Only layers that compute floats: a pinned node's shape bookkeeping (the sparse graphs' int64
            # Constant, Shape, Unsqueeze ... under /conv_img/) has no fp32 implementation to obey.
            if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE) or not all(
                    tensor.dtype in floats for tensor in outputs):
                continue
            # The ONNX parser names a layer after its node (multi-layer nodes add a suffix).
            if layer.type == trt.LayerType.NORMALIZATION or any(layer.name.startswith(name) for name in pinned):
                layer.precision = trt.float32
                for output in range(layer.num_outputs):
                    layer.set_output_type(output, trt.float32)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise Failure(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    return write_engine(engine_path, bytes(serialized), onnx_path, options, tensorrt_version=trt.__version__,
                        gpu=torch.cuda.get_device_name(0))


def engine_profile(onnx_path: Path, max_batch: int) -> dict[str, list[list[int]]]:
    """The optimisation profile of an engine built from `onnx_path`: per input, its [min, opt, max] shapes (batch
    first), read from the graph's input shapes (`-1` = dynamic, as TensorRT sees them)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {tensor.name: list(_profile_shapes([dim.dim_value if dim.HasField("dim_value") else -1
                                               for dim in tensor.type.tensor_type.shape.dim], max_batch))
            for tensor in graph.input}


def write_engine(engine_path: Path, serialized: bytes, onnx_path: Path, options: EngineOptions,
                 **facts: Any) -> dict[str, Any]:
    """Write the engine and its metadata `<engine>.json` (atomically, each): the options and optimisation profile it
    was built with, and `facts` about the build (TensorRT version, GPU). Returns the metadata."""
    metadata = {**facts, "precision": "fp16 (norm/last conv/tanh fp32)" if options.fp16 else "fp32",
                "max_batch": options.max_batch, "onnx": onnx_path.name,
                "profile": engine_profile(onnx_path, options.max_batch)}
    _write_atomically(engine_path, serialized)
    _write_atomically(_metadata_path(engine_path), json.dumps(metadata, indent=2).encode())
    return metadata


def read_engine_metadata(engine_path: Path) -> dict[str, Any]:
    """The metadata `write_engine` put beside `engine_path`; a ValueError naming the file when it is missing."""
    path = _metadata_path(engine_path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"no readable metadata for the engine {engine_path} ({error}); `spade-deploy export trt` "
                         f"writes it beside the engine") from error
    if not isinstance(metadata, dict) or not isinstance(metadata.get("profile"), dict):
        raise ValueError(f"{path} does not give the engine's optimisation profile; rebuild the engine with "
                         f"`spade-deploy export trt`")
    return metadata


def _profile_shapes(shape: list[int], max_batch: int) -> tuple[list[int], list[int], list[int]]:
    """min/opt/max for one input: batch 1..max_batch; the style image's free sides over STYLE_SIDE_RANGE."""
    low, typical, high = STYLE_SIDE_RANGE
    minimum = [1] + [dim if dim >= 0 else low for dim in shape[1:]]
    optimum = [max_batch] + [dim if dim >= 0 else typical for dim in shape[1:]]
    maximum = [max_batch] + [dim if dim >= 0 else high for dim in shape[1:]]
    return minimum, optimum, maximum


def _metadata_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(engine_path.suffix + ".json")


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
