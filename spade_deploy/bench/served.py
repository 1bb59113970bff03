"""Served benchmark: a gRPC load generator (`AsyncSpadeClient`) against a real Triton server on loopback ports.

The model is a random-weight generator of the given config, exported as ONNX (the exporter's default graph, as
`spade-deploy export onnx` ships it; recorded in the result) and written to a Triton repository with
`spade_deploy.serve.repository` (CPU variant: the generator in ONNX Runtime inside python-backend instances; the
dynamic batcher waits up to `queue_delay_us` for more requests), served by `spade_deploy.serve.server.TritonServer` on
free 127.0.0.1 ports. Requests go to the user-facing `spade` model, batch 1 each, cycling through a few synthetic label
maps with `regions` irregular regions each.

- Closed loop: for each concurrency C, C workers send back to back; `requests` timed requests after a warm-up.
- Open loop ("fixed rate"): Poisson arrivals at a given rate, `rate_requests` requests; latency counts from the
  scheduled send time, so a server that falls behind shows it (no coordinated omission). It stops early when more
  than `max_in_flight` requests are outstanding.
- Server side: queue and compute time per request and the generator's mean batch size, from the difference of
  Triton's inference statistics before and after each level, for the pipeline and the generator model. Triton counts
  a request just after answering it, so each snapshot waits (up to `statistics_timeout_s`) until every answered
  request is counted.
- Bytes: serialized sizes of the gRPC `ModelInferRequest` / `ModelInferResponse` messages for the uint8 contract,
  and, computed the same way (no such model is served), for a naive float one-hot-in / float-image-out request.
- Serving overhead: the generator graph in this process, batch 1, with the served session options (ONNX Runtime,
  `intra_op_threads` threads), against the served latency at concurrency 1.
Every loop is bounded in requests and time, every wait has a deadline, every request has a timeout, and all
traffic stays on loopback.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc.aio as aioclient
from tqdm import tqdm
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype

from spade_deploy.bench.inprocess import Options, boundary_share, graph_feeds, measure
from spade_deploy.bench.machine import cpu_competition, cpu_times, describe_machine, load_average
from spade_deploy.bench.perf_analyzer import PerfAnalyzerError, run_perf_analyzer, write_input_data
from spade_deploy.client import AsyncSpadeClient, SpadeClientError
from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.export.onnx import export_generator_onnx
from spade_deploy.export.pipeline import step
from spade_deploy.export.runtime import make_session
from spade_deploy.model import io_spec
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.labels import check_label_size
from spade_deploy.model.networks import SPADEGenerator
from spade_deploy.model.synthetic import random_generator
from spade_deploy.model.tensors import sample_z, to_semantic_input, to_uint8_image
from spade_deploy.serve.repository import QUEUE_DELAY_US, write_repository
from spade_deploy.serve.server import TritonServer

# 2: the open loop's arrivals are scaled to the offered rate, and its achieved rate counts every answer
FORMAT_VERSION = 2
DISTINCT_MAPS = 8  # label maps the requests cycle through
NAIVE_INPUT = "semantic"  # name of the naive request's float one-hot input (sizes only; no such model exists)
AUTO_RATE_FRACTIONS = (0.5, 0.8)  # default open-loop rates, as fractions of the best closed-loop throughput
STATS_MODELS = (io_spec.PIPELINE_MODEL, io_spec.GENERATOR_MODEL)
VARIANT = "cpu"  # the repository variant served: the tritonserver of the nvidia-pytriton wheel runs only this one


@dataclass(frozen=True)
class ServedOptions:
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int = 48  # timed requests per concurrency level
    warmup: int = 4  # untimed requests before each level (at least the concurrency)
    rates: tuple[float, ...] = ()  # open-loop rates in requests/s; empty: AUTO_RATE_FRACTIONS of the best throughput
    rate_requests: int = 48  # requests per open-loop rate
    max_in_flight: int = 64  # an open-loop rate stops early beyond this many outstanding requests
    level_timeout_s: float = 300.0  # a level stops sending new requests after this
    request_timeout_s: float = 120.0  # per request
    instances: int = 2  # Triton instances of each model (CPU cores to share)
    intra_op_threads: int = 1  # ONNX Runtime threads per generator instance
    max_batch_size: int = 8
    queue_delay_us: int | None = None  # the dynamic batcher's max queue delay; None: the repository's QUEUE_DELAY_US
    regions: int = Options.regions  # irregular regions per synthetic label map, as in the in-process benchmark
    statistics_timeout_s: float = 30.0  # for Triton's statistics to count every answered request
    inprocess_repeats: int = 20  # in-process batch-1 calls for the serving overhead
    perf_analyzer: bool = False  # also run perf_analyzer (benchmarks/perf_analyzer.sh) against the same server
    perf_analyzer_window_ms: int = 3000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive integers, got {self.concurrency!r}")
        if any(rate <= 0 for rate in self.rates):
            raise ValueError(f"request rates must be positive (requests/s), got {self.rates!r}")
        for name in ("requests", "rate_requests", "max_in_flight", "instances", "intra_op_threads",
                     "max_batch_size", "inprocess_repeats", "regions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.queue_delay_us is not None and self.queue_delay_us < 0:
            raise ValueError(f"queue_delay_us must be a non-negative number of microseconds, got {self.queue_delay_us}")


@dataclass(frozen=True)
class Sample:
    latency_ms: float
    ok: bool
    done_at: float  # perf_counter() when the answer (or error) arrived


@dataclass
class Load:
    """One level of load: its answers, when it started and when its last request was sent."""
    started: float
    last_sent: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    stopped: str | None = None  # why an open-loop level stopped early

    @property
    def answered(self) -> int:
        """Requests answered without an error: what Triton's statistics count."""
        return sum(sample.ok for sample in self.samples)


