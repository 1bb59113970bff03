"""Our graphs and the plain model in OpenVINO at bf16, ADE20K 256x256 (random weights with calibrated batch-norm
statistics, seed 0; one 16-region map; 2 threads): quality against the model in float64, and p50 of calls taken in
shuffled turns in one process. Each graph in ONNX Runtime fp32 too, for its exactness (max |Δ| against float64).
Also the ratio |mean| / deviation of every batch norm, which decides how much folding it into the modulation costs
at bf16.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-bf16-norm-step/quality.py [--turns 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from functools import partial
from pathlib import Path

GRAPHS = ("plain", "dense", "sparse", "sparse-bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8)
    turns = parser.parse_args().turns
    import numpy as np
    import torch

    from spade_deploy.bench.inprocess import graph_feeds, take_turns
    from spade_deploy.bench.machine import describe_machine
    from spade_deploy.export.onnx import export_generator_onnx
    from spade_deploy.export.parity import float64_copy, quality
    from spade_deploy.export.precision import BF16
    from spade_deploy.export.runtime import OpenVinoSession, make_session
    from spade_deploy.model import io_spec
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator
    from spade_deploy.model.tensors import to_semantic_input

    torch.set_num_threads(2)
    config = generator_preset("ade20k", ngf=64)
    generator = random_generator(config, seed=0)
    feeds = graph_feeds(config, 1, 256, 256, seed=0, regions=16)
    with torch.inference_mode():
        semantic = to_semantic_input(feeds[io_spec.LABEL], None, config)
        reference = float64_copy(generator)(semantic.double()).float().numpy()
    norms = {name: (module.running_mean.abs() / (module.running_var + module.eps).sqrt())
             for name, module in generator.named_modules() if hasattr(module, "running_mean")
             and module.running_mean is not None}
    rows: dict[str, dict] = {}
    sessions = {}
    with tempfile.TemporaryDirectory() as workdir:
        for graph in GRAPHS:
            path = export_generator_onnx(generator, Path(workdir) / f"{graph}.onnx", height=256, width=256,
                                         graph=graph)
            exact = make_session(path, threads=2).run([io_spec.IMAGE_FLOAT], feeds)[0]
            sessions[graph] = OpenVinoSession(path, precision=BF16, threads=2)
            measured = quality(sessions[graph].run([io_spec.IMAGE_FLOAT], feeds)[0], reference)
            rows[graph] = {"computed": sessions[graph].precision, "psnr_db": measured.psnr_db,
                           "max_abs_diff": measured.max_abs_diff, "within_1_level": measured.within_1_level,
                           "within_2_levels": measured.within_2_levels,
                           "fp32_onnxruntime_max_abs_diff": float(np.abs(exact - reference).max())}
        times = take_turns({graph: partial(sessions[graph].run, [io_spec.IMAGE_FLOAT], feeds) for graph in GRAPHS},
                           turns)
    for graph in GRAPHS:
        rows[graph]["p50_ms"] = statistics.median(times[graph])
    print(json.dumps({"machine": describe_machine(2), "turns": turns, "rows": rows,
                      "norm_mean_over_deviation": {name: {"median": float(ratio.median()), "max": float(ratio.max())}
                                                   for name, ratio in norms.items()}}, indent=1))


if __name__ == "__main__":
    main()
