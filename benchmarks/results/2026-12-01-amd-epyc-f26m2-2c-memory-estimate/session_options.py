"""RSS after each of three runs (all-zero map, then an all-boundary map twice) of a generator ONNX at batch 1, with
ONNX Runtime's CPU arena and memory pattern on or off:

    python session_options.py GENERATOR.onnx ARENA(0|1) PATTERN(0|1)
"""
import resource
import sys
import time

import numpy as np
import onnxruntime as ort

from spade_deploy.export.metadata import read_export_metadata

path, arena, pattern = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
metadata = read_export_metadata(path)
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.intra_op_num_threads = 1
options.enable_cpu_mem_arena = arena
options.enable_mem_pattern = pattern
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def rss_mib() -> int:
    return round(int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20)


zeros = np.zeros((1, metadata.height, metadata.width), np.uint8)
boundary = np.random.default_rng(0).integers(0, metadata.config.num_label_channels, zeros.shape).astype(np.uint8)
runs = []
for labels in (zeros, boundary, boundary):
    start = time.perf_counter()
    session.run(["image"], {"label": labels})
    runs.append((rss_mib(), round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                 round(time.perf_counter() - start, 2)))
print(f"{path} arena={arena} pattern={pattern}: (RSS MiB, peak RSS MiB, seconds) after each run: {runs}")
