"""In-process benchmark: every runtime of `runtimes.RUNTIMES` on the same synthetic label maps, in one run.

All runtimes are built first; then, per batch, they take turns call by call (`warmup` untimed rounds, then
`repeats` timed rounds, in a shuffled order each round), so load that drifts during the run (this machine is shared)
hits all of them alike. Each call starts after a pause of SETTLE_S: a runtime's worker threads keep spinning for a
while after its call returns (ONNX Runtime's by default), and would otherwise take the cores from the next runtime's
call (two sessions of the sparse ADE20K export taking turns back to back ran 1.09x slower than with 0.1 s between
calls, 1.02x with 0.03 s). Where the runtimes do not fit in memory together (full-size models at batch 4: each holds
its weights and its own activation arena), `one_at_a_time` builds, times and frees them in turn instead, at the price
of that protection against drift. Reported per row: the precision the runtime computes in, median / p95 / p99
latency of a call, images/s (batch / median latency), peak memory, its quality (below) and speed-ups against eager,
each plain runtime and the best of those *of the same run* (noise between runs here is ±10–15 %, so only same-run
ratios mean anything). Percentiles are numpy's linear interpolation over the `repeats` samples: with 5 samples p95
and p99 sit close to the slowest call.

Quality, the worst over every call (warm-up included): max |Δ| of `image_float` against eager PyTorch (float32) on
the same inputs, and against the same model in float64 (computed once per input), max |Δ|, PSNR and the share of
8-bit pixels within 1 and 2 levels (`spade_deploy.export.parity.quality`, as every export reports it). float64 is
the reference, not eager float32, whose own rounding is no truth: reduced precision (bf16, fp16) is measured against
what the model computes, and eager float32's row shows the floor.

Peak memory, measured after the timing with each runtime in a process of its own (`memory_probe`: in this process a
runtime can reuse heap that earlier work freed, which hides part of its footprint): the most the process held above
its resident set before building the runtime, while building it (weights, graph, compiled kernels, load-time copies)
or over its calls up to this batch (arenas, activations). Exporting ONNX files happens before, outside every
measurement.
"""
from __future__ import annotations

import gc
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from spade_deploy.bench.machine import cpu_competition, cpu_times, describe_machine, load_average
from spade_deploy.bench.memory_probe import isolated_peaks, save_feeds, save_subject
from spade_deploy.bench.runtimes import RUNTIMES, Feeds, Runner, Runtime, Subject, eager_runner, select
from spade_deploy.export.onnx import export_generator_onnx
from spade_deploy.export.parity import Quality, float64_copy, quality
from spade_deploy.export.precision import FP32
from spade_deploy.export.pipeline import step
from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import check_label_size
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.synthetic import random_generator, synthetic_batch
from spade_deploy.model.tensors import instance_edges, sample_z, to_semantic_input

# 2: rows carry their precision and their quality against the float64 model; 3: and the best exact plain baseline;
# 4: the setup says how peak memory was measured, and the runtimes take turns in a shuffled order
FORMAT_VERSION = 4
PEAK_MEMORY = ("the most the process held above its resident set before building the runtime, while building it or "
               "over its calls up to that batch (weights, compiled graph, load-time copies, arenas, activations; host "
               "memory only), each runtime measured in a process of its own (spade_deploy.bench.memory_probe)")
SETTLE_S = 0.1  # pause before each call of the runtimes taking turns (module docstring)
BOUNDARY_RADIUS = 2  # SPADE's gamma/beta at a pixel depend on its 5x5 label neighbourhood (two 3x3 convs)


@dataclass(frozen=True)
class Options:
    batches: tuple[int, ...] = (1, 4)
    repeats: int = 5  # timed calls per runtime and batch
    # Untimed calls before them: three, as an ONNX Runtime session's second call still took about 2x its median
    # (ADE20K 256x256, sparse and plain exports alike), and eager PyTorch's third 1.2-1.56x (the committed runs of
    # 2026-12-01 with two).
    warmup: int = 3
    threads: int = 2  # intra-op threads of every runtime (torch.set_num_threads for PyTorch)
    seed: int = 0  # weights, label maps and latents
    regions: int = 16  # irregular regions per synthetic label map: the boundary share follows from it
    one_at_a_time: bool = False  # build, time and free each runtime in turn (memory), instead of taking turns

    def __post_init__(self) -> None:
        if not self.batches or any(not isinstance(batch, int) or batch < 1 for batch in self.batches):
            raise ValueError(f"batches must be positive integers, got {self.batches!r}")
        if self.repeats < 1 or self.warmup < 0 or self.threads < 1 or self.regions < 1:
            raise ValueError(f"need repeats >= 1, warmup >= 0, threads >= 1 and regions >= 1; got "
                             f"repeats={self.repeats}, warmup={self.warmup}, threads={self.threads}, "
                             f"regions={self.regions}")


