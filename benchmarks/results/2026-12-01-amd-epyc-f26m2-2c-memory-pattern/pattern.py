"""ONNX Runtime's memory pattern on and off, for the plain and our sparse ADE20K 256x256 export (batch 1, 16-region
map, 2 threads): peak memory and speed; and the bench's peak-memory measure before and after this folder's change.

Memory, each export and setting in two fresh processes (/proc/self/status: VmRSS, and VmHWM reset through
/proc/self/clear_refs after releasing freed heap; MiB above the resident set before building the session):
- "process": the peak while building the session, the resident set after it, and the peak over building and three
  calls together (the bench's measure since this folder);
- "earlier probe": the bench's measure before it, what building left resident plus the most three calls added above
  the resident set after releasing freed heap (which counts heap the calls reuse twice, and leaves out building).
Speed: the three sessions of one export (pattern on, on again as a control, off) in one process, called in shuffled
turns; the median of per-turn ratios against the first.

    .venv/bin/python benchmarks/results/2026-12-01-amd-epyc-f26m2-2c-memory-pattern/pattern.py [--turns 25 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

CHILD = """
import json, sys
import onnxruntime as ort
from spade_deploy.bench.inprocess import graph_feeds
from spade_deploy.bench.machine import peak_resident_mb, reset_peak_resident, resident_mb
from spade_deploy.export.runtime import session_options
from spade_deploy.model import io_spec
from spade_deploy.model.config import generator_preset
feeds = graph_feeds(generator_preset("ade20k", ngf=64), 1, 256, 256, seed=0, regions=16)
path, pattern, measure = sys.argv[1:]
options = session_options(2)
options.enable_mem_pattern = pattern == "on"
reset_peak_resident(); before = resident_mb()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
load_peak, built = peak_resident_mb() - before, resident_mb() - before
if measure == "earlier probe":
    reset_peak_resident()
    start = resident_mb()
for _ in range(3):
    session.run([io_spec.IMAGE_FLOAT], feeds)
if measure == "earlier probe":
    print(json.dumps({"earlier probe": built + peak_resident_mb() - start}))
else:
    print(json.dumps({"load peak": load_peak, "built": built, "process peak": peak_resident_mb() - before}))
"""


def speed(path: Path, turns: int) -> dict[str, float]:
    import onnxruntime as ort

    from spade_deploy.bench.inprocess import graph_feeds, take_turns, turn_ratio
    from spade_deploy.export.runtime import session_options
    from spade_deploy.model import io_spec
    from spade_deploy.model.config import generator_preset

    feeds = graph_feeds(generator_preset("ade20k", ngf=64), 1, 256, 256, seed=0, regions=16)
    sessions = {}
    for name, pattern in (("on", True), ("on again", True), ("off", False)):
        options = session_options(2)
        options.enable_mem_pattern = pattern
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(2):
            sessions[name].run([io_spec.IMAGE_FLOAT], feeds)
    times = take_turns({name: partial(session.run, [io_spec.IMAGE_FLOAT], feeds)
                        for name, session in sessions.items()}, turns)
    return {f"{name} ms": statistics.median(values) for name, values in times.items()} | {
        f"{name} / on": turn_ratio(times, name, "on") for name in times}


def ade20k_exports(folder: Path) -> Iterator[tuple[str, Path]]:
    """(graph, file) for the plain and our sparse export of the random ADE20K generator at 256x256, in turn."""
    import torch

    from spade_deploy.export.onnx import export_generator_onnx
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator

    torch.set_num_threads(2)
    generator = random_generator(generator_preset("ade20k", ngf=64), seed=0)
    for graph in ("plain", "sparse"):
        yield graph, export_generator_onnx(generator, folder / f"{graph}.onnx", height=256, width=256, graph=graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs=2, default=(25, 10), metavar=("SPARSE", "PLAIN"))
    turns = dict(zip(("sparse", "plain"), parser.parse_args().turns))
    from spade_deploy.bench.machine import describe_machine

    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for graph, path in ade20k_exports(Path(workdir)):
            for pattern in ("on", "off"):
                row = rows[f"{graph}, pattern {pattern}"] = {}
                for measure in ("process", "earlier probe"):
                    child = subprocess.run([sys.executable, "-c", CHILD, str(path), pattern, measure],
                                           capture_output=True, text=True, check=True)
                    row.update(json.loads(child.stdout.strip().splitlines()[-1]))
            rows[f"{graph}, speed"] = speed(path, turns[graph])
    print(json.dumps({"machine": describe_machine(2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
