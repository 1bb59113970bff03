"""What an export is: the graphs it can hold, the tolerance it is checked to, and what its ONNX says about itself
(model config, export size, graph, the precision it runs at and the runtime that runs it) in its metadata.

Torch-free: the runtime wrapper, the Triton repository writer, the served models and the CLI read it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from spade_deploy.export.precision import BF16, CPU_PRECISIONS, FP32, ONNXRUNTIME, OPENVINO
from spade_deploy.model.config import GeneratorConfig

CONFIG_KEY = "spade_deploy.generator_config"
SIZE_KEY = "spade_deploy.size"
GRAPH_KEY = "spade_deploy.graph"
PRECISION_KEY = "spade_deploy.precision"
RUNTIME_KEY = "spade_deploy.runtime"

TOLERANCE = 1e-4  # max |delta| of every export against eager PyTorch on image_float (in [-1, 1]), mu and logvar

# The deployment graphs (built by spade_deploy.export.graphs), all computing the eager model's function.
GRAPHS: dict[str, str] = {
    "sparse": "boundary-sparse SPADE modulation, one row per distinct label window, Winograd main convs up to "
              "128 px (fewest operations, for CPUs; ONNX Unique, NonZero, Gather)",
    "sparse-bf16": "boundary-sparse from 32 px, for OpenVINO at bf16: batch norm as a per-channel step of its own "
                   "before each modulation and direct convs, as bf16 needs (folded into the modulation, x·A + B "
                   "cancels in bf16 where a norm's mean is large; Winograd's transforms round too), and the distinct "
                   "windows found by 1-D Unique of int32 keys (OpenVINO's Unique of rows is slow)",
    "sparse-tensorrt": "boundary-sparse without the window deduplication and direct convs: no ONNX Unique, so "
                       "TensorRT builds it",
    "dense": "folded only (every op dense)",
    "plain": "the unmodified model (baselines only)",
}


@dataclass(frozen=True)
class ExportMetadata:
    config: GeneratorConfig
    height: int  # the fixed output size of the export
    width: int
    graph: str  # the name in spade_deploy.export.graphs.GRAPHS
    precision: str = FP32  # what it runs at (spade_deploy.export.precision); older exports, without the key: fp32
    runtime: str = ONNXRUNTIME  # what runs it: bf16 runs in OpenVINO (ONNX Runtime's CPU kernels are fp32)

    def __post_init__(self) -> None:
        if self.precision not in CPU_PRECISIONS or self.runtime not in (ONNXRUNTIME, OPENVINO):
            raise ValueError(f"an export runs at one of {list(CPU_PRECISIONS)} in {ONNXRUNTIME} or {OPENVINO}, got "
                             f"{self.precision!r} in {self.runtime!r}")
        if self.precision == BF16 and self.runtime != OPENVINO:
            raise ValueError(f"a bf16 export runs in {OPENVINO}, not {self.runtime!r}")

    def to_props(self) -> dict[str, str]:
        return {CONFIG_KEY: json.dumps(self.config.to_dict()), SIZE_KEY: json.dumps([self.height, self.width]),
                GRAPH_KEY: self.graph, PRECISION_KEY: self.precision, RUNTIME_KEY: self.runtime}


def read_export_metadata(path: str | Path) -> ExportMetadata:
    """The metadata of a generator ONNX written by `spade_deploy.export.onnx.export_generator_onnx`."""
    if not Path(path).is_file():
        raise ValueError(f"no such ONNX file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not a model
        raise ValueError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None
    props = {prop.key: prop.value for prop in model.metadata_props}
    if CONFIG_KEY not in props:
        raise ValueError(f"{path} was not written by spade-deploy's generator export (no {CONFIG_KEY} metadata)")
    height, width = json.loads(props[SIZE_KEY])
    try:
        return ExportMetadata(GeneratorConfig.from_dict(json.loads(props[CONFIG_KEY])), height, width,
                              props.get(GRAPH_KEY, "unknown"), props.get(PRECISION_KEY, FP32),
                              props.get(RUNTIME_KEY, ONNXRUNTIME))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
