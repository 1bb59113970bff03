"""The bf16 graph (`sparse-bf16`'s choices: int32 keys, batch norm as a step, direct convs) with its blocks dense
below 16, 32 and 64 px, in OpenVINO at bf16 (compiled for one image, as OpenVinoSession does), ADE20K 256x256
(random weights with calibrated batch-norm statistics, seed 0; 16-region maps; 2 threads): PSNR against the model
in float64 on two maps, p50 of calls taken in shuffled turns in one process, and each one's time over dense below
16's in the same turns.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique/dense_below.py [--turns 12]
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
    import torch

    from spade_deploy.bench.inprocess import graph_feeds, take_turns, turn_ratio
    from spade_deploy.bench.machine import describe_machine
    from spade_deploy.export.graphs import DeployGenerator
    from spade_deploy.export.onnx import write_generator_onnx
    from spade_deploy.export.parity import float64_copy, quality
    from spade_deploy.export.precision import BF16
    from spade_deploy.export.runtime import OpenVinoSession
    from spade_deploy.export.sparse import KEYS, sparse_generator
    from spade_deploy.model import io_spec
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator
    from spade_deploy.model.tensors import to_semantic_input

    torch.set_num_threads(2)
    config = generator_preset("ade20k", ngf=64)
    generator = random_generator(config, seed=0)
    maps = [graph_feeds(config, 1, 256, 256, seed=seed, regions=16) for seed in (0, 1)]
    with torch.inference_mode():
        references = [float64_copy(generator)(to_semantic_input(feeds[io_spec.LABEL], None, config).double()).numpy()
                      for feeds in maps]
    sessions, results = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        for dense_below in (16, 32, 64):
            core = sparse_generator(generator, 256, 256, dense_below, deduplicate=KEYS, normalize_first=True,
                                    winograd_up_to=0)
            path = write_generator_onnx(DeployGenerator(core, config, "sparse-bf16").eval(),
                                        Path(workdir) / f"dense-below-{dense_below}.onnx", height=256, width=256)
            name = f"dense below {dense_below} px"
            sessions[name] = OpenVinoSession(path, precision=BF16, threads=2)
            results[name] = {"psnr_db": [quality(sessions[name].run([io_spec.IMAGE_FLOAT], feeds)[0],
                                                 reference).psnr_db for feeds, reference in zip(maps, references)]}
        times = take_turns({name: partial(session.run, [io_spec.IMAGE_FLOAT], maps[0])
                            for name, session in sessions.items()}, turns)
    for name in sessions:
        results[name].update({"p50_ms": statistics.median(times[name]),
                              "time / dense below 16 px": turn_ratio(times, name, "dense below 16 px")})
    print(json.dumps({"machine": describe_machine(2), "turns": turns, "graphs": results}, indent=1))


if __name__ == "__main__":
    main()
