"""Peak memory of one generator (or encoder) run, for the calibration of spade_deploy.model.memory.

Each call measures one point in this fresh process: the model is loaded and warmed up on a tiny (or all-zero) input,
then RSS is read and the peak-RSS mark reset (Linux: `5` to /proc/self/clear_refs), the run made, and the new peak
(VmHWM) minus that RSS printed as one JSON line.

    python measure.py pytorch MODEL HEIGHT WIDTH BATCH [--threads N] [--no-mkldnn]
    python measure.py export MODEL SIZE GRAPH OUT.onnx          # a generator ONNX at SIZE x SIZE
    python measure.py onnxruntime OUT.onnx BATCH [--labels synthetic|all-boundary] [--no-warmup]
    python measure.py export-encoder OUT.onnx                   # a random official-size encoder
    python measure.py encoder OUT.onnx HEIGHT WIDTH BATCH

MODEL is `bundled` (the packaged landscape generator) or a JSON dict of GeneratorConfig fields (random weights).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


def start() -> tuple[int, float]:
    """RSS now, with the peak mark reset to it, and the time."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return rss(), time.perf_counter()


def peak() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def generator(model: str):
    from spade_deploy.data.landscapes import bundled_model
    from spade_deploy.model.checkpoint import load_generator
    from spade_deploy.model.config import GeneratorConfig
    from spade_deploy.model.synthetic import random_generator
    if model == "bundled":
        return load_generator(bundled_model())
    return random_generator(GeneratorConfig(**json.loads(model)), seed=0, calibration_batches=1).eval()


def report(before: int, began: float, **fields) -> None:
    print(json.dumps(dict(fields, measured_mib=round((peak() - before) / 2 ** 20, 1),
                          seconds=round(time.perf_counter() - began, 1))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["pytorch", "export", "onnxruntime", "export-encoder", "encoder"])
    parser.add_argument("args", nargs="+")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-mkldnn", action="store_true")
    parser.add_argument("--labels", default="synthetic", choices=["synthetic", "all-boundary"])
    parser.add_argument("--no-warmup", action="store_true")
    options = parser.parse_args()
    if options.mode == "pytorch":
        import torch
        from spade_deploy.model.synthetic import synthetic_batch
        from spade_deploy.model.tensors import to_semantic_input
        if options.threads:
            torch.set_num_threads(options.threads)
        torch.backends.mkldnn.enabled = not options.no_mkldnn
        model, height, width, batch = options.args[0], *map(int, options.args[1:])
        network = generator(model)
        config = network.config
        labels, _ = synthetic_batch(config, batch, height=height, width=width, num_regions=12)
        scale = 2 ** config.num_upsamplings
        with torch.inference_mode():
            network(to_semantic_input(np.zeros((1, 2 * scale, 2 * scale), np.int64), None, config))
            before, began = start()
            network(to_semantic_input(labels, None, config))
        report(before, began, runtime="pytorch", im2col=options.no_mkldnn, model=model, height=height, width=width,
               batch=batch, threads=torch.get_num_threads())
    elif options.mode == "export":
        import torch
        from spade_deploy.export.graphs import generator_graph
        from spade_deploy.export.onnx import write_generator_onnx
        model, size, graph, out = options.args[0], int(options.args[1]), options.args[2], options.args[3]
        with torch.no_grad():
            write_generator_onnx(generator_graph(generator(model), graph=graph, height=size, width=size), out,
                                 height=size, width=size)
    elif options.mode == "onnxruntime":
        from spade_deploy.export.runtime import OnnxGenerator
        from spade_deploy.model.synthetic import synthetic_batch
        path, batch = options.args[0], int(options.args[1])
        network = OnnxGenerator(path, threads=1)  # as the served cpu variant (intra_op_threads=1)
        labels, _ = synthetic_batch(network.config, batch, height=network.height, width=network.width)
        if options.labels == "all-boundary":  # the sparse graph's worst case: no pixel has a constant window
            labels = np.random.default_rng(0).integers(0, network.config.num_label_channels, labels.shape)
        if not options.no_warmup:  # as the served model's warmup: one all-zero map
            network(np.zeros_like(labels[:1]))
        before, began = start()
        network(labels)
        report(before, began, runtime="onnxruntime", graph=network.metadata.graph, labels=options.labels,
               warmup=not options.no_warmup, config=network.config.to_dict(), height=network.height,
               width=network.width, batch=batch)
    elif options.mode == "export-encoder":
        import torch
        from spade_deploy.export.graphs import encoder_graph
        from spade_deploy.export.onnx import write_encoder_onnx
        from spade_deploy.model.config import EncoderConfig
        from spade_deploy.model.synthetic import random_encoder
        with torch.no_grad():
            write_encoder_onnx(encoder_graph(random_encoder(EncoderConfig(), seed=0)), options.args[0])
    else:
        from spade_deploy.export.runtime import OnnxEncoder
        path, (height, width, batch) = options.args[0], map(int, options.args[1:])
        encoder = OnnxEncoder(path, threads=1)
        encoder(np.zeros((1, 256, 256, 3), np.uint8))
        style = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3)).astype(np.uint8)
        before, began = start()
        encoder(style)
        report(before, began, runtime="encoder", height=height, width=width, batch=batch)


if __name__ == "__main__":
    main()
