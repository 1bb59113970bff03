"""The runtimes the in-process benchmark compares, as a registry: a name, how to build a runner, which ONNX graph it
runs, whether it is a plain baseline, and why it cannot run here (if so).

A runner maps the deployment graph's inputs (`io_spec` names and wire dtypes: uint8 `label` (+ int32 `instance`)
(+ float32 `z`)) to `image_float` `[N, 3, H, W]` float32, so every runtime is timed on the same inputs and compared
with the same references; it also names the precision it computes in. Where the runtime chooses the precision itself
(OpenVINO runs bf16 on CPUs with bf16 hardware unless it is pinned to f32), the runner reports what the compiled model
says it chose, not what was asked for. Every CPU runtime is capped at `Subject.threads` intra-op threads. Precision
names, the CPU-flag rule of `fast` and the OpenVINO session are the export stage's (`spade_deploy.export.precision`,
`spade_deploy.export.runtime`): `fast` runs what `spade-deploy export onnx --precision bf16` writes on this CPU.

Adding a runtime takes a build function and one `register` call; it can run every deployment graph of
`spade_deploy.export.metadata.GRAPHS`. The boundary-sparse graph of `spade_deploy.export.sparse` is registered this
way (`sparse-*`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime
import torch

from spade_deploy.errors import Failure
from spade_deploy.export.graphs import generator_graph
from spade_deploy.export.metadata import GRAPHS
from spade_deploy.export.precision import FP16, FP32, OPENVINO, TF32, cpu_flags, fastest_choice
from spade_deploy.export.runtime import OpenVinoSession, make_session, openvino_unavailable
from spade_deploy.export.tensorrt import unavailable_reason as tensorrt_unavailable
from spade_deploy.model import io_spec
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.tensors import to_semantic_input

Feeds = dict[str, np.ndarray]  # graph inputs by io_spec name, in the contract's dtypes


@dataclass(frozen=True)
class Runner:
    """A built runtime: feeds -> image_float `[N, 3, H, W]` float32, and the precision it computes in."""
    run: Callable[[Feeds], np.ndarray]
    precision: str  # FP32, TF32, BF16 or FP16: as the runtime reports it where it chooses

    def __call__(self, feeds: Feeds) -> np.ndarray:
        return self.run(feeds)


@dataclass(frozen=True)
class Subject:
    """What is benchmarked: the eager (unfolded) generator, the size, the thread cap and the exported graphs."""
    generator: SPADEGenerator  # eval mode; the reference every runtime is compared with
    height: int
    width: int
    threads: int  # intra-op threads of every runtime
    graphs: dict[str, Path]  # ONNX files by GRAPHS name, exported before any timing
    max_batch: int = 8  # the largest batch it will run (TensorRT engines are built for 1..max_batch)


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
    return Runner(run, FP32)


def torch_graph_runner(graph: str) -> Callable[[Subject, Path | None], Runner]:
    """A deployment graph (`spade_deploy.export.graphs.generator_graph(graph=...)`) run by PyTorch itself, before
    any export."""
    def build(subject: Subject, _: Path | None) -> Runner:
        module = generator_graph(subject.generator, graph=graph, height=subject.height, width=subject.width)

        def run(feeds: Feeds) -> np.ndarray:
            with torch.inference_mode():
                _, image_float = module(*(torch.from_numpy(feeds[name]) for name in module.input_names))
            return image_float.numpy()
        return Runner(run, FP32)
    return build


def onnxruntime_runner(subject: Subject, path: Path | None, providers: list[Any] | None = None,
                       precision: str = FP32) -> Runner:
    """An ONNX graph in ONNX Runtime with the deployment's session options
    (`spade_deploy.export.runtime.make_session`); `providers` as ONNX Runtime takes them (names, or (name, options)
    pairs); `precision`: what those providers compute in."""
    session = make_session(path, threads=subject.threads, providers=providers)

    def run(feeds: Feeds) -> np.ndarray:
        return session.run([io_spec.IMAGE_FLOAT], feeds)[0]
    return Runner(run, precision)


def openvino_runner(precision: str | None) -> Callable[[Subject, Path | None], Runner]:
    """An ONNX graph compiled by OpenVINO for the CPU (`spade_deploy.export.runtime.OpenVinoSession`: latency hint,
    the thread cap) at `precision` (FP32, BF16), or at OpenVINO's default where None: bf16 on CPUs with AMX or
    AVX512-BF16, f32 elsewhere. The runner's precision is the one the compiled model reports, so a pin the CPU cannot
    honour shows."""
    def build(subject: Subject, path: Path | None) -> Runner:
        session = OpenVinoSession(path, precision=precision, threads=subject.threads)

        def run(feeds: Feeds) -> np.ndarray:
            return session.run([io_spec.IMAGE_FLOAT], feeds)[0]
        return Runner(run, session.precision)
    return build


def cuda_runner(subject: Subject, path: Path | None) -> Runner:
    """An ONNX graph in ONNX Runtime's CUDA execution provider, fp32 with TF32 off (ONNX Runtime turns it on by
    default, which rounds conv inputs to 10 mantissa bits on Ampere and newer)."""
    return onnxruntime_runner(subject, path, providers=[("CUDAExecutionProvider", {"use_tf32": "0"})])


def tensorrt_fp32_precision() -> str:
    """What TensorRT's fp32 mode computes convs in here: TensorRT allows TF32 by default, which GPUs of compute
    capability 8.0 (Ampere) and newer have."""
    return TF32 if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0) else FP32


def tensorrt_runner(subject: Subject, path: Path | None) -> Runner:
    """Our folded graph in ONNX Runtime's TensorRT execution provider in TensorRT's fp32 mode (see
    `tensorrt_fp32_precision`); CUDA for what TensorRT declines. TensorRT is imported first: the provider loads
    libnvinfer by name, which a pip-installed TensorRT puts on no library path, and finds it loaded so."""
    import tensorrt  # noqa: F401

    return onnxruntime_runner(subject, path, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                              precision=tensorrt_fp32_precision())


def tensorrt_engine_fp16(subject: Subject, path: Path | None) -> Runner:
    """The engine `spade-deploy export trt` ships (fp16, normalisation, last conv and tanh in fp32; batch
    1..max_batch), built from the ONNX graph next to it, run with TensorRT's own API."""
    from spade_deploy.export.tensorrt import EngineOptions, build_engine

    plan = path.with_name(f"{path.stem}-fp16.plan")
    build_engine(path, plan, EngineOptions(fp16=True, max_batch=subject.max_batch))
    return tensorrt_engine_runner(plan, FP16)