def run_served(config: GeneratorConfig, *, height: int | None = None, width: int | None = None,
               options: ServedOptions = ServedOptions(), workdir: Path | None = None) -> dict[str, Any]:
    """Serve a random-weight generator of `config` and load it; the result is JSON-ready."""
    default_height, default_width = config.image_size
    height, width = height or default_height, width or default_width
    check_label_size(height, width, config)
    machine = describe_machine(options.instances * options.intra_op_threads)
    queue_delay_us = QUEUE_DELAY_US[VARIANT] if options.queue_delay_us is None else options.queue_delay_us
    cpu_start = cpu_times()
    with tempfile.TemporaryDirectory(prefix="spade-bench-served-") as temporary:
        workdir = Path(workdir or temporary)
        with step("random generator, ONNX export, Triton repository"):
            generator = random_generator(config, seed=options.seed)
            onnx_path = export_generator_onnx(generator, workdir / "generator.onnx", height=height, width=width)
            graph = read_export_metadata(onnx_path).graph
            write_repository(workdir / "repository", onnx_path, variant=VARIANT, max_batch_size=options.max_batch_size,
                             instances=options.instances, intra_op_threads=options.intra_op_threads,
                             queue_delay_us=queue_delay_us)
        feeds = graph_feeds(config, DISTINCT_MAPS, height, width, seed=options.seed, regions=options.regions)
        if config.use_vae:  # the pipeline draws z_i = sample_z(1, z_dim, seed_i); request i sends seed i
            feeds[io_spec.Z] = torch.cat([sample_z(1, config.z_dim, index) for index in range(DISTINCT_MAPS)]).numpy()
        requests = [{name: array[index:index + 1] for name, array in feeds.items()} for index in range(DISTINCT_MAPS)]
        with step("in-process reference: eager image and ONNX Runtime latency with the served session options"):
            eager_image = _eager_image(generator, feeds)
            inprocess = _inprocess_latency(onnx_path, requests[0], options)
        with step("starting tritonserver"):
            server = TritonServer(workdir / "repository", log_file=workdir / "tritonserver.log").start()
        try:
            result = asyncio.run(_load(server.grpc_url, requests, eager_image, options))
            if options.perf_analyzer:
                result["perf_analyzer"] = _cross_check(server.grpc_url, requests, result, options, workdir)
        finally:
            server.stop()
    setup = {"preset": config.preset, "ngf": config.ngf, "size": f"{height}x{width}",
             "generator_config": config.to_dict(), "graph": graph, "model": io_spec.PIPELINE_MODEL,
             "batch_per_request": 1, "instances": options.instances, "intra_op_threads": options.intra_op_threads,
             "max_batch_size": options.max_batch_size, "queue_delay_us": queue_delay_us,
             "requests_per_level": options.requests, "warmup_per_level": options.warmup,
             "rate_requests": options.rate_requests, "label_maps": DISTINCT_MAPS, "regions": options.regions,
             "seed": options.seed,
             "boundary_share": boundary_share(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE))}
    machine["load_average_1min_end"] = load_average()
    machine |= cpu_competition(cpu_start, machine["cores"])
    return {"kind": "served", "format_version": FORMAT_VERSION, "machine": machine, "setup": setup,
            "inprocess_batch1": inprocess, "serving_overhead": _serving_overhead(result["concurrency"], inprocess),
            "wire_bytes": wire_bytes(config, height, width), **result}


