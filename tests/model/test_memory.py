"""spade_deploy.model.memory: the estimate grows with everything that costs memory, covers every calibration point
recorded in benchmarks/results without exceeding twice it (plus the fixed overhead) for the worst-case inputs it is
meant for, and does the same for a run measured here and now; sizes parse and print."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spade_deploy.data.landscapes import bundled_model
from spade_deploy.model import memory
from spade_deploy.model.checkpoint import load_generator
from spade_deploy.model.config import GeneratorConfig

RESULTS = (Path(__file__).resolve().parents[2] / "benchmarks" / "results"
           / "2026-12-01-amd-epyc-f26m2-2c-memory-estimate")
MEASURE = RESULTS / "measure.py"
# The ONNX Runtime and encoder points again, with the memory pattern off as make_session runs them since then.
PATTERN_OFF = RESULTS.with_name("2026-12-01-amd-epyc-f26m2-2c-memory-pattern") / "calibration-onnxruntime.jsonl"
WORST_CASE_FACTOR = 2  # at most this times the measured peak (+ OVERHEAD_BYTES), where the input is the worst case
BASE = GeneratorConfig(label_nc=10, ngf=16, spade_hidden=64)


def estimate(config: GeneratorConfig = BASE, batch: int = 1, size: int = 512, **options) -> int:
    return memory.generator_bytes(config, batch, size, size, **options)


def test_the_estimate_grows_with_every_cost() -> None:
    base = estimate()
    assert estimate(batch=2) > base and estimate(size=1024) > base
    assert memory.generator_bytes(BASE, 1, 512, 1024) > base
    for wider in (BASE.replace(ngf=32), BASE.replace(spade_hidden=128), BASE.replace(label_nc=150),
                  BASE.replace(use_instance=True)):
        assert estimate(wider) > base, wider
    assert estimate(im2col=True) > base  # convs as im2col hold a column buffer
    assert estimate(runtime="onnxruntime") > estimate(im2col=True)
    # Linear in the batch and in the pixels beyond the fixed part (the weights).
    assert estimate(batch=3) - estimate(batch=2) == estimate(batch=2) - base
    assert estimate(size=1024) - base == 3 * (base - memory.OVERHEAD_BYTES)
    assert memory.style_bytes(2, 100, 100) == 2 * memory.style_bytes(1, 100, 100) > memory.style_bytes(1, 99, 100)


def test_largest_batch_is_the_last_that_fits() -> None:
    for budget in (estimate(batch=1), estimate(batch=3) + 1, estimate(batch=5) - 1):
        count = memory.largest_batch(BASE, 512, 512, budget)
        assert estimate(batch=count) <= budget < estimate(batch=count + 1)
    assert memory.largest_batch(BASE, 512, 512, estimate(batch=1) - 1) == 0
    with pytest.raises(ValueError, match="runtime must be one of"):
        estimate(runtime="tensorrt")


def calibration_points() -> list[dict]:
    return [json.loads(line) for path in (RESULTS / "measurements.jsonl", PATTERN_OFF)
            for line in path.read_text().splitlines() if line.strip()]


def test_the_estimate_covers_every_calibration_point() -> None:
    bundled = load_generator(bundled_model()).config
    points = calibration_points()
    assert {point["runtime"] for point in points} == {"pytorch", "onnxruntime", "encoder"}
    for point in points:
        if point["runtime"] == "encoder":
            estimated = memory.style_bytes(point["batch"], point["height"], point["width"])
        else:
            if "config" in point:
                config = GeneratorConfig.from_dict(point["config"])
            else:
                config = bundled if point["model"] == "bundled" else GeneratorConfig(**json.loads(point["model"]))
            estimated = memory.generator_bytes(config, point["batch"], point["height"], point["width"],
                                               runtime=point["runtime"], im2col=point.get("im2col", False))
        measured = point["measured_mib"] * 2 ** 20
        assert estimated >= measured, point
        # The sparse graph on ordinary label maps needs far less than the worst case the estimate is for.
        if not (point.get("graph") == "sparse" and point.get("labels") == "synthetic"):
            assert estimated <= WORST_CASE_FACTOR * measured + memory.OVERHEAD_BYTES, (point, estimated / measured)


def test_the_estimate_covers_a_run_measured_now() -> None:
    """The bundled model at 512x512 in a fresh PyTorch process (about 0.4 GiB, a few seconds)."""
    run = subprocess.run([sys.executable, str(MEASURE), "pytorch", "bundled", "512", "512", "1"], capture_output=True,
                         text=True, timeout=300, check=True)
    measured = json.loads(run.stdout.splitlines()[-1])["measured_mib"] * 2 ** 20
    im2col = not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    estimated = memory.generator_bytes(load_generator(bundled_model()).config, 1, 512, 512, im2col=im2col)
    assert measured <= estimated <= WORST_CASE_FACTOR * measured + memory.OVERHEAD_BYTES, estimated / measured


@pytest.mark.parametrize("text, expected", [("8GiB", 8 * 2 ** 30), ("8g", 8 * 2 ** 30), ("512MiB", 512 * 2 ** 20),
                                            ("1.5 GiB", 3 * 2 ** 29), ("2GB", 2 * 10 ** 9), ("4096", 4096),
                                            ("64k", 65536)])
def test_sizes_parse(text: str, expected: int) -> None:
    assert memory.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8 parsecs", "-1G", "0", "0.1B"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        memory.parse_bytes(text)


def test_sizes_print_short() -> None:
    assert [memory.format_bytes(count) for count in (512, 3 * 2 ** 19, 432 * 2 ** 20, int(5.44 * 2 ** 30),
                                                     150 * 2 ** 30)] == ["512 B", "1.5 MiB", "432 MiB", "5.4 GiB",
                                                                         "150 GiB"]
    assert memory.available_bytes() > 0


def test_freed_heap_goes_back_to_the_system() -> None:
    """What the runtimes' loaders call after building a session: 200 MiB freed below a live allocation stays resident
    until released (glibc does not trim the middle of its heap by itself)."""
    from spade_deploy.bench.machine import resident_mb

    if resident_mb() is None or platform.libc_ver()[0] != "glibc":
        pytest.skip("needs glibc (malloc_trim) and Linux's /proc to read the resident set")
    chunks = [bytes(4096) for _ in range(50_000)]  # above pymalloc's small-object size: malloc's heap
    pinned = bytes(4096)  # after them in the heap, so freeing them leaves a hole, not a shorter heap
    del chunks
    freed = resident_mb()
    memory.release_freed_heap()
    assert freed - resident_mb() > 150, "the 200 MiB freed should have left the resident set"
    del pinned
