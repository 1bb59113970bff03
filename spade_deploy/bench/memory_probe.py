"""Peak memory of one bench runtime, measured in a process of its own.

The in-process bench builds every runtime in one process. A runtime built there after other work (exports, the
reference outputs, the other runtimes' builds) can reuse heap that work freed, which hides part of its own footprint:
on ADE20K 256x256 our sparse export looked smaller than the plain one that way and is not. So the bench measures each
runtime here, after the timing: a child process loads the benched generator (built on the meta device and given the
saved tensors, so no freed copy of it is left to reuse), builds the runtime, runs one call per batch and reports, per
batch, the most the process held above its resident set before building, while building or over the calls so far:
what a machine must have free to load the runtime and serve that batch. Nothing is trimmed between building and the
calls, so heap that building freed counts only where the calls do not reuse it (releasing it first and adding the
calls' growth to what building left resident would count it twice).

    python -m spade_deploy.bench.memory_probe RUNTIME SUBJECT.pt BATCH=FEEDS.npz [...]
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from spade_deploy.bench.machine import peak_resident_mb, reset_peak_resident, resident_mb
from spade_deploy.bench.runtimes import RUNTIMES, Feeds, Subject
from spade_deploy.files import atomic_path
from spade_deploy.model.config import GeneratorConfig
from spade_deploy.model.networks import SPADEGenerator

PROBE_TIMEOUT_S = 900


def save_subject(subject: Subject, path: Path) -> Path:
    """The subject (generator weights and config, size, threads, graph files) for `load_subject` in a child."""
    with atomic_path(path) as temporary:
        graphs = {name: str(file) for name, file in subject.graphs.items()}
        torch.save({"config": subject.generator.config.to_dict(), "state_dict": subject.generator.state_dict(),
                    "height": subject.height, "width": subject.width, "threads": subject.threads,
                    "max_batch": subject.max_batch, "graphs": graphs}, temporary)
    return path


def load_subject(path: Path) -> Subject:
    saved = torch.load(path, weights_only=True)
    with torch.device("meta"):
        generator = SPADEGenerator(GeneratorConfig.from_dict(saved["config"]))
    generator.load_state_dict(saved["state_dict"], assign=True)
    return Subject(generator.eval(), saved["height"], saved["width"], saved["threads"],
                   {name: Path(file) for name, file in saved["graphs"].items()}, max_batch=saved["max_batch"])


def save_feeds(feeds: Feeds, path: Path) -> Path:
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        np.savez(handle, **feeds)
    return path


def isolated_peaks(runtime: str, subject: Path, feeds: dict[int, Path]) -> dict[int, float] | None:
    """{batch: MiB the runtime holds at its peak}, measured in a child process; None (with the reason on stderr)
    where the child fails or the platform cannot measure it."""
    command = [sys.executable, "-m", "spade_deploy.bench.memory_probe", runtime, str(subject),
               *(f"{batch}={path}" for batch, path in feeds.items())]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"peak memory of {runtime}: the probe took over {PROBE_TIMEOUT_S} s; not measured", file=sys.stderr)
        return None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"peak memory of {runtime}: the probe failed ({last}); not measured", file=sys.stderr)
        return None
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    return None if peaks is None else {int(batch): mib for batch, mib in peaks.items()}


def main(argv: list[str]) -> int:
    name, subject_path, *batch_files = argv
    subject = load_subject(Path(subject_path))
    torch.set_num_threads(subject.threads)  # as the bench runs its runtimes
    feeds = {int(batch): dict(np.load(path)) for batch, path in (item.split("=", 1) for item in batch_files)}
    tracked = reset_peak_resident()
    before = resident_mb()
    run = RUNTIMES[name].build(subject, subject.graphs.get(RUNTIMES[name].graph))
    if not tracked or before is None:
        print(json.dumps(None))
        return 0
    peaks = {}
    for batch, batch_feeds in feeds.items():
        run(batch_feeds)
        peaks[batch] = peak_resident_mb() - before  # the count has run since before building
    print(json.dumps(peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
