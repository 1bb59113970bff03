"""Each graph compiled by OpenVINO with its dynamic batch (as read from the ONNX) and fixed to one image (as
OpenVinoSession compiles a generator export): p50 of calls taken in shuffled turns in one process, the ratio
one-image / dynamic of the same turns, and the largest difference between the two outputs. ADE20K 256x256 (random
weights with calibrated batch-norm statistics, seed 0; one 16-region map; 2 threads): the plain model at OpenVINO's
default precision, our fp32 sparse graph pinned to f32, our bf16 graph pinned to bf16.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-openvino-unique/static_shapes.py [--turns 12]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=12)
    turns = parser.parse_args().turns
    import numpy as np
    import openvino
    import torch

    from spade_deploy.bench.inprocess import graph_feeds, take_turns, turn_ratio
    from spade_deploy.bench.machine import describe_machine
    from spade_deploy.export.onnx import export_generator_onnx
    from spade_deploy.export.precision import BF16, FP32
    from spade_deploy.export.runtime import openvino_settings, read_openvino_model
    from spade_deploy.model import io_spec
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator

    torch.set_num_threads(2)
    config = generator_preset("ade20k", ngf=64)
    generator = random_generator(config, seed=0)
    feeds = graph_feeds(config, 1, 256, 256, seed=0, regions=16)
    core = openvino.Core()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for graph, precision in (("plain", None), ("sparse", FP32), ("sparse-bf16", BF16)):
            path = export_generator_onnx(generator, Path(workdir) / f"{graph}.onnx", height=256, width=256,
                                         graph=graph)
            models = {"dynamic batch": core.read_model(str(path)), "one image": read_openvino_model(core, path)[0]}
            requests = {name: core.compile_model(model, "CPU", openvino_settings(precision, 2)).create_infer_request()
                        for name, model in models.items()}
            outputs = {name: request.infer(feeds)[io_spec.IMAGE_FLOAT].copy() for name, request in requests.items()}
            times = take_turns({name: lambda request=request: request.infer(feeds)
                                for name, request in requests.items()}, turns)
            results[graph] = {"precision hint": precision or "OpenVINO's default",
                              **{f"{name} p50 ms": statistics.median(times[name]) for name in requests},
                              "one image / dynamic batch": turn_ratio(times, "one image", "dynamic batch"),
                              "max |one image - dynamic batch|": float(np.abs(outputs["one image"]
                                                                              - outputs["dynamic batch"]).max())}
            del requests
    print(json.dumps({"machine": describe_machine(2), "turns": turns, "graphs": results}, indent=1))


if __name__ == "__main__":
    main()