@dataclass(frozen=True)
class Timing:
    latencies_ms: tuple[float, ...]  # the timed calls, in order

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class Row:
    runtime: str
    precision: str  # what the runtime computes in (fp32, tf32, bf16, fp16), as it reports it where it chooses
    batch: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    images_per_s: float
    max_abs_diff: float  # image_float vs eager PyTorch (float32) on the same inputs
    max_abs_diff_f64: float  # image_float vs the float64 model on the same inputs; so are the next three
    psnr_db: float | None
    within_1_level: float
    within_2_levels: float
    peak_mem_mb: float | None  # measured in a process of its own (`memory_probe`); None where not measurable
    boundary_share: float  # of the batch's label maps (see `boundary_share`)
    preset: str
    ngf: int
    size: str  # HxW
    repeats: int
    build_s: float  # building the runtime (session creation, compilation), once per runtime
    speedup_vs_eager: float | None = None
    speedup_vs_best_plain: float | None = None
    best_plain: str | None = None  # which plain runtime was fastest at this batch
    speedup_vs_best_exact_plain: float | None = None
    best_exact_plain: str | None = None  # which plain runtime was fastest at this batch among those at fp32
    speedup_vs: dict[str, float] = field(default_factory=dict)  # against each baseline (eager, every plain runtime)
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class _Built:
    runtime: Runtime
    run: Runner
    build_s: float


@dataclass
class _Calls:
    """One runtime's calls at one batch."""
    latencies_ms: list[float] = field(default_factory=list)  # timed calls only
    max_abs_diff: float = 0.0
    quality: Quality | None = None  # the worst against float64


def timed_call(call: Callable[[], Any]) -> tuple[Any, float]:
    """(result, latency in ms)."""
    start = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - start) * 1e3


def measure(call: Callable[[], Any], *, warmup: int, repeats: int) -> Timing:
    """Latencies of `repeats` back-to-back calls after `warmup` untimed ones (one runtime alone)."""
    for _ in range(warmup):
        call()
    return Timing(tuple(timed_call(call)[1] for _ in range(repeats)))


def take_turns(calls: dict[str, Callable[[], Any]], turns: int, seed: int = 0) -> dict[str, list[float]]:
    """Latencies (ms) of `turns` calls of each, taken in turns in a shuffled order each turn, so that load drifting
    over the run hits all alike: compare medians, or the median of the per-turn ratios (`turn_ratio`)."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffler = random.Random(seed)
    for _ in range(turns):
        shuffler.shuffle(order)
        for name in order:
            latencies[name].append(timed_call(calls[name])[1])
    return latencies


def turn_ratio(latencies: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over turns of `name`'s latency / `baseline`'s (from `take_turns`)."""
    return statistics.median(a / b for a, b in zip(latencies[name], latencies[baseline]))


def boundary_share(labels: np.ndarray, instances: np.ndarray | None = None, radius: int = BOUNDARY_RADIUS) -> float:
    """Share of pixels of `[N, H, W]` label maps whose (2·radius+1)² neighbourhood holds more than one label, an
    instance edge (models with instance maps) or reaches past the image border: where SPADE's gamma/beta are not a
    per-class constant."""
    maps = torch.from_numpy(np.asarray(labels, dtype=np.float32))[:, None]  # [N, 1, H, W]
    size = 2 * radius + 1
    highest = F.max_pool2d(maps, size, stride=1, padding=radius)  # padding is -inf: only in-image labels count
    lowest = -F.max_pool2d(-maps, size, stride=1, padding=radius)
    boundary = highest != lowest
    if instances is not None:
        edges = instance_edges(torch.from_numpy(np.asarray(instances)))
        boundary |= F.max_pool2d(edges, size, stride=1, padding=radius) > 0
    boundary[..., :radius, :] = True
    boundary[..., -radius:, :] = True
    boundary[..., :radius] = True
    boundary[..., -radius:] = True
    return float(boundary.float().mean())


def graph_feeds(config: GeneratorConfig, batch: int, height: int, width: int, *, seed: int,
                regions: int = Options.regions) -> Feeds:
    """Synthetic label maps (irregular regions, every label index) (+ instances) (+ a seeded z) in wire dtypes."""
    model_io = io_spec.generator_io(config, height, width)
    labels, instances = synthetic_batch(config, batch, height=height, width=width, num_regions=regions, seed=seed)
    feeds = {io_spec.LABEL: labels.astype(model_io.input(io_spec.LABEL).dtype)}
    if instances is not None:
        feeds[io_spec.INSTANCE] = instances.astype(model_io.input(io_spec.INSTANCE).dtype)
    if config.use_vae:
        feeds[io_spec.Z] = sample_z(batch, config.z_dim, seed).numpy()
    return feeds


