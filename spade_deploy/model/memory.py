"""How much memory a generator (or style encoder) request needs, estimated before any work from the config and the
request's size, so that local synthesis and served models refuse a request that would exhaust the machine with an
error instead of being killed halfway. Torch-free: the served models read it too.

Where the memory goes: the widest activations are at full resolution, in the last residual block. Inside its
SPADEs, the one-hot map (and its resized copy), the `mlp_shared` activation (and its ReLU) and about six tensors of
the block's input width are alive at once: `2 * semantic_nc + 2 * spade_hidden + 6 * fin` floats per pixel and item
(`fin` = 2 * ngf, or ngf with 'most' upsampling). A convolution run as im2col (PyTorch without oneDNN, ONNX Runtime)
adds its column buffer, `k * k * C_in` floats per pixel for its widest input. ONNX Runtime keeps more
full-resolution tensors alive at once (the folded graphs fuse a block's three SPADE branches, and its arena rounds
allocations up to powers of two): `ONNXRUNTIME_FACTOR` times the im2col figure.
For the sparse graph that is the worst case, a label map that is boundary everywhere; ordinary maps need 5-15x less,
but a guard cannot know the map's boundaries before the run. A fixed `OVERHEAD_BYTES` per run covers the rest.

Calibration (benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-memory-estimate): the peak RSS of one run in a fresh
process minus its RSS just before it (model loaded and warmed up), 2 CPU threads, torch 2.13 with oneDNN, ONNX
Runtime 1.32; as estimate / measured, for runs that need more than 0.5 GiB (below it, `OVERHEAD_BYTES` dominates
and the estimate is up to 3.2x):
- PyTorch, 7 configs (the bundled model; label_nc 10..151, ngf 16..64, spade_hidden 64..256, 'most' upsampling) at
  256..2048 px, batch 1 and 4: 1.12 .. 1.37 (the bundled model at 2048x2048: 4.3 GiB measured, 5.4 GiB estimated;
  1 thread measures the same);
- PyTorch with `torch.backends.mkldnn.enabled = False` (im2col convs, 2.5-3x the memory): 1.10 .. 1.26;
- ONNX Runtime, the sparse graph on all-boundary label maps and the dense graph, two configs at 256 and 512 px,
  batch 1 to 4: 1.18 .. 1.70 (the sparse graph on ordinary label maps: 17-26x below the estimate); measured again
  with the memory pattern off, as `make_session` runs since (…-memory-pattern): 1.45 .. 1.75;
- the style encoder (ONNX Runtime) on 1024x1024 .. 4096x2048 styles: 1.15 .. 1.44; with the pattern off 1.62.
"""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Literal

from spade_deploy.model.config import GeneratorConfig

Runtime = Literal["pytorch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("pytorch", "onnxruntime")
FLOAT_BYTES = 4
ONNXRUNTIME_FACTOR = 3.5  # ONNX Runtime's peak over the eager im2col estimate (measured 1.9-2.9x)
OVERHEAD_BYTES = 128 * 2 ** 20  # what one run costs whatever its size: allocator and ONNX Runtime arena slack
STYLE_BYTES_PER_VALUE = 1 + 3 * FLOAT_BYTES  # the uint8 style image, its float copy, scaled, shifted
DEFAULT_LIMIT_FRACTION = 0.8  # local synthesis may use this share of the memory available when it starts

_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40, "kib": 2 ** 10, "mib": 2 ** 20,
          "gib": 2 ** 30, "tib": 2 ** 40, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12}


def generator_bytes(config: GeneratorConfig, batch: int, height: int, width: int, *,
                    runtime: Runtime = "pytorch", im2col: bool = False) -> int:
    """Estimated peak memory (bytes) of one generator run on `batch` label maps of height x width, beyond what the
    process holds before it (the loaded weights). `im2col`: PyTorch runs its convs as im2col (no oneDNN); ONNX
    Runtime always does."""
    return OVERHEAD_BYTES + batch * item_bytes(config, height, width, runtime=runtime, im2col=im2col)


def item_bytes(config: GeneratorConfig, height: int, width: int, *, runtime: Runtime = "pytorch",
               im2col: bool = False) -> int:
    """What one more label map in the batch adds to `generator_bytes`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    fin = config.ngf if config.num_upsampling_layers == "most" else 2 * config.ngf  # full-resolution block's input
    floats = 2 * config.semantic_nc + 2 * config.spade_hidden + 6 * fin
    kernel = config.spade_kernel ** 2
    if runtime == "onnxruntime":
        # The exported graphs read the one-hot map as table look-ups (spade_deploy.export.fold), never as a conv.
        floats = round(ONNXRUNTIME_FACTOR * (floats + max(kernel * config.spade_hidden, 9 * fin)))
    elif im2col:
        floats += max(kernel * config.semantic_nc, kernel * config.spade_hidden, 9 * fin)
    return FLOAT_BYTES * floats * height * width


def largest_batch(config: GeneratorConfig, height: int, width: int, budget: int, *,
                  runtime: Runtime = "pytorch", im2col: bool = False) -> int:
    """The most label maps of height x width one run may take within `budget` bytes (0: not even one)."""
    return max(0, (budget - OVERHEAD_BYTES) // item_bytes(config, height, width, runtime=runtime, im2col=im2col))


def style_bytes(batch: int, height: int, width: int) -> int:
    """Estimated peak memory (bytes) of the style encoder on `batch` RGB images of height x width (it resizes them to
    256x256 after scaling them to [-1, 1] in float)."""
    return batch * height * width * 3 * STYLE_BYTES_PER_VALUE


def available_bytes() -> int:
    """Memory the system can give a process now without swapping: MemAvailable of /proc/meminfo (Linux), else the
    free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def release_freed_heap() -> None:
    """Return the heap memory the process has freed to the system (glibc's malloc_trim; nothing elsewhere). Loading a
    model frees much of what it parsed and folded, and glibc keeps those pages: ONNX Runtime sessions of the ADE20K
    256x256 exports held 100-290 MiB less after their calls with it
    (benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-memory-pattern)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def parse_bytes(text: str) -> int:
    """'8GiB', '8G', '512MiB', '1.5g', '2GB' (decimal), '1000000' (bytes) -> bytes; K/M/G/T alone are binary."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit:
        raise ValueError(f"expected a memory size such as 8GiB, 512MiB or 2GB, got {text!r}")
    value = int(float(match.group(1)) * unit)
    if value < 1:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return value


def format_bytes(count: int) -> str:
    """Bytes as a short binary size: '5.4 GiB', '432 MiB'."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{count} B"