def tensorrt_engine_runner(plan: Path, precision: str) -> Runner:
    """A serialized TensorRT engine (`*.plan`) run on a CUDA stream of its own (on the default stream, TensorRT
    synchronises more), inputs copied from and `image_float` back to the host on every call, as a client of the
    engine would."""
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise Failure(f"TensorRT could not load the engine {plan}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
    inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
    outputs = [name for name in names if name not in inputs]
    dtypes = {name: torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
              for name in outputs}
    stream = torch.cuda.Stream()

    def run(feeds: Feeds) -> np.ndarray:
        with torch.cuda.stream(stream):  # the copies, the engine and the copy back, in order on one stream
            tensors = {name: torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda() for name in inputs}
            for name, tensor in tensors.items():
                context.set_input_shape(name, tuple(tensor.shape))
            for name in outputs:
                tensors[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtypes[name], device="cuda")
            for name, tensor in tensors.items():
                context.set_tensor_address(name, tensor.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise Failure(f"TensorRT failed to run the engine {plan}")
            return tensors[io_spec.IMAGE_FLOAT].cpu().numpy()  # waits for the stream
    return Runner(run, precision)


def _cuda_unavailable() -> str | None:
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    return None


def _tensorrt_unavailable() -> str | None:
    reason = tensorrt_unavailable()
    if reason is None and "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    return reason


# Our fastest export at the best reduced precision this CPU offers: the export's own rule
# (spade_deploy.export.precision), so `fast` measures what `spade-deploy export onnx --precision bf16` writes.
FAST = fastest_choice(cpu_flags(), openvino_unavailable() is None)

register(Runtime("eager", "PyTorch eager, unfolded generator on the one-hot map (inference_mode)", eager_runner))
register(Runtime("folded-torch", "our folded graph in PyTorch", torch_graph_runner("dense")))
register(Runtime("plain-ort", "plain torch.onnx.export of the unfolded model in ONNX Runtime", onnxruntime_runner,
                 graph="plain", plain=True))
register(Runtime("plain-openvino", "plain torch.onnx.export of the unfolded model in OpenVINO, pinned to f32",
                 openvino_runner(FP32), graph="plain", plain=True, unavailable=openvino_unavailable))
register(Runtime("plain-openvino-default", "plain torch.onnx.export of the unfolded model in OpenVINO at its default "
                                           "settings (bf16 where the CPU has bf16 hardware)",
                 openvino_runner(None), graph="plain", plain=True, unavailable=openvino_unavailable))
register(Runtime("ort", "our folded ONNX graph in ONNX Runtime", onnxruntime_runner, graph="dense"))
register(Runtime("openvino", "our folded ONNX graph in OpenVINO, pinned to f32", openvino_runner(FP32),
                 graph="dense", unavailable=openvino_unavailable))
register(Runtime("sparse-torch", "our boundary-sparse graph in PyTorch", torch_graph_runner("sparse")))
register(Runtime("sparse-ort", "our boundary-sparse ONNX graph in ONNX Runtime", onnxruntime_runner, graph="sparse"))
register(Runtime("sparse-openvino", "our boundary-sparse ONNX graph in OpenVINO, pinned to f32", openvino_runner(FP32),
                 graph="sparse", unavailable=openvino_unavailable))
register(Runtime("fast", f"our fastest export at the best reduced precision this CPU offers — here {FAST.why}",
                 openvino_runner(FAST.precision) if FAST.runtime == OPENVINO else onnxruntime_runner,
                 graph=FAST.graph))
# NVIDIA GPUs (the `gpu` extra); skipped with the reason elsewhere.
register(Runtime("plain-ort-cuda", "plain torch.onnx.export of the unfolded model in ONNX Runtime's CUDA provider "
                                   "(fp32, TF32 off)", cuda_runner, graph="plain", plain=True,
                 unavailable=_cuda_unavailable))
register(Runtime("ort-cuda", "our folded ONNX graph in ONNX Runtime's CUDA provider (fp32, TF32 off)", cuda_runner,
                 graph="dense", unavailable=_cuda_unavailable))
register(Runtime("tensorrt", "our folded ONNX graph in ONNX Runtime's TensorRT provider (TensorRT's fp32 mode: TF32 "
                             "convs on Ampere and newer)", tensorrt_runner, graph="dense",
                 unavailable=_tensorrt_unavailable))
register(Runtime("tensorrt-fp16", "our folded graph as the fp16 TensorRT engine `export trt` builds (normalisation, "
                                  "last conv and tanh in fp32), run with TensorRT's API", tensorrt_engine_fp16,
                 graph="dense", unavailable=tensorrt_unavailable))
