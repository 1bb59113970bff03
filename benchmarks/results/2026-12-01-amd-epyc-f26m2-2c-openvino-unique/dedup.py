"""The two ways of finding the distinct label windows (`spade_deploy.export.sparse.distinct_rows`: ROWS, ONNX Unique
of the rows; KEYS, 1-D Unique of int32 keys), each in the bf16 graph (`sparse-bf16`'s other choices; dense below
16 px, as it was then) and the fp32 graph (`sparse`'s), ADE20K 256x256 (random weights with calibrated batch-norm
statistics, seed 0; one 16-region map; 2 threads): p50 of calls taken in shuffled turns in one process, per runtime
(the bf16 graphs in OpenVINO at bf16, the fp32 graphs in ONNX Runtime and in OpenVINO pinned to f32), the ratio
KEYS / ROWS of the same turns, and the largest difference between the two outputs.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique/dedup.py [--turns 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from functools import partial
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12)
    turns = parser.parse_args().turns
    import numpy as np
    import torch

    from spade_deploy.bench.inprocess import graph_feeds, take_turns, turn_ratio
    from spade_deploy.bench.machine import describe_machine
    from spade_deploy.export.graphs import DeployGenerator
    from spade_deploy.export.onnx import write_generator_onnx
    from spade_deploy.export.precision import BF16, FP32
    from spade_deploy.export.runtime import OpenVinoSession, make_session
    from spade_deploy.export.sparse import KEYS, ROWS, sparse_generator
    from spade_deploy.model import io_spec
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator

    torch.set_num_threads(2)
    config = generator_preset("ade20k", ngf=64)
    generator = random_generator(config, seed=0)
    feeds = graph_feeds(config, 1, 256, 256, seed=0, regions=16)
    graphs = {"bf16 graph": {"normalize_first": True, "winograd_up_to": 0}, "fp32 graph": {}}
    runs = {"OpenVINO bf16": ("bf16 graph", BF16), "ONNX Runtime": ("fp32 graph", None),
            "OpenVINO f32": ("fp32 graph", FP32)}
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        paths = {}
        for graph, options in graphs.items():
            for deduplicate in (ROWS, KEYS):
                module = DeployGenerator(sparse_generator(generator, 256, 256, deduplicate=deduplicate, **options),
                                         config, "sparse").eval()
                paths[graph, deduplicate] = write_generator_onnx(module, Path(workdir) / f"{graph}-{deduplicate}.onnx",
                                                                 height=256, width=256)
        for run, (graph, precision) in runs.items():
            sessions = {deduplicate: make_session(paths[graph, deduplicate], threads=2) if precision is None
                        else OpenVinoSession(paths[graph, deduplicate], precision=precision, threads=2)
                        for deduplicate in (ROWS, KEYS)}
            outputs = {name: session.run([io_spec.IMAGE_FLOAT], feeds)[0] for name, session in sessions.items()}
            times = take_turns({name: partial(session.run, [io_spec.IMAGE_FLOAT], feeds)
                                for name, session in sessions.items()}, turns)
            results[run] = {"graph": graph,
                            **{f"{name} p50 ms": statistics.median(times[name]) for name in sessions},
                            "keys / rows": turn_ratio(times, KEYS, ROWS),
                            "max |keys - rows|": float(np.abs(outputs[KEYS] - outputs[ROWS]).max())}
            del sessions
    print(json.dumps({"machine": describe_machine(2), "turns": turns, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