def run_inprocess(config: GeneratorConfig, *, height: int | None = None, width: int | None = None,
                  runtimes: list[str] | None = None, options: Options = Options(),
                  workdir: Path | None = None) -> dict[str, Any]:
    """Benchmark the runtimes on a random-weight generator of `config` (realistic BN statistics) at `height` x
    `width` (default: the config's size); the result is JSON-ready: machine, setup, rows, skipped runtimes."""
    default_height, default_width = config.image_size
    height, width = height or default_height, width or default_width
    check_label_size(height, width, config)
    chosen = select(runtimes)
    skipped = [{"runtime": runtime.name, "reason": reason} for runtime in chosen
               if (reason := runtime.unavailable()) is not None]
    available = [runtime for runtime in chosen if runtime.unavailable() is None]
    if not available:
        raise ValueError(f"none of the chosen runtimes can run here: {skipped}")
    torch.set_num_threads(options.threads)
    machine = describe_machine(options.threads)
    cpu_start = cpu_times()

    with tempfile.TemporaryDirectory(prefix="spade-bench-") as temporary:
        workdir = Path(workdir or temporary)
        with step("random generator with calibrated batch-norm statistics"):
            generator = random_generator(config, seed=options.seed)
        feeds = {batch: graph_feeds(config, batch, height, width, seed=options.seed + 1000 * batch,
                                    regions=options.regions)
                 for batch in options.batches}
        graphs = {}
        for name in sorted({runtime.graph for runtime in available if runtime.graph is not None}):
            with step(f"exporting the {name} ONNX graph"):
                graphs[name] = export_generator_onnx(generator, workdir / f"{name}.onnx", height=height, width=width,
                                                     graph=name)
        subject = Subject(generator, height, width, options.threads, graphs, max_batch=max(options.batches))
        with step("eager reference outputs"):
            eager = eager_runner(subject, None)
            reference = {batch: eager(batch_feeds) for batch, batch_feeds in feeds.items()}
            del eager
        with step("float64 reference outputs"):
            reference_f64 = float64_outputs(generator, feeds)
        groups = [[runtime] for runtime in available] if options.one_at_a_time else [available]
        rows = []
        for group in groups:
            built = _build(group, subject)
            rows += [row for batch, batch_feeds in feeds.items()
                     for row in _bench_batch(built, batch, batch_feeds, (reference[batch], reference_f64[batch]),
                                             subject, options)]
            del built
        subject_file = save_subject(subject, workdir / "subject.pt")
        feeds_files = {batch: save_feeds(batch_feeds, workdir / f"feeds-{batch}.npz")
                       for batch, batch_feeds in feeds.items()}
        for runtime in tqdm(available, desc="peak memory, a process per runtime", unit="runtime", file=sys.stderr):
            peaks = isolated_peaks(runtime.name, subject_file, feeds_files)
            for row in rows:
                if row.runtime == runtime.name and peaks is not None:
                    row.peak_mem_mb = peaks.get(row.batch)
        rows.sort(key=lambda row: row.batch)  # stable: runtimes stay in registry order within a batch
    _add_ratios(rows)
    setup = {"preset": config.preset, "ngf": config.ngf, "size": f"{height}x{width}",
             "generator_config": config.to_dict(), "batches": list(options.batches), "repeats": options.repeats,
             "warmup": options.warmup, "threads": options.threads, "seed": options.seed,
             "one_at_a_time": options.one_at_a_time,
             "label_maps": f"synthetic, {options.regions} irregular regions each", "regions": options.regions,
             "quality_reference": "the generator in float64 (spade_deploy.export.parity.float64_copy)",
             "peak_memory": PEAK_MEMORY,
             "runtimes": {runtime.name: runtime.summary for runtime in chosen}}
    machine["load_average_1min_end"] = load_average()
    machine |= cpu_competition(cpu_start, machine["cores"])
    return {"kind": "inprocess", "format_version": FORMAT_VERSION, "machine": machine,
            "setup": setup, "rows": [asdict(row) for row in rows], "skipped": skipped}


