"""Peak memory of the plain and our sparse ADE20K 256x256 export in ONNX Runtime, each in a process of its own.

The bench measures every runtime in one process, one after another, and a runtime built after others can reuse heap
they freed, which hides part of its own footprint. Here each export runs alone: resident memory before building the
session, the peak while building it, the resident memory after it, and the peak over two calls (batch 1, 16-region
map), from /proc/self/status (VmRSS, VmHWM reset through /proc/self/clear_refs).

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-precision-ade20k-folds/isolated_memory.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import gc, json, sys
from spade_deploy.bench.inprocess import graph_feeds
from spade_deploy.bench.machine import peak_resident_mb, reset_peak_resident, resident_mb
from spade_deploy.export.runtime import make_session
from spade_deploy.model import io_spec
from spade_deploy.model.config import generator_preset
feeds = graph_feeds(generator_preset("ade20k", ngf=64), 1, 256, 256, seed=0, regions=16)
gc.collect(); reset_peak_resident(); before = resident_mb()
session = make_session(sys.argv[1], threads=2)
load_peak = peak_resident_mb(); gc.collect(); built = resident_mb(); reset_peak_resident()
for _ in range(2):
    session.run([io_spec.IMAGE_FLOAT], feeds)
print(json.dumps({"build_peak_mib": load_peak - before, "built_mib": built - before,
                  "call_peak_mib": peak_resident_mb() - before}))
"""


def main() -> None:
    import torch

    from spade_deploy.export.onnx import export_generator_onnx
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator

    torch.set_num_threads(2)
    generator = random_generator(generator_preset("ade20k", ngf=64), seed=0)
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for graph in ("plain", "sparse"):
            path = export_generator_onnx(generator, Path(workdir) / f"{graph}.onnx", height=256, width=256,
                                         graph=graph)
            result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                                    check=True)
            rows[graph] = {"file_mb": path.stat().st_size / 1e6, **json.loads(result.stdout.strip().splitlines()[-1])}
    print(json.dumps(rows, indent=1))
    print("| export | file MB | peak while building MiB | resident after building MiB | peak over two calls MiB |")
    print("|---|---|---|---|---|")
    for graph, row in rows.items():
        print(f"| {graph} | {row['file_mb']:.1f} | {row['build_peak_mib']:.0f} | {row['built_mib']:.0f} | "
              f"{row['call_peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
