"""Writing the deployment graphs (`spade_deploy.export.graphs`) as ONNX, with the tensor names, dtypes, shapes and
dynamic axes of `spade_deploy.model.io_spec` and the export's metadata (`spade_deploy.export.metadata`), so a Triton
repository or a runtime can be built from the file alone.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from spade_deploy.export.graphs import DeployGenerator, encoder_graph, example_inputs, generator_graph
from spade_deploy.export.metadata import ExportMetadata
from spade_deploy.export.precision import FP32, ONNXRUNTIME
from spade_deploy.files import atomic_path
from spade_deploy.model import io_spec
from spade_deploy.model.labels import check_label_size
from spade_deploy.model.networks import ConvEncoder, SPADEGenerator

OPSET = 18


def export_generator_onnx(generator: SPADEGenerator, path: str | Path, *, height: int | None = None,
                          width: int | None = None, graph: str = "sparse") -> Path:
    """Write the generator's deployment graph (see `generator_graph`) to `path`: dynamic batch, fixed H x W
    (default: the config's size)."""
    default_height, default_width = generator.config.image_size
    height, width = height or default_height, width or default_width
    check_label_size(height, width, generator.config)
    return write_generator_onnx(generator_graph(generator, graph=graph, height=height, width=width), path,
                                height=height, width=width)


def write_generator_onnx(module: DeployGenerator, path: str | Path, *, height: int, width: int,
                         precision: str = FP32, runtime: str = ONNXRUNTIME) -> Path:
    """Write an already built deployment module (built for height x width) to `path`, recording the `precision`
    and `runtime` it is to run at (`spade_deploy.export.precision`; the graph itself is the same float32 graph)."""
    config = module.config
    check_label_size(height, width, config)
    metadata = ExportMetadata(config, height, width, module.graph, precision, runtime)  # checks the pair first
    _export(module, example_inputs(config, height, width), io_spec.generator_io(config, height, width), Path(path),
            metadata.to_props())
    return Path(path)


def export_encoder_onnx(encoder: ConvEncoder, path: str | Path) -> Path:
    """Write the encoder's deployment graph to `path` (dynamic batch and style image size)."""
    return write_encoder_onnx(encoder_graph(encoder), path)


def write_encoder_onnx(module: nn.Module, path: str | Path) -> Path:
    """Write an already built encoder deployment module to `path`."""
    _export(module, (torch.zeros(2, 64, 48, 3, dtype=torch.uint8),), io_spec.encoder_io(), Path(path), {})
    return Path(path)


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], model_io: io_spec.ModelIO, path: Path,
            metadata: dict[str, str]) -> None:
    with atomic_path(path) as temporary:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(module, inputs, str(temporary), input_names=model_io.input_names,
                              output_names=model_io.output_names, dynamic_axes=model_io.dynamic_axes(),
                              opset_version=OPSET, dynamo=False)
        model = onnx.load(str(temporary))
        _declare_shapes(model, model_io)
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(temporary))


def _declare_shapes(model: onnx.ModelProto, model_io: io_spec.ModelIO) -> None:
    """Write the contract's shapes on the graph outputs (tracing can leave symbolic names where sizes are fixed)."""
    for output in model.graph.output:
        spec = model_io.output(output.name)
        dims = output.type.tensor_type.shape.dim
        for dim, value in zip(dims, spec.batch_shape()):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value
