"""The runtimes the in-process benchmark compares, as a registry: a name, how to build a runner, which ONNX graph it
runs, whether it is a plain baseline, and why it cannot run here (if so).

A runner maps the deployment graph's inputs (`io_spec` names and wire dtypes: uint8 `label` (+ int32 `instance`)
(+ float32 `z`)) to `image_float` `[N, 3, H, W]` float32, so every runtime is timed on the same inputs and compared
with the same reference. Every runtime is capped at `Subject.threads` intra-op threads.

Adding a runtime takes a build function and one `register` call; it can run every deployment graph of
`spade_deploy.export.metadata.GRAPHS`. The boundary-sparse graph of `spade_deploy.export.sparse` is registered this
way (`sparse-*`).
"""
from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime
import torch

from spade_deploy.export.graphs import generator_graph
from spade_deploy.export.metadata import GRAPHS
from spade_deploy.export.runtime import make_session
from spade_deploy.export.tensorrt import unavailable_reason as tensorrt_unavailable
from spade_deploy.model import io_spec
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.tensors import to_semantic_input

Feeds = dict[str, np.ndarray]  # graph inputs by io_spec name, in the contract's dtypes
Runner = Callable[[Feeds], np.ndarray]  # -> image_float [N, 3, H, W] float32


@dataclass(frozen=True)
class Subject:
    """What is benchmarked: the eager (unfolded) generator, the size, the thread cap and the exported graphs."""
    generator: SPADEGenerator  # eval mode; the reference every runtime is compared with
    height: int
    width: int
    threads: int  # intra-op threads of every runtime
    graphs: dict[str, Path]  # ONNX files by GRAPHS name, exported before any timing


@dataclass(frozen=True)
class Runtime:
    name: str
    summary: str  # one line for tables and --help
    build: Callable[[Subject, Path | None], Runner]  # (subject, ONNX file of `graph` or None) -> runner
    graph: str | None = None  # the GRAPHS entry it runs
    plain: bool = False  # a generic runtime on the plain export: a candidate for the "best plain" baseline
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run on this machine; None: it can


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    if runtime.graph is not None and runtime.graph not in GRAPHS:
        raise ValueError(f"runtime {runtime.name!r} runs graph {runtime.graph!r}, which is not in GRAPHS "
                         f"({sorted(GRAPHS)})")
    RUNTIMES[runtime.name] = runtime
    return runtime


def select(names: list[str] | None) -> list[Runtime]:
    """The named runtimes in registry order (all when `names` is None); an unknown name is a `ValueError`."""
    if names is None:
        return list(RUNTIMES.values())
    unknown = [name for name in names if name not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    return [runtime for name, runtime in RUNTIMES.items() if name in names]


# ------------------------------------------------------------------------------------------------ runners

def eager_runner(subject: Subject, _: Path | None) -> Runner:
    """The unfolded generator on the one-hot input, as users run the PyTorch model (a copy: its weights count in
    this runtime's memory)."""
    model = copy.deepcopy(subject.generator).eval()
    config = model.config

    def run(feeds: Feeds) -> np.ndarray:
        z = torch.from_numpy(feeds[io_spec.Z]) if io_spec.Z in feeds else None
        with torch.inference_mode():
            return model(to_semantic_input(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE), config), z).numpy()
    return run


def torch_graph_runner(graph: str) -> Callable[[Subject, Path | None], Runner]:
    """A deployment graph (`spade_deploy.export.graphs.generator_graph(graph=...)`) run by PyTorch itself, before
    any export."""
    def build(subject: Subject, _: Path | None) -> Runner:
        module = generator_graph(subject.generator, graph=graph, height=subject.height, width=subject.width)

        def run(feeds: Feeds) -> np.ndarray:
            with torch.inference_mode():
                _, image_float = module(*(torch.from_numpy(feeds[name]) for name in module.input_names))
            return image_float.numpy()
        return run
    return build


def onnxruntime_runner(subject: Subject, path: Path | None, providers: list[str] | None = None) -> Runner:
    """An ONNX graph in ONNX Runtime with the deployment's session options
    (`spade_deploy.export.runtime.make_session`)."""
    session = make_session(path, threads=subject.threads, providers=providers)

    def run(feeds: Feeds) -> np.ndarray:
        return session.run([io_spec.IMAGE_FLOAT], feeds)[0]
    return run


def openvino_runner(subject: Subject, path: Path | None) -> Runner:
    """An ONNX graph compiled by OpenVINO for the CPU: fp32, latency hint, the thread cap."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": subject.threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    output = compiled.output(io_spec.IMAGE_FLOAT)

    def run(feeds: Feeds) -> np.ndarray:
        return request.infer(feeds)[output].copy()  # the request reuses its output buffer on the next call
    return run


def tensorrt_runner(subject: Subject, path: Path | None) -> Runner:
    """Our folded graph in ONNX Runtime's TensorRT execution provider (fp32; CUDA for what TensorRT declines)."""
    return onnxruntime_runner(subject, path, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])


def _openvino_unavailable() -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'spade-deploy[bench]')"
    return None


def _tensorrt_unavailable() -> str | None:
    reason = tensorrt_unavailable()
    if reason is None and "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    return reason


register(Runtime("eager", "PyTorch eager, unfolded generator on the one-hot map (inference_mode)", eager_runner))
register(Runtime("folded-torch", "our folded graph in PyTorch", torch_graph_runner("dense")))
register(Runtime("plain-ort", "plain torch.onnx.export of the unfolded model in ONNX Runtime", onnxruntime_runner,
                 graph="plain", plain=True))
register(Runtime("plain-openvino", "plain torch.onnx.export of the unfolded model in OpenVINO", openvino_runner,
                 graph="plain", plain=True, unavailable=_openvino_unavailable))
register(Runtime("ort", "our folded ONNX graph in ONNX Runtime", onnxruntime_runner, graph="dense"))
register(Runtime("openvino", "our folded ONNX graph in OpenVINO", openvino_runner, graph="dense",
                 unavailable=_openvino_unavailable))
register(Runtime("tensorrt", "our folded ONNX graph in TensorRT (ONNX Runtime's TensorRT provider, fp32)",
                 tensorrt_runner, graph="dense", unavailable=_tensorrt_unavailable))
register(Runtime("sparse-torch", "our boundary-sparse graph in PyTorch", torch_graph_runner("sparse")))
register(Runtime("sparse-ort", "our boundary-sparse ONNX graph in ONNX Runtime", onnxruntime_runner, graph="sparse"))
register(Runtime("sparse-openvino", "our boundary-sparse ONNX graph in OpenVINO", openvino_runner, graph="sparse",
                 unavailable=_openvino_unavailable))
