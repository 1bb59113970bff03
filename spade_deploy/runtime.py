"""Running exported graphs in ONNX Runtime (CPU by default), with the inputs checked before they reach the graph.

A graph fed an out-of-range label would gather garbage or fail with an opaque kernel error; these wrappers turn
every bad input into a `ValueError` that names the input, what was expected and what was seen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from spade_deploy import io_spec
from spade_deploy.images import as_rgb_batch
from spade_deploy.labels import as_label_batch, check_label_range
from spade_deploy.onnx_export import read_export_metadata


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
        self.config, self.height, self.width = read_export_metadata(path)
        self.io = io_spec.generator_io(self.config, self.height, self.width)
        self.session = make_session(path, threads=threads, providers=providers)

    def feeds(self, labels: np.ndarray, instances: np.ndarray | None = None,
              z: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Validated graph inputs, keyed by the contract's names."""
        label_batch = as_label_batch(labels)
        check_label_range(label_batch, self.config)
        batch = label_batch.shape[0]
        if tuple(label_batch.shape[1:]) != (self.height, self.width):
            raise ValueError(f"labels are {label_batch.shape[1]}x{label_batch.shape[2]}, but this graph was "
                             f"exported for {self.height}x{self.width} (re-export with --height/--width)")
        feeds = {io_spec.LABEL: label_batch.numpy().astype(np.uint8)}
        if self.config.use_instance:
            if instances is None:
                raise ValueError("this model uses instance edges: pass an instance-id map (instances=...)")
            instance_batch = as_label_batch(instances, "instances")
            if instance_batch.shape != label_batch.shape:
                raise ValueError(f"instances have shape {list(instance_batch.shape)}, labels "
                                 f"{list(label_batch.shape)}; they must match")
            feeds[io_spec.INSTANCE] = instance_batch.numpy().astype(np.int32)
        elif instances is not None:
            raise ValueError("this model takes no instance map (use_instance=False); pass instances=None")
        if self.config.use_vae:
            if z is None:
                raise ValueError(f"this VAE generator needs z [N, {self.config.z_dim}] (a seeded sample or an "
                                 f"encoded style)")
            z = np.asarray(z, dtype=np.float32)
            if z.shape != (batch, self.config.z_dim):
                raise ValueError(f"z must have shape [{batch}, {self.config.z_dim}], got {list(z.shape)}")
            feeds[io_spec.Z] = z
        elif z is not None:
            raise ValueError("this generator takes no z (use_vae=False); pass z=None")
        return feeds

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
