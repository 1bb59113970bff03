"""ONNX export of the deployment graphs, with the tensor names, dtypes and shapes of `spade_deploy.io_spec`.

The generator graph takes uint8 label indices (+ int32 instance ids) (+ z) and returns the uint8 RGB image and the
float image; the encoder graph takes a uint8 RGB style image of any size. The model config and the export size are
stored in the ONNX metadata, so a Triton repository or a runtime can be built from the file alone.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from spade_deploy import io_spec
from spade_deploy.config import GeneratorConfig
from spade_deploy.fold import fold_encoder, fold_generator, instance_edge_map
from spade_deploy.labels import check_label_size
from spade_deploy.networks import ConvEncoder, SPADEGenerator
from spade_deploy.sparse import WINOGRAD_UP_TO, sparse_generator

OPSET = 18
METADATA_CONFIG = "spade_deploy.generator_config"
METADATA_SIZE = "spade_deploy.size"
METADATA_GRAPH = "spade_deploy.graph"


def to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """float `[N, 3, H, W]` in [-1, 1] -> uint8 `[N, H, W, 3]`: `round((x + 1) * 127.5)` clamped to 0..255."""
    return torch.round((image + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class PlainGenerator(nn.Module):
    """The unmodified eager generator behind the deployment I/O (one-hot built in the graph): the baseline that
    benchmarks compare against, never what we ship."""

    def __init__(self, generator: SPADEGenerator) -> None:
        super().__init__()
        self.generator = generator
        self.config = generator.config

    def forward(self, label: torch.Tensor, instance: torch.Tensor | None = None,
                z: torch.Tensor | None = None) -> torch.Tensor:
        semantic = F.one_hot(label.long(), self.config.num_label_channels).permute(0, 3, 1, 2).float()
        if self.config.use_instance:
            semantic = torch.cat([semantic, instance_edge_map(instance)], dim=1)
        return self.generator(semantic, z)


class DeployGenerator(nn.Module):
    """Positional inputs in `io_spec` order -> (`image`, `image_float`)."""

    def __init__(self, core: nn.Module, config: GeneratorConfig) -> None:
        super().__init__()
        self.core = core
        self.input_names = [spec.name for spec in io_spec.generator_io(config, 1, 1).inputs]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        named = dict(zip(self.input_names, inputs))
        image = self.core(named[io_spec.LABEL], named.get(io_spec.INSTANCE), named.get(io_spec.Z))
        return to_uint8_image(image), image


class DeployEncoder(nn.Module):
    """uint8 `style` `[N, h, w, 3]` -> (`mu`, `logvar`), the official [-1, 1] scaling and 256x256 resize in-graph."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = style.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.core(image)


GRAPHS = {
    "sparse": "boundary-sparse SPADE modulation, one row per distinct label window, Winograd main convs at low "
              "resolution (fewest operations, for CPUs; ONNX Unique, NonZero, Gather)",
    "sparse-tensorrt": "boundary-sparse without the window deduplication and direct convs: no ONNX Unique, so "
                       "TensorRT builds it",
    "dense": "folded only (every op dense)",
    "plain": "the unmodified model (baselines only)",
}


def generator_graph(generator: SPADEGenerator, *, graph: str = "sparse", height: int | None = None,
                    width: int | None = None) -> DeployGenerator:
    """The deployment module of a generator (one of `GRAPHS`; the sparse ones are built for an export of height x
    width, which decides the resolutions where the sparse path pays)."""
    if graph in ("sparse", "sparse-tensorrt"):
        cpu = graph == "sparse"  # TensorRT cannot build Unique and picks its own conv algorithms (Winograd among them)
        core = sparse_generator(generator, height, width, unique_windows=cpu,
                                winograd_up_to=WINOGRAD_UP_TO if cpu else 0)
    elif graph == "dense":
        core = fold_generator(generator)
    elif graph == "plain":
        core = PlainGenerator(generator).eval()
    else:
        raise ValueError(f"graph must be one of {list(GRAPHS)}, got {graph!r}")
    return DeployGenerator(core, generator.config).eval()


def encoder_graph(encoder: ConvEncoder) -> DeployEncoder:
    return DeployEncoder(fold_encoder(encoder)).eval()


def example_inputs(config: GeneratorConfig, height: int, width: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero-filled inputs of the right dtypes and shapes (for tracing)."""
    return tuple(torch.zeros(batch, *spec.dims, dtype=_torch_dtype(spec.dtype))
                 for spec in io_spec.generator_io(config, height, width).inputs)


def export_generator_onnx(generator: SPADEGenerator, path: str | Path, *, height: int | None = None,
                          width: int | None = None, graph: str = "sparse") -> Path:
    """Write the generator's deployment graph (see `generator_graph`) to `path`: dynamic batch, fixed H x W
    (default: the config's size)."""
    config = generator.config
    default_height, default_width = config.image_size
    height, width = height or default_height, width or default_width
    check_label_size(height, width, config)
    model_io = io_spec.generator_io(config, height, width)
    module = generator_graph(generator, graph=graph, height=height, width=width)
    inputs = example_inputs(config, height, width)
    metadata = {METADATA_CONFIG: json.dumps(config.to_dict()), METADATA_SIZE: json.dumps([height, width]),
                METADATA_GRAPH: graph}
    return _export(module, inputs, model_io, Path(path), metadata)


def export_encoder_onnx(encoder: ConvEncoder, path: str | Path) -> Path:
    """Write the encoder's deployment graph to `path` (dynamic batch and style image size)."""
    model_io = io_spec.encoder_io()
    inputs = (torch.zeros(2, 64, 48, 3, dtype=torch.uint8),)
    return _export(encoder_graph(encoder), inputs, model_io, Path(path), {})


def read_export_metadata(path: str | Path) -> tuple[GeneratorConfig, int, int]:
    """(config, height, width) of a generator ONNX written by `export_generator_onnx`."""
    if not Path(path).is_file():
        raise ValueError(f"no such ONNX file: {path}")
    model = onnx.load(str(path), load_external_data=False)
    props = {prop.key: prop.value for prop in model.metadata_props}
    if METADATA_CONFIG not in props:
        raise ValueError(f"{path} was not written by spade-deploy's generator export (no {METADATA_CONFIG} metadata)")
    height, width = json.loads(props[METADATA_SIZE])
    return GeneratorConfig.from_dict(json.loads(props[METADATA_CONFIG])), height, width


def _export(module: nn.Module, inputs: tuple[torch.Tensor, ...], model_io: io_spec.ModelIO, path: Path,
            metadata: dict[str, str]) -> Path:
    dynamic = {spec.name: {0: "N", **{axis: f"{spec.name}_{axis}" for axis, dim in enumerate(spec.dims, 1)
                                      if dim < 0}}
               for spec in (*model_io.inputs, *model_io.outputs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(handle)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
            torch.onnx.export(module, inputs, temporary, input_names=model_io.input_names,
                              output_names=model_io.output_names, dynamic_axes=dynamic, opset_version=OPSET,
                              dynamo=False)
        model = onnx.load(temporary)
        _declare_shapes(model, model_io)
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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


def _torch_dtype(dtype) -> torch.dtype:
    return {"uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64, "float32": torch.float32}[dtype.name]
