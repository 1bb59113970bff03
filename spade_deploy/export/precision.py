"""Precision as an export choice: which graph and runtime settings are fastest at a precision on this CPU.

`fp32` (the default) is exact: the boundary-sparse graph in ONNX Runtime, checked against the float64 model. `bf16`
needs bf16 hardware (AMX, or AVX512-BF16) and runs in OpenVINO with its precision hint pinned to bf16, with our
sparse graph in its bf16 form, the fastest of ours there as measured (ADE20K 256x256, batch 1, OpenVINO at bf16): on
a Xeon with AMX, before the changes below, sparse 298 ms, the dense folded graph 558 ms (its label look-ups gain
nothing from AMX), the plain model 230 ms; on AMD Zen 5 with AVX512-BF16 alone sparse 323 ms, dense 457 ms, plain
378 ms, slower then than the exact fp32 export in ONNX Runtime (224-253 ms). Two costs of OpenVINO's were most of
that: its Unique of rows (45 % of the bf16 graph's time; the bf16 graph tells windows apart by int32 keys instead,
`spade_deploy.export.sparse.distinct_rows`) and the transposes around channels-last convs that it keeps with a
dynamic batch (`OpenVinoSession` compiles for one image); its blocks below 32 px now run dense. Since, on that
Zen 5: 150 ms at 47.8 dB from float64, against OpenVINO's bf16 default of the plain model 373 ms at 42.2 dB and the
fp32 export 251 ms (benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique). A CPU without bf16 hardware
gets fp32, and the choice says why.
At bf16 the sparse graph keeps batch norm as a per-channel step before each modulation and runs its convs direct
(`sparse-bf16`): folded into the modulation, `x·A + B` cancels in bf16 where a norm's mean is large against its
deviation, and Winograd's transforms add rounding. OpenVINO bf16, ADE20K 256x256 on Zen 5, against float64: the plain
model 41.9 dB; our sparse graph 38.1 dB folded, 42.6 dB with the step, 43.5 dB with direct convs too, which also
brought the bench's peak memory for it from 1,530 to 943 MiB (the Winograd weights are 1.8-4x the 3x3 ones; the plain
model at bf16: 1,277) at 2 % more time here (benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-bf16-norm-step).
`fp16` is for GPUs: TensorRT engines (`export trt`).

The bench's `fast` runtime runs `fastest_choice`: the same rule, falling back to fp32 where OpenVINO is missing.
Torch-free: the export metadata and the runtime wrapper read these names.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Precisions, named for the arithmetic of the heavy ops (convs and matmuls). TF32 is a GPU's fp32 mode (benchmarks).
FP32, TF32, BF16, FP16 = "fp32", "tf32", "bf16", "fp16"
CPU_PRECISIONS = (FP32, BF16)  # what `export onnx` offers; FP16 belongs to `export trt`
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"  # the runtimes an export can record
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of bf16 hardware
_CPUINFO = Path("/proc/cpuinfo")
_RUNTIME_NAMES = {ONNXRUNTIME: "ONNX Runtime", OPENVINO: "OpenVINO"}


@dataclass(frozen=True)
class Choice:
    """How an export runs at a precision on this CPU, and why."""
    graph: str  # the spade_deploy.export.metadata.GRAPHS entry
    precision: str  # what the runtime is asked for (a runtime that chooses reports what it chose)
    runtime: str  # ONNXRUNTIME or OPENVINO
    reason: str  # why this precision and graph: "on AMX", "(exact)", …

    @property
    def why(self) -> str:
        """One line: the precision, why, and what runs it."""
        return f"{self.precision} {self.reason}: our {self.graph} graph in {runtime_name(self.runtime)}"


def runtime_for(precision: str) -> str:
    """The runtime an export at `precision` runs in: ONNX Runtime for fp32, OpenVINO for bf16."""
    return ONNXRUNTIME if precision == FP32 else OPENVINO


def runtime_name(runtime: str, precision: str | None = None) -> str:
    """A runtime as messages name it: "ONNX Runtime", "OpenVINO", or OpenVINO with the precision it computes in
    ("OpenVINO bf16") where one is given."""
    name = _RUNTIME_NAMES[runtime]
    return f"{name} {precision}" if runtime == OPENVINO and precision else name


def cpu_flags() -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return set()
    return next((set(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("flags")),
                set())


def choose(precision: str, flags: set[str] | None = None) -> Choice:
    """The graph and runtime fastest at `precision` on a CPU with these /proc/cpuinfo `flags` (default: this CPU's);
    `bf16` without bf16 hardware falls back to the exact fp32 choice, saying so. `fp16` and unknown names are a
    `ValueError`."""
    if precision == FP16:
        raise ValueError("fp16 is for NVIDIA GPUs: use `spade-deploy export trt --precision fp16` (a TensorRT engine); "
                         f"`export onnx` offers {' and '.join(CPU_PRECISIONS)}")
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"precision must be one of {list(CPU_PRECISIONS)} (fp16: `export trt`), got {precision!r}")
    if precision == FP32:
        return Choice("sparse", FP32, ONNXRUNTIME, "(exact)")
    flags = cpu_flags() if flags is None else flags
    if not set(BF16_FLAGS) & flags:
        return Choice("sparse", FP32, ONNXRUNTIME, "(this CPU has no bf16 hardware: neither amx_bf16 nor avx512_bf16)")
    if "amx_bf16" in flags:
        return Choice("sparse-bf16", BF16, OPENVINO, "on AMX")
    return Choice("sparse-bf16", BF16, OPENVINO, "on AVX512-BF16 (no AMX)")


def fastest_choice(flags: set[str], openvino_installed: bool) -> Choice:
    """Our fastest export at the best reduced precision a CPU with these flags offers (the bench's `fast`): bf16's
    choice, or fp32 where there is no bf16 hardware or no OpenVINO to run it."""
    choice = choose(BF16, flags)
    if choice.runtime == OPENVINO and not openvino_installed:
        return Choice("sparse", FP32, ONNXRUNTIME, "(this CPU has bf16 hardware, but OpenVINO, which would run bf16, "
                                                   "is not installed)")
    return choice
