"""What an ONNX Runtime session of the plain and our sparse ADE20K 256x256 export (batch 1, 16-region map, 2 threads)
holds once loaded and after five calls, with and without returning the heap that loading freed
(`make_session` does since this folder; `spade_deploy.model.memory.release_freed_heap`). One fresh process each; MiB
above the resident set before building the session (/proc/self/status VmRSS, VmHWM for the peak).

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-memory-pattern/steady.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pattern import ade20k_exports  # this folder's

CHILD = """
import json, sys
import onnxruntime as ort
from spade_deploy.bench.inprocess import graph_feeds
from spade_deploy.bench.machine import peak_resident_mb, reset_peak_resident, resident_mb
from spade_deploy.export.runtime import session_options
from spade_deploy.model import io_spec
from spade_deploy.model.config import generator_preset
from spade_deploy.model.memory import release_freed_heap
feeds = graph_feeds(generator_preset("ade20k", ngf=64), 1, 256, 256, seed=0, regions=16)
reset_peak_resident(); before = resident_mb()
session = ort.InferenceSession(sys.argv[1], session_options(2), providers=["CPUExecutionProvider"])
if sys.argv[2] == "released":
    release_freed_heap()
built = resident_mb() - before
for _ in range(5):
    session.run([io_spec.IMAGE_FLOAT], feeds)
print(json.dumps({"after building": built, "after 5 calls": resident_mb() - before,
                  "peak": peak_resident_mb() - before}))
"""


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for graph, path in ade20k_exports(Path(workdir)):
            for heap in ("kept", "released"):
                child = subprocess.run([sys.executable, "-c", CHILD, str(path), heap], capture_output=True, text=True,
                                       check=True)
                rows[f"{graph}, freed heap {heap}"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