def message_bytes(model: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> tuple[int, int]:
    """Serialized sizes of the gRPC inference request and response carrying these tensors (raw binary contents, as
    tritonclient sends them)."""
    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=[
        np.ascontiguousarray(array).tobytes() for array in inputs.values()])
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
    for name in outputs:
        request.outputs.add(name=name)
    response = service_pb2.ModelInferResponse(model_name=model, model_version="1", raw_output_contents=[
        np.ascontiguousarray(array).tobytes() for array in outputs.values()])
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
    return request.ByteSize(), response.ByteSize()


def wire_bytes(config: GeneratorConfig, height: int, width: int) -> dict[str, Any]:
    """Bytes per batch-1 request of the uint8 contract vs a naive float one-hot-in / float-out request."""
    model_io = io_spec.pipeline_io(config, height, width, has_encoder=False)
    inputs = {spec.name: np.zeros((1, *spec.dims), spec.dtype) for spec in model_io.inputs if not spec.optional}
    outputs = {spec.name: np.zeros((1, *spec.dims), spec.dtype) for spec in model_io.outputs}
    naive_in = {NAIVE_INPUT: np.zeros((1, config.semantic_nc, height, width), np.float32)}
    if config.use_vae:
        naive_in[io_spec.Z] = np.zeros((1, config.z_dim), np.float32)
    naive_out = {io_spec.IMAGE_FLOAT: np.zeros((1, 3, height, width), np.float32)}
    contract = message_bytes(io_spec.PIPELINE_MODEL, inputs, outputs)
    naive = message_bytes(io_spec.PIPELINE_MODEL, naive_in, naive_out)
    return {"uint8_request": contract[0], "uint8_response": contract[1],
            "naive_float_request": naive[0], "naive_float_response": naive[1],
            "naive_over_uint8": (naive[0] + naive[1]) / (contract[0] + contract[1]),
            "method": "serialized ModelInferRequest/Response protobuf sizes (raw tensor contents); the naive float "
                      "model is not served, its sizes are computed the same way"}


