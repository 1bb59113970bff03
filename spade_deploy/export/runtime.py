"""Running exported graphs in ONNX Runtime (CPU by default), with the inputs checked before they reach the graph.

A graph fed an out-of-range label would gather garbage or fail with an opaque kernel error; these wrappers turn
every bad input into the `ValueError` of `spade_deploy.model.io_spec` that names the input, what was expected and
what was seen. Torch-free: the served models run their graphs with `make_session`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.model import io_spec
from spade_deploy.model.images import as_rgb_batch


def make_session(path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session with full graph optimisation; `threads` caps intra-op threads."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such ONNX file: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class OnnxGenerator:
    """`generator.onnx` in ONNX Runtime: `(labels, instances, z) -> (image uint8 [N,H,W,3], image_float)`."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.metadata = read_export_metadata(path)
        self.config, self.height, self.width = self.metadata.config, self.metadata.height, self.metadata.width
        self.io = io_spec.generator_io(self.config, self.height, self.width)
        self.session = make_session(path, threads=threads, providers=providers)

    def feeds(self, labels: np.ndarray, instances: np.ndarray | None = None,
              z: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Validated graph inputs, keyed by the contract's names."""
        return io_spec.generator_feeds(self.config, self.height, self.width, labels, instances, z)

    def __call__(self, labels: np.ndarray, instances: np.ndarray | None = None,
                 z: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        image, image_float = self.session.run(self.io.output_names, self.feeds(labels, instances, z))
        return image, image_float


class OnnxEncoder:
    """`encoder.onnx` in ONNX Runtime: uint8 RGB style images `[N, h, w, 3]` -> (mu, logvar)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.io = io_spec.encoder_io()
        self.session = make_session(path, threads=threads, providers=providers)

    def __call__(self, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.session.run(self.io.output_names, {io_spec.STYLE: as_rgb_batch(style)})
        return mu, logvar