def float64_outputs(generator: SPADEGenerator, feeds: dict[int, Feeds]) -> dict[int, np.ndarray]:
    """image_float of the generator in float64 (`spade_deploy.export.parity.float64_copy`) on each batch's feeds:
    the reference of every runtime's quality. The float64 copy is freed before anything is timed."""
    model, config = float64_copy(generator), generator.config
    outputs = {}
    with torch.inference_mode():
        for batch, batch_feeds in feeds.items():
            semantic = to_semantic_input(batch_feeds[io_spec.LABEL], batch_feeds.get(io_spec.INSTANCE), config)
            z = torch.from_numpy(batch_feeds[io_spec.Z]).double() if io_spec.Z in batch_feeds else None
            outputs[batch] = model(semantic.double(), z).numpy()
    return outputs


def _build(runtimes: list[Runtime], subject: Subject) -> list[_Built]:
    """Every runtime, with its build time."""
    built = []
    for runtime in tqdm(runtimes, desc="building runtimes", unit="runtime", file=sys.stderr):
        gc.collect()
        start = time.perf_counter()
        run = runtime.build(subject, subject.graphs.get(runtime.graph))
        built.append(_Built(runtime, run, time.perf_counter() - start))
    return built


def _bench_batch(built: list[_Built], batch: int, feeds: Feeds, references: tuple[np.ndarray, np.ndarray],
                 subject: Subject, options: Options) -> list[Row]:
    """Runtimes take turns call by call: `warmup` untimed rounds, then `repeats` timed rounds, in a shuffled order
    each round (as `take_turns`: no runtime always follows the same one). `references`: eager float32's and the
    float64 model's outputs on `feeds`."""
    reference, reference_f64 = references
    calls = {entry.runtime.name: _Calls() for entry in built}
    rounds = options.warmup + options.repeats
    order, shuffler = list(built), random.Random(options.seed * 1009 + batch)
    with tqdm(total=rounds * len(built), desc=f"batch {batch}", unit="call", file=sys.stderr) as progress:
        for index in range(rounds):
            shuffler.shuffle(order)
            for entry in order:
                progress.set_postfix_str(entry.runtime.name)
                time.sleep(SETTLE_S)
                output, latency_ms = timed_call(lambda: entry.run(feeds))
                record = calls[entry.runtime.name]
                record.max_abs_diff = max(record.max_abs_diff, float(np.abs(output - reference).max()))
                measured = quality(output, reference_f64)
                record.quality = measured if record.quality is None else record.quality.worse(measured)
                if index >= options.warmup:
                    record.latencies_ms.append(latency_ms)
                del output
                progress.update()
    config, share = subject.generator.config, boundary_share(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE))
    rows = []
    for entry in built:
        record = calls[entry.runtime.name]
        timing = Timing(tuple(record.latencies_ms))
        p50 = timing.percentile(50)
        rows.append(Row(runtime=entry.runtime.name, precision=entry.run.precision, batch=batch, p50_ms=p50,
                        p95_ms=timing.percentile(95), p99_ms=timing.percentile(99), images_per_s=batch * 1e3 / p50,
                        max_abs_diff=record.max_abs_diff, max_abs_diff_f64=record.quality.max_abs_diff,
                        psnr_db=record.quality.psnr_db, within_1_level=record.quality.within_1_level,
                        within_2_levels=record.quality.within_2_levels, peak_mem_mb=None, boundary_share=share,
                        preset=config.preset, ngf=config.ngf, size=f"{subject.height}x{subject.width}",
                        repeats=options.repeats, build_s=entry.build_s, latencies_ms=list(timing.latencies_ms)))
    return rows


def _add_ratios(rows: list[Row]) -> None:
    """Speed-ups of every row against eager, each plain runtime, the fastest of those at the same batch, and the
    fastest of those that ran exact (fp32)."""
    for batch in {row.batch for row in rows}:
        same = [row for row in rows if row.batch == batch]
        eager = next((row for row in same if row.runtime == "eager"), None)
        plain = [row for row in same if RUNTIMES[row.runtime].plain]
        best = min(plain, key=lambda row: row.p50_ms) if plain else None
        exact = [row for row in plain if row.precision == FP32]
        best_exact = min(exact, key=lambda row: row.p50_ms) if exact else None
        for row in same:
            row.speedup_vs = {baseline.runtime: baseline.p50_ms / row.p50_ms for baseline in [eager, *plain]
                              if baseline is not None}
            if eager is not None:
                row.speedup_vs_eager = eager.p50_ms / row.p50_ms
            if best is not None:
                row.speedup_vs_best_plain = best.p50_ms / row.p50_ms
                row.best_plain = best.runtime
            if best_exact is not None:
                row.speedup_vs_best_exact_plain = best_exact.p50_ms / row.p50_ms
                row.best_exact_plain = best_exact.runtime