def _eager_image(generator: SPADEGenerator, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 `[N, H, W, 3]` images of the eager generator, rounded as the deployment graph rounds them."""
    config = generator.config
    z = torch.from_numpy(feeds[io_spec.Z]) if io_spec.Z in feeds else None
    with torch.inference_mode():
        image = generator(to_semantic_input(feeds[io_spec.LABEL], feeds.get(io_spec.INSTANCE), config), z)
    return to_uint8_image(image).numpy()


def _serving_overhead(levels: list[dict[str, Any]], inprocess: dict[str, Any]) -> dict[str, float] | None:
    """Served p50 at concurrency 1 against the in-process p50 at batch 1 (None without a concurrency-1 level)."""
    single = next((level for level in levels if level["concurrency"] == 1 and level["p50_ms"] is not None), None)
    if single is None:
        return None
    return {"inprocess_p50_ms": inprocess["p50_ms"], "served_p50_ms": single["p50_ms"],
            "overhead_ms": single["p50_ms"] - inprocess["p50_ms"],
            "served_over_inprocess": single["p50_ms"] / inprocess["p50_ms"]}


def _inprocess_latency(onnx_path: Path, request: dict[str, np.ndarray], options: ServedOptions) -> dict[str, Any]:
    """The generator graph in this process at batch 1, with the session options of one served instance."""
    session = make_session(onnx_path, threads=options.intra_op_threads)
    timing = measure(lambda: session.run(None, request), warmup=2, repeats=options.inprocess_repeats)
    return {"runtime": "ort", "threads": options.intra_op_threads, "repeats": options.inprocess_repeats,
            "p50_ms": timing.percentile(50), "p95_ms": timing.percentile(95), "p99_ms": timing.percentile(99)}


def _request_kwargs(request: dict[str, np.ndarray], index: int) -> dict[str, Any]:
    """`AsyncSpadeClient.synthesize` arguments for prepared request `index` (a VAE model gets seed `index`, which
    the pipeline turns into the request's z)."""
    kwargs: dict[str, Any] = {"labels": request[io_spec.LABEL]}
    if io_spec.INSTANCE in request:
        kwargs["instances"] = request[io_spec.INSTANCE]
    if io_spec.Z in request:
        kwargs["seed"] = index
    return kwargs


async def _load(url: str, requests: list[dict[str, np.ndarray]], eager_image: np.ndarray,
                options: ServedOptions) -> dict[str, Any]:
    calls = [_request_kwargs(request, index) for index, request in enumerate(requests)]
    async with AsyncSpadeClient(url, timeout=options.request_timeout_s) as client:
        stats_client = aioclient.InferenceServerClient(url)

        async def counted(since: dict[str, dict[str, int]], items: int) -> dict[str, dict[str, int]]:
            return await _settled_statistics(stats_client, since, items, options.statistics_timeout_s)
        try:
            # Each snapshot counts every request answered before it, so a level's difference is exactly its own.
            snapshot = await _statistics(stats_client)  # a fresh server: nothing answered yet
            served = np.concatenate([await client.synthesize(**call) for call in calls])
            snapshot = await counted(snapshot, len(calls))
            exactness = {"max_abs_diff_uint8_vs_eager": int(np.abs(served.astype(np.int16) - eager_image).max()),
                         "note": "served uint8 image vs the eager float image rounded to uint8, in 8-bit levels"}
            levels = []
            for concurrency in tqdm(options.concurrency, desc="served: concurrency", unit="level", file=sys.stderr):
                warmup = await _closed_loop(client, calls, concurrency, max(options.warmup, concurrency),
                                            options.level_timeout_s)
                before, cpu = await counted(snapshot, warmup.answered), time.process_time()
                load = await _closed_loop(client, calls, concurrency, options.requests, options.level_timeout_s)
                cpu = time.process_time() - cpu
                snapshot = await counted(before, load.answered)
                levels.append({"concurrency": concurrency, **_summarize(load, cpu),
                               "server": _server_side(before, snapshot)})
            best = max(level["throughput_rps"] for level in levels)
            rates = options.rates or tuple(round(fraction * best, 2) for fraction in AUTO_RATE_FRACTIONS)
            open_loop = []
            for rate in tqdm(rates, desc="served: fixed rate", unit="rate", file=sys.stderr):
                before, cpu = snapshot, time.process_time()
                load = await _open_loop(client, calls, rate, options)
                cpu = time.process_time() - cpu
                snapshot = await counted(before, load.answered)
                open_loop.append({"rate_rps": rate, **_summarize(load, cpu, steady_only=False),
                                  "server": _server_side(before, snapshot)})
        finally:
            await stats_client.close()
    return {"exactness": exactness, "concurrency": levels, "fixed_rate": open_loop}


async def _timed_call(client: AsyncSpadeClient, call: dict[str, Any], start: float) -> Sample:
    try:
        await client.synthesize(**call)
        ok = True
    except SpadeClientError:
        ok = False
    done = time.perf_counter()
    return Sample((done - start) * 1e3, ok, done)


async def _closed_loop(client: AsyncSpadeClient, calls: list[dict[str, Any]], concurrency: int, count: int,
                       timeout_s: float) -> Load:
    """`count` requests from `concurrency` workers, each sending its next request when the last one returned."""
    load = Load(started=time.perf_counter())
    deadline = load.started + timeout_s
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < deadline:
            index, sent = sent, sent + 1
            load.last_sent = time.perf_counter()
            load.samples.append(await _timed_call(client, calls[index % len(calls)], load.last_sent))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if sent < count:
        load.stopped = f"time limit of {timeout_s:.0f} s reached after {sent} requests"
    return load


async def _open_loop(client: AsyncSpadeClient, calls: list[dict[str, Any]], rate: float,
                     options: ServedOptions) -> Load:
    """Poisson arrivals at `rate` requests/s (`arrival_offsets`); each latency counts from its scheduled send
    time."""
    load = Load(started=time.perf_counter())
    tasks: list[asyncio.Task] = []
    for index, offset in enumerate(arrival_offsets(rate, options.rate_requests, options.seed)):
        scheduled = load.started + float(offset)
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        if time.perf_counter() - load.started > options.level_timeout_s:
            load.stopped = f"time limit of {options.level_timeout_s:.0f} s reached after {index} requests"
            break
        if sum(not task.done() for task in tasks) >= options.max_in_flight:
            load.stopped = f"overloaded: {options.max_in_flight} requests outstanding after {index} requests"
            break
        load.last_sent = time.perf_counter()
        tasks.append(asyncio.create_task(_timed_call(client, calls[index % len(calls)], scheduled)))
    load.samples = list(await asyncio.gather(*tasks))
    return load


def arrival_offsets(rate: float, count: int, seed: int) -> np.ndarray:
    """Seconds from the start of `count` Poisson arrivals at `rate` per second: exponential gaps, scaled so that the
    schedule spans exactly `count / rate` seconds. A few dozen draws stray from their mean by tens of per cent (48 of
    seed 0 drawn as they come: 1.10x as long, 16: 1.36x), which would offer another rate than the one reported."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    return np.cumsum(gaps * (count / rate / gaps.sum()))


def _summarize(load: Load, cpu_s: float, steady_only: bool = True) -> dict[str, Any]:
    """Latency percentiles of the answered requests, and throughput: with `steady_only` (a closed loop) over the
    steady part of the load, the answers that arrived until the last request was sent (the drain after it, with
    fewer requests in flight, left out); otherwise (an open loop, whose arrivals do not depend on the answers) every
    answer, from the start to the last answer. `cpu_s` is the CPU time this process (the load generator) spent
    meanwhile: on a small machine, taken from the server."""
    latencies = [sample.latency_ms for sample in load.samples if sample.ok]
    steady = [sample for sample in load.samples if sample.ok and sample.done_at <= load.last_sent]
    if steady and steady_only:
        throughput = len(steady) / (load.last_sent - load.started)
    else:  # every answer (an open loop, or a closed one whose answers all came after the last send)
        finished = max((sample.done_at for sample in load.samples), default=load.started)
        throughput = len(latencies) / (finished - load.started) if finished > load.started else 0.0
    percentile = (lambda q: float(np.percentile(latencies, q))) if latencies else (lambda q: None)
    return {"requests": len(load.samples), "errors": len(load.samples) - len(latencies),
            "mean_ms": float(np.mean(latencies)) if latencies else None,
            "p50_ms": percentile(50), "p95_ms": percentile(95), "p99_ms": percentile(99),
            "throughput_rps": throughput, "client_cpu_ms_per_request": cpu_s * 1e3 / max(len(load.samples), 1),
            "stopped_early": load.stopped}


async def _statistics(client: aioclient.InferenceServerClient) -> dict[str, dict[str, int]]:
    """Cumulative counters of each model: successes, executions, inferences, and ns in queue and compute."""
    counters = {}
    for model in STATS_MODELS:
        stats = (await client.get_inference_statistics(model_name=model, as_json=True))["model_stats"][0]
        timing = stats.get("inference_stats", {})
        # Protobuf JSON leaves out zero counters and writes 64-bit integers as strings.
        counters[model] = {"success": int(timing.get("success", {}).get("count", 0)),
                           "executions": int(stats.get("execution_count", 0)),
                           "inferences": int(stats.get("inference_count", 0)),
                           **{part: int(timing.get(part, {}).get("ns", 0))
                              for part in ("queue", "compute_input", "compute_infer", "compute_output")}}
    return counters


async def _settled_statistics(client: aioclient.InferenceServerClient, before: dict[str, dict[str, int]],
                              items: int, timeout_s: float) -> dict[str, dict[str, int]]:
    """Statistics once every model has counted the `items` batch-1 requests answered since `before`: Triton updates
    them just after sending a response, so a snapshot taken at once can miss the last requests. Past `timeout_s` it
    warns and returns what is counted."""
    deadline = time.perf_counter() + timeout_s
    while True:
        after = await _statistics(client)
        counted = min(after[model]["inferences"] - before[model]["inferences"] for model in STATS_MODELS)
        if counted >= items:
            return after
        if time.perf_counter() > deadline:
            print(f"warning: Triton's statistics counted {counted} of {items} answered requests after {timeout_s:.0f} "
                  f"s; the server-side numbers of this level are incomplete", file=sys.stderr)
            return after
        await asyncio.sleep(0.02)


def _server_side(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Mean queue and compute time per request and mean batch size of each model between two snapshots."""
    result = {}
    for model in STATS_MODELS:
        delta = {key: after[model][key] - before[model][key] for key in after[model]}
        count = max(delta["success"], 1)
        result[model] = {
            "requests": delta["success"],
            "items": delta["inferences"],  # batch items, over all requests
            "queue_ms": delta["queue"] / count / 1e6,
            "compute_ms": (delta["compute_input"] + delta["compute_infer"] + delta["compute_output"]) / count / 1e6,
            "mean_batch": delta["inferences"] / delta["executions"] if delta["executions"] else None}
    return result


def _cross_check(url: str, requests: list[dict[str, np.ndarray]], result: dict[str, Any], options: ServedOptions,
                 workdir: Path) -> dict[str, Any]:
    """perf_analyzer on the same model, label maps, concurrency levels and rates; an error is recorded, not raised,
    so a failed cross-check does not lose the sweep."""
    data = write_input_data(workdir / "perf_analyzer_input.json",
                            [{io_spec.LABEL: request[io_spec.LABEL][0], **(
                                {io_spec.INSTANCE: request[io_spec.INSTANCE][0]} if io_spec.INSTANCE in request
                                else {})} for request in requests])
    try:
        rows = run_perf_analyzer(url, io_spec.PIPELINE_MODEL, data, concurrency=options.concurrency,
                                 rates=tuple(level["rate_rps"] for level in result["fixed_rate"]),
                                 window_ms=options.perf_analyzer_window_ms)
    except PerfAnalyzerError as error:
        print(f"warning: perf_analyzer cross-check failed: {error}", file=sys.stderr)
        return {"error": str(error)}
    return {"rows": rows, "window_ms": options.perf_analyzer_window_ms}
