"""Write a Triton model repository for an exported SPADE model, from the same I/O contract as the ONNX export.

Layout (one directory per model, `config.pbtxt` + version `1/`):
- `spade_generator`: label (+ instance) (+ z) -> image, image_float;
- `spade_encoder` (with an encoder ONNX): style -> mu, logvar;
- `spade`: the user-facing pipeline (`triton_models/pipeline.py`), label (+ instance) (+ style) (+ seed) -> image.

Variants: `cpu` runs the generator and encoder graphs in ONNX Runtime inside python-backend models
(`triton_models/onnx_model.py`), the only backend the tritonserver of the nvidia-pytriton wheel has; `gpu` is for
NVIDIA's Triton container, on KIND_GPU instances: a model given a TensorRT engine (`spade_deploy.export.tensorrt`) is
a `tensorrt_plan` model whose `max_batch_size` is the largest batch of the engine's optimisation profile; a model
without one, the portable alternative, runs its graph in the onnxruntime backend, the generator through the TensorRT
execution accelerator (which builds its engine at first load, on the GPU it serves). Both variants use the same
pipeline model, which imports spade_deploy (numpy only, no torch):
in NVIDIA's container, `pip install spade-deploy` into the Python the python backend runs. In the cpu variant every
model carries a memory budget per execution (`max_request_memory`), against which the python-backend models refuse
requests before any work (`spade_deploy.serve.served_model.check_request_memory`). A bf16 export (`export onnx
--precision bf16`) is served by the cpu variant as it runs in-process: in OpenVINO at bf16 inside the python-backend
model (the `precision` parameter; the `openvino` extra must be installed where the server runs); the gpu variant's
backends would run it at another precision, so it is refused there (`unservable_reason`). Configs are built as
`ModelConfig` protobuf messages (Triton's own schema, shipped in tritonclient) and printed as text, so every field
name is checked.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.export.precision import FP32
from spade_deploy.export.tensorrt import read_engine_metadata
from spade_deploy.model import io_spec, memory
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.serve.served_model import INTRA_OP_THREADS, MAX_REQUEST_MEMORY, PARAMETER, PRECISION, describe

Variant = Literal["cpu", "gpu"]
VARIANTS: tuple[str, ...] = ("cpu", "gpu")
TEMPLATES = Path(__file__).resolve().parent / "triton_models"  # package data: the python-backend model sources
MODEL_NAMES = (io_spec.GENERATOR_MODEL, io_spec.ENCODER_MODEL, io_spec.PIPELINE_MODEL)
DEFAULT_MAX_BATCH = 8  # max_batch_size when no TensorRT engine fixes it
# How long the dynamic batcher waits to fill a batch, per variant. cpu: on a CPU a batch costs about the sum of its
# items, so waiting buys no throughput, while a full batch on one instance leaves the other core idle: 0 (requests
# that queue while both instances are busy still batch); `spade-deploy bench --served --queue-delay-us` measures it.
# gpu: not measurable here; 2 ms is a common start on a GPU, where a batch costs little more than one item.
QUEUE_DELAY_US: dict[str, int] = {"cpu": 0, "gpu": 2000}
# Height and width of the zero style image that warms up the encoder: the ONNX graph takes any size, an encoder
# engine the sides of its profile (export.tensorrt.STYLE_SIDE_RANGE, checked against each engine's own below).
WARMUP_SIZE = 256
TRT_ENGINE_CACHE = "/tmp/spade-deploy-trt-cache"  # gpu variant: TensorRT engines are built at first load, then reused


def write_repository(repo_dir: str | Path, generator_onnx: str | Path, encoder_onnx: str | Path | None = None, *,
                     variant: Variant = "cpu", max_batch_size: int | None = None, instances: int = 2,
                     intra_op_threads: int = 1, queue_delay_us: int | None = None,
                     max_request_memory: int | None = None,
                     engines: Mapping[str, str | Path] | None = None) -> list[Path]:
    """Write the repository for exported ONNX graphs into `repo_dir` (replacing an earlier spade repository there)
    and return the written `config.pbtxt` paths. The generator's config and size come from its ONNX metadata;
    `queue_delay_us` defaults to the variant's `QUEUE_DELAY_US`. `max_request_memory` (bytes, cpu variant) caps the
    estimated memory of one model execution: below what `max_batch_size` label maps need, it lowers the batch a
    request may carry; it also bounds the style images. Default: what `max_batch_size` label maps need.
    `engines` (gpu variant): TensorRT engines written by `spade_deploy.export.tensorrt.build_engine` from these
    graphs, by model name (`io_spec.GENERATOR_MODEL`, `io_spec.ENCODER_MODEL`), served as `tensorrt_plan` models.
    `max_batch_size` defaults to the largest batch of their optimisation profile (`DEFAULT_MAX_BATCH` without
    engines) and must equal it: the dynamic batcher forms every batch up to it, and the engine is tuned for it."""
    repo_dir, generator_onnx = Path(repo_dir), Path(generator_onnx)
    encoder_onnx = Path(encoder_onnx) if encoder_onnx is not None else None
    engines = {name: Path(path) for name, path in (engines or {}).items()}
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
    for name, value in (("max_batch_size", max_batch_size), ("instances", instances),
                        ("intra_op_threads", intra_op_threads)):
        if name == "max_batch_size" and value is None:
            continue  # the engines' profile decides, or DEFAULT_MAX_BATCH
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if queue_delay_us is None:
        queue_delay_us = QUEUE_DELAY_US[variant]
    if not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise ValueError(f"queue_delay_us must be a non-negative integer (microseconds), got {queue_delay_us!r}")
    for path in (generator_onnx, encoder_onnx):
        if path is not None and not path.is_file():
            raise ValueError(f"no such ONNX file: {path}")
    metadata = read_export_metadata(generator_onnx)
    reason = unservable_reason(metadata.precision, variant)
    if reason:
        raise ValueError(f"{generator_onnx}: {reason}")
    config, height, width = metadata.config, metadata.height, metadata.width
    if encoder_onnx is not None:
        io_spec.check_encoder_fits(config)
    graphs = {io_spec.GENERATOR_MODEL: (generator_onnx, io_spec.generator_io(config, height, width))}
    if encoder_onnx is not None:
        graphs[io_spec.ENCODER_MODEL] = (encoder_onnx, io_spec.encoder_io())
    max_batch_size = _max_batch_size(engines, variant, graphs, max_batch_size)
    budget = memory_budget(max_request_memory, variant, config, height, width, max_batch_size)
    check_replaceable(repo_dir)

    described = describe(config, height, width)
    common = dict(max_batch_size=max_batch_size, instances=instances, queue_delay_us=queue_delay_us,
                  described=described)
    models: dict[str, tuple[mc.ModelConfig, dict[str, Path]]] = {}
    for name, (onnx_path, model_io) in graphs.items():
        if variant == "cpu":
            precision = metadata.precision if name == io_spec.GENERATOR_MODEL else FP32
            models[name] = (_python_config(name, model_io, intra_op_threads, precision, **common),
                            {"model.py": TEMPLATES / "onnx_model.py", "model.onnx": onnx_path})
        elif name in engines:
            models[name] = (_tensorrt_plan_config(name, model_io, **common), {"model.plan": engines[name]})
        else:
            # The TensorRT accelerator for the generator only: the encoder's input takes any image size, and the
            # accelerator would build an engine per new size; it is cheap (about 1/100 of the generator) on CUDA.
            models[name] = (_onnxruntime_gpu_config(name, model_io, tensorrt=name == io_spec.GENERATOR_MODEL,
                                                    **common), {"model.onnx": onnx_path})
    pipeline_io = io_spec.pipeline_io(config, height, width, has_encoder=encoder_onnx is not None)
    # No warmup for the pipeline: its work is BLS calls into the other models, which may still be loading when its
    # warmup would run (Triton loads models in parallel); they are warmed up themselves.
    pipeline = _base_config(io_spec.PIPELINE_MODEL, pipeline_io, warmup=False, kind=mc.ModelInstanceGroup.KIND_CPU,
                            **common)
    pipeline.backend = "python"
    models[io_spec.PIPELINE_MODEL] = (pipeline, {"model.py": TEMPLATES / "pipeline.py"})
    if budget is not None:
        for model_config, _ in models.values():
            model_config.parameters[MAX_REQUEST_MEMORY].string_value = str(budget)
    return _write_atomically(repo_dir, models)


def unservable_reason(precision: str, variant: str) -> str | None:
    """Why an export at `precision` cannot be served from a repository of `variant`, or None."""
    if precision == FP32 or variant == "cpu":
        return None
    return (f"a {precision} export runs in OpenVINO on a CPU, which the {variant} variant's models do not (they "
            f"would compute it at another precision than the one it records): serve it with --variant cpu, or export "
            f"with --precision fp32 for the {variant} variant")


def _max_batch_size(engines: dict[str, Path], variant: str, graphs: dict[str, tuple[Path, io_spec.ModelIO]],
                       max_batch_size: int | None) -> int:
    """The repository's max_batch_size: the one batch range the engines' optimisation profiles share (each checked
    against its model's I/O contract and warmup sample), which a given `max_batch_size` must equal."""
    if not engines:
        return DEFAULT_MAX_BATCH if max_batch_size is None else max_batch_size
    if variant != "gpu":
        raise ValueError("TensorRT engines are served by the gpu variant (NVIDIA's Triton container); give "
                         "variant='gpu'")
    unknown = sorted(set(engines) - set(graphs))
    if unknown:
        raise ValueError(f"engines for {unknown}, but the repository's TensorRT-servable models are {list(graphs)} "
                         f"(an encoder engine needs the encoder's ONNX too)")
    batches = {name: _engine_max_batch(name, engine, graphs[name][1]) for name, engine in engines.items()}
    if len(set(batches.values())) > 1:
        raise ValueError(f"the engines' optimisation profiles end at different batches ({batches}); build them with "
                         f"one --max-batch")
    (largest,) = set(batches.values())
    if max_batch_size is not None and max_batch_size != largest:
        raise ValueError(f"max_batch_size={max_batch_size} contradicts the TensorRT engines, whose optimisation "
                         f"profile covers batches 1..{largest}: leave max_batch_size out (or give {largest}), or "
                         f"rebuild the engines with --max-batch {max_batch_size}")
    return largest


def _engine_max_batch(name: str, engine: Path, model_io: io_spec.ModelIO) -> int:
    """The largest batch of `engine`'s optimisation profile, once the profile is known to take `model_io`'s inputs,
    every batch from 1 and the warmup sample (which also pins the generator's export size)."""
    if not engine.is_file():
        raise ValueError(f"no such TensorRT engine: {engine}")
    profile = read_engine_metadata(engine)["profile"]  # input name -> [min, opt, max] shapes, batch first
    if sorted(profile) != sorted(model_io.input_names):
        raise ValueError(f"the engine {engine} takes {sorted(profile)}, but {name} takes "
                         f"{sorted(model_io.input_names)}: it was built from another graph")
    for spec in model_io.inputs:
        minimum, _, maximum = profile[spec.name]
        sample = [1, *_warmup_dims(spec)]
        fits = len(sample) == len(minimum) and all(low <= dim <= high
                                                   for low, dim, high in zip(minimum, sample, maximum))
        if not fits:
            raise ValueError(f"the engine {engine} takes {spec.name} from {minimum} to {maximum}, not the "
                             f"{sample} that {name} is warmed up with: it was built for another export")
    (largest, *others) = {maximum[0] for _, _, maximum in profile.values()}
    if others:
        raise ValueError(f"the engine {engine}'s inputs end at different batches ({sorted([largest, *others])})")
    return largest


def memory_budget(max_request_memory: int | None, variant: str, config: GeneratorConfig, height: int,
                   width: int, max_batch_size: int) -> int | None:
    """The checked `max_request_memory` of the cpu variant (None for gpu, whose graphs run in GPU memory that this
    estimate does not describe)."""
    if variant != "cpu":
        if max_request_memory is not None:
            raise ValueError("max_request_memory applies to the cpu variant, where the python-backend models run the "
                             "graphs in host memory; on a GPU, max_batch_size bounds a request")
        return None
    if max_request_memory is None:
        return memory.generator_bytes(config, max_batch_size, height, width, runtime="onnxruntime")
    if not isinstance(max_request_memory, int) or isinstance(max_request_memory, bool) or max_request_memory < 1:
        raise ValueError(f"max_request_memory must be a positive number of bytes, got {max_request_memory!r}")
    one = memory.generator_bytes(config, 1, height, width, runtime="onnxruntime")
    if max_request_memory < one:
        raise ValueError(f"a max_request_memory of {memory.format_bytes(max_request_memory)} fits no request: one "
                         f"{height}x{width} label map needs about {memory.format_bytes(one)} (estimate); give at "
                         f"least that")
    return max_request_memory


def check_replaceable(repo_dir: Path) -> None:
    """Only an absent or empty directory, or an earlier spade repository, may be (re)written."""
    if repo_dir.exists() and not repo_dir.is_dir():
        raise ValueError(f"repository path {repo_dir} exists and is not a directory")
    if repo_dir.is_dir():
        foreign = sorted(entry.name for entry in repo_dir.iterdir() if entry.name not in MODEL_NAMES)
        if foreign:
            raise ValueError(f"{repo_dir} holds {foreign}, which are not spade models; write the repository to an "
                             f"empty or new directory")


def _base_config(name: str, io: io_spec.ModelIO, *, max_batch_size: int, instances: int, queue_delay_us: int,
                 described: str, warmup: bool, kind: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    for spec in io.inputs:
        config.input.add(name=spec.name, data_type=_data_type(spec), dims=spec.dims, optional=spec.optional)
    for spec in io.outputs:
        config.output.add(name=spec.name, data_type=_data_type(spec), dims=spec.dims)
    config.instance_group.add(count=instances, kind=kind)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.parameters[PARAMETER].string_value = described
    if warmup:
        sample = config.model_warmup.add(name="zeros", batch_size=1)
        for spec in io.inputs:
            sample.inputs[spec.name].data_type = _data_type(spec)
            sample.inputs[spec.name].dims.extend(_warmup_dims(spec))
            sample.inputs[spec.name].zero_data = True
    return config


def _warmup_dims(spec: io_spec.TensorSpec) -> list[int]:
    return [WARMUP_SIZE if dim < 0 else dim for dim in spec.dims]


def _python_config(name: str, io: io_spec.ModelIO, intra_op_threads: int, precision: str,
                   **common: Any) -> mc.ModelConfig:
    config = _base_config(name, io, warmup=True, kind=mc.ModelInstanceGroup.KIND_CPU, **common)
    config.backend = "python"
    config.parameters[INTRA_OP_THREADS].string_value = str(intra_op_threads)
    config.parameters[PRECISION].string_value = precision
    return config


def _onnxruntime_gpu_config(name: str, io: io_spec.ModelIO, *, tensorrt: bool, **common: Any) -> mc.ModelConfig:
    config = _base_config(name, io, warmup=True, kind=mc.ModelInstanceGroup.KIND_GPU, **common)
    config.backend = "onnxruntime"
    config.default_model_filename = "model.onnx"
    if tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        # FP32 keeps the served image within the tolerance of the PyTorch model; FP16 is a deliberate user choice.
        accelerator.parameters.update({
            "precision_mode": "FP32",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": TRT_ENGINE_CACHE,
            # One optimisation profile over every batch size, so a new batch size never triggers an engine rebuild.
            "trt_profile_min_shapes": _profile(io, 1),
            "trt_profile_opt_shapes": _profile(io, common["max_batch_size"]),
            "trt_profile_max_shapes": _profile(io, common["max_batch_size"]),
        })
    return config


def _tensorrt_plan_config(name: str, io: io_spec.ModelIO, **common: Any) -> mc.ModelConfig:
    # The contract's data types stay: uint8, int32 and float32 are all TensorRT engine bindings, and Triton's
    # TensorRT backend binds TYPE_UINT8 to them (see spade_deploy.export.tensorrt for what uint8 asks of the graph).
    config = _base_config(name, io, warmup=True, kind=mc.ModelInstanceGroup.KIND_GPU, **common)
    config.platform = "tensorrt_plan"
    config.default_model_filename = "model.plan"
    return config


def _profile(io: io_spec.ModelIO, batch: int) -> str:
    return ",".join(f"{spec.name}:" + "x".join(str(dim) for dim in (batch, *spec.dims)) for spec in io.inputs)


def _data_type(spec: io_spec.TensorSpec) -> int:
    return mc.DataType.Value(f"TYPE_{spec.triton_dtype}")


def _write_atomically(repo_dir: Path, models: dict[str, tuple[mc.ModelConfig, dict[str, Path]]]) -> list[Path]:
    """Build the whole repository beside `repo_dir`, then swap it in: a server never sees half a repository, and
    a model left over from an earlier export (an encoder that is no longer exported) does not survive."""
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repo_dir.parent, prefix=f".{repo_dir.name}.", suffix=".tmp"))
    staging.chmod(0o777 & ~_umask())  # mkdtemp folders are owner-only; a server may run as another user
    old = repo_dir.with_name(f".{repo_dir.name}.{os.getpid()}.old")
    try:
        for name, (config, files) in models.items():
            version = staging / name / "1"
            version.mkdir(parents=True)
            (staging / name / "config.pbtxt").write_text(text_format.MessageToString(config))
            for target, source in files.items():
                shutil.copyfile(source, version / target)
        if repo_dir.exists():
            repo_dir.rename(old)
        staging.rename(repo_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not repo_dir.exists():
            old.rename(repo_dir)  # the earlier repository stays as it was
        raise
    shutil.rmtree(old, ignore_errors=True)
    return [repo_dir / name / "config.pbtxt" for name in models]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
