"""How long should Triton's dynamic batcher wait for more requests? Latency and throughput of the served `spade`
pipeline for a few `max_queue_delay_microseconds`, at concurrency 1 (a lone user) and 8 (a burst).

    python benchmarks/serve_queue_delay.py [--ngf 16] [--size 128] [--delays 0,2000,10000,50000]

For each delay: write a CPU-variant repository, start a real tritonserver, burn in, then send batch-1 requests from
`concurrency` asyncio workers. Reports median / p95 latency, images per second and the mean executed batch size
(from Triton's statistics), and checks that the served image equals ONNX Runtime in this process. Compare rows of one
run only (the machine is shared; absolute times move by 10-15 % between runs).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient

from spade_deploy import io_spec
from spade_deploy.client import AsyncSpadeClient
from spade_deploy.config import GeneratorConfig
from spade_deploy.onnx_export import export_generator_onnx
from spade_deploy.runtime import make_session
from spade_deploy.serve import TritonServer
from spade_deploy.synthetic import random_generator, synthetic_batch
from spade_deploy.triton_repo import write_repository


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side (multiple of 32)")
    parser.add_argument("--label-nc", type=int, default=20)
    parser.add_argument("--delays", default="0,2000,10000,50000", help="queue delays to compare, microseconds")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--requests", type=int, default=32, help="timed requests per concurrency level")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance")
    args = parser.parse_args()

    config = GeneratorConfig(label_nc=args.label_nc, ngf=args.ngf, crop_size=args.size)
    labels, _ = synthetic_batch(config, args.requests, seed=1)
    labels = labels.astype(np.uint8)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime "
          f"{onnxruntime.__version__}; generator ngf={args.ngf} {args.size}x{args.size} label_nc={args.label_nc}, "
          f"{args.instances} instances x {args.threads} threads, batch-1 requests")
    print("| queue delay (us) | concurrency | median latency (ms) | p95 latency (ms) | images/s | mean batch |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_generator_onnx(random_generator(config), Path(scratch) / "generator.onnx")
        reference = make_session(onnx_path, threads=1).run([io_spec.IMAGE], {io_spec.LABEL: labels[:1]})[0]
        for delay in (int(value) for value in args.delays.split(",")):
            repository = Path(scratch) / f"repository-{delay}"
            write_repository(repository, onnx_path, instances=args.instances, intra_op_threads=args.threads,
                             queue_delay_us=delay)
            with TritonServer(repository) as server:
                for concurrency in (int(value) for value in args.concurrency.split(",")):
                    row = asyncio.run(measure(server.grpc_url, labels, concurrency, reference))
                    print(f"| {delay} | {concurrency} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.2f} | {row[3]:.2f} |",
                          flush=True)


async def measure(url: str, labels: np.ndarray, concurrency: int,
                  reference: np.ndarray) -> tuple[float, float, float, float]:
    async with AsyncSpadeClient(url) as client:
        served = await client.synthesize(labels[:1])
        if not np.array_equal(served, reference):
            raise SystemExit(f"served image differs from ONNX Runtime: max |diff| "
                             f"{np.abs(served.astype(int) - reference).max()}")
        await asyncio.gather(*(client.synthesize(labels[:1]) for _ in range(2 * concurrency)))  # burn-in
        before = executions(url)
        queue = list(range(len(labels)))
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                index = queue.pop()
                start = time.perf_counter()
                await client.synthesize(labels[index:index + 1])
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    # Statistics are recorded just after the responses are sent: wait until every timed request is counted.
    while sum(batch * count for batch, count in executions(url, before).items()) < len(labels):
        await asyncio.sleep(0.05)
    counted = executions(url, before)
    mean_batch = sum(batch * count for batch, count in counted.items()) / sum(counted.values())
    milliseconds = np.array(latencies) * 1000
    return float(np.median(milliseconds)), float(np.percentile(milliseconds, 95)), len(labels) / elapsed, mean_batch


def executions(url: str, since: dict[int, int] | None = None) -> dict[int, int]:
    """Executions of the pipeline per batch size (minus `since`)."""
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(io_spec.PIPELINE_MODEL).model_stats[0]
    since = since or {}
    return {entry.batch_size: entry.compute_infer.count - since.get(entry.batch_size, 0)
            for entry in stats.batch_stats}


if __name__ == "__main__":
    main()
