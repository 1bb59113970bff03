"""Running exported graphs as their export says: in ONNX Runtime (CPU by default), or in OpenVINO at the recorded
precision (bf16 exports), with the inputs checked before they reach the graph.

A graph fed an out-of-range label would gather garbage or fail with an opaque kernel error; these wrappers turn
every bad input into the `ValueError` of `spade_deploy.model.io_spec` that names the input, what was expected and
what was seen. OpenVINO is optional (`pip install "spade-deploy[openvino]"`) and imported only to run it.
Torch-free: the served models run their graphs with `open_session`.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from spade_deploy.errors import Failure
from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.export.precision import BF16, CPU_PRECISIONS, FP16, FP32, ONNXRUNTIME, runtime_for
from spade_deploy.model import io_spec
from spade_deploy.model.images import as_rgb_batch, check_not_empty
from spade_deploy.model.memory import release_freed_heap

_OPENVINO_TYPES = {FP32: "f32", BF16: "bf16"}  # our precision -> OpenVINO's INFERENCE_PRECISION_HINT
_FROM_OPENVINO = {"f32": FP32, "bf16": BF16, "f16": FP16}  # openvino.Type.get_type_name() -> ours


def make_session(path: str | Path, *, threads: int | None = None, providers: list[Any] | None = None,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session with the deployment's options (`session_options`) or the given ones; the heap that
    loading freed goes back to the system (`release_freed_heap`). `providers` as ONNX Runtime takes them (names, or
    (name, options) pairs); a `Failure` where one of them did not start: ONNX Runtime would only log that and run on
    what it could start (a CUDA provider whose libraries do not load: the CPU), and a check would pass on that."""
    path = _existing(path)
    providers = providers or ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), options or session_options(threads), providers=providers)
    except InvalidProtobuf:
        raise ValueError(f"{path} is not a readable ONNX model (ONNX Runtime cannot parse it)") from None
    requested = [provider if isinstance(provider, str) else provider[0] for provider in providers]
    missing = [name for name in requested if name not in session.get_providers()]
    if missing:
        raise Failure(f"ONNX Runtime did not start {', '.join(missing)} for {path} and would run it on "
                      f"{', '.join(session.get_providers())} instead (available in this build: "
                      f"{', '.join(ort.get_available_providers())}); its log above says why (for CUDA and TensorRT: "
                      f"libraries that do not load)")
    release_freed_heap()
    return session


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The deployment's ONNX Runtime options: full graph optimisation, no memory pattern; `threads` caps intra-op
    threads. The memory pattern (one buffer planned for a whole run, allocated beside the arena blocks of the run it
    was planned from) raised the peak resident memory of the ADE20K 256x256 sparse export by ~190 MiB and of the plain
    one by ~220 MiB, and bought no speed for either (benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-memory-pattern)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer (or None: ONNX Runtime's default), got {threads!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    return options


def openvino_unavailable() -> str | None:
    """Why OpenVINO cannot run here (naming the extra that installs it), or None."""
    if importlib.util.find_spec("openvino") is None:
        return 'OpenVINO is not installed (pip install "spade-deploy[openvino]")'
    return None


def openvino_settings(precision: str | None, threads: int | None = None) -> dict[str, object]:
    """OpenVINO's CPU settings for our sessions: the latency hint, at most `threads` threads, and the precision hint
    pinned to `precision` (FP32, BF16; None leaves OpenVINO's default)."""
    settings: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        settings["INFERENCE_NUM_THREADS"] = threads
    if precision is not None:
        settings["INFERENCE_PRECISION_HINT"] = _OPENVINO_TYPES[precision]
    return settings


def read_openvino_model(core: Any, path: Path) -> tuple[Any, bool]:
    """(the ONNX graph at `path` read by `core`, an `openvino.Core`, as an `openvino.Model`; whether it was fixed to
    one image): a generator export (the inputs of the generator contract, fixed but for the batch) gets a batch of 1
    (see `OpenVinoSession`)."""
    model = core.read_model(str(path))
    shapes = {port.any_name: port.get_partial_shape() for port in model.inputs}
    per_image = shapes.keys() <= {io_spec.LABEL, io_spec.INSTANCE, io_spec.Z} and all(
        shape.rank.is_static and shape.rank.get_length() > 1 and shape[0].is_dynamic
        and all(dimension.is_static for dimension in list(shape)[1:]) for shape in shapes.values())
    if per_image:
        model.reshape({name: [1, *[dimension.get_length() for dimension in list(shape)[1:]]]
                       for name, shape in shapes.items()})
    return model, per_image


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU (latency hint, `threads` caps its threads), with the `run` of
    an ONNX Runtime session. `precision` (FP32, BF16) pins OpenVINO's INFERENCE_PRECISION_HINT; None leaves its
    default, which is bf16 on CPUs with bf16 hardware. `self.precision` is what the compiled model reports it
    chose, so a pin the CPU cannot honour shows.

    A generator export (the inputs of the generator contract, fixed but for the batch) is compiled for one image and
    runs a batch image by image (`self.per_image`): with static shapes OpenVINO folds the transposes around our
    channels-last graphs' convs into its own layout reorders, which it does not with a dynamic batch (ADE20K
    256x256: the bf16 graph 18-20 % faster, the fp32 sparse graph 2-6 %, the plain model 2 %;
    benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique). Each image of a batch is computed on its own
    in every graph anyway."""

    def __init__(self, path: str | Path, *, precision: str | None, threads: int | None = None) -> None:
        path = _existing(path)
        reason = openvino_unavailable()
        if reason:
            raise Failure(f"{path} runs in OpenVINO, but {reason}")
        import openvino

        core = openvino.Core()
        model, self.per_image = read_openvino_model(core, path)
        self.compiled = core.compile_model(model, "CPU", openvino_settings(precision, threads))
        release_freed_heap()
        chosen = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.precision = _FROM_OPENVINO.get(chosen, chosen)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = [self.compiled.output(name) for name in output_names]
        if not self.per_image:
            return self._infer(outputs, feeds)
        sizes = {name: len(value) for name, value in feeds.items()}
        batches = set(sizes.values())
        if len(batches) != 1 or 0 in batches:
            raise ValueError(f"inputs must share one batch size of at least 1, got {sizes}")
        images = [self._infer(outputs, {name: value[index:index + 1] for name, value in feeds.items()})
                  for index in range(batches.pop())]
        return [np.concatenate(parts) for parts in zip(*images)]

    def _infer(self, outputs: list, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer(feeds)
            # Copies: the request reuses its output buffers on the next call.
            return [results[output].copy() for output in outputs]


def open_session(path: str | Path, precision: str = FP32, *, threads: int | None = None,
                 providers: list[str] | None = None) -> tuple[ort.InferenceSession | OpenVinoSession, str]:
    """The session an export at `precision` runs in (both take `.run(output_names, feeds)`) and the precision it
    computes in: fp32 in ONNX Runtime (its CPU kernels; `providers` apply), bf16 in OpenVINO (as OpenVINO reports what
    it chose: f32 on a CPU without bf16 hardware)."""
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"precision must be one of {list(CPU_PRECISIONS)}, got {precision!r}")
    if runtime_for(precision) == ONNXRUNTIME:
        return make_session(path, threads=threads, providers=providers), FP32
    if providers:
        raise ValueError(f"{path} is a {precision} export, which runs in OpenVINO: ONNX Runtime providers do not apply")
    session = OpenVinoSession(path, precision=precision, threads=threads)
    return session, session.precision


class OnnxGenerator:
    """`generator.onnx` as its export says it runs (`metadata.runtime` at `metadata.precision`: ONNX Runtime, or
    OpenVINO for bf16): `(labels, instances, z) -> (image uint8 [N,H,W,3], image_float)`. `precision` is what the
    session computes in: as OpenVINO reports it, or fp32 in ONNX Runtime (its CPU kernels); `providers` (ONNX
    Runtime's) apply to fp32 exports only."""

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.metadata = read_export_metadata(path)
        self.config, self.height, self.width = self.metadata.config, self.metadata.height, self.metadata.width
        self.io = io_spec.generator_io(self.config, self.height, self.width)
        self.runtime = self.metadata.runtime
        self.session, self.precision = open_session(path, self.metadata.precision, threads=threads,
                                                    providers=providers)

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
        inputs = [node.name for node in self.session.get_inputs()]
        if inputs != [io_spec.STYLE]:
            raise ValueError(f"{path} is not a style encoder export: its inputs are {inputs}, an encoder's "
                             f"[{io_spec.STYLE!r}] (encoder.onnx of `spade-deploy export onnx --encoder`)")

    def __call__(self, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.session.run(self.io.output_names, {io_spec.STYLE: check_not_empty(as_rgb_batch(style))})
        return mu, logvar


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such ONNX file: {path}")
    return path
