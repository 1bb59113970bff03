"""`benchmarks/gpu.sh` on a machine without a usable NVIDIA GPU: it says so and exits 0 at once, touching nothing.
(Its GPU stages need an NVIDIA machine with the `gpu` extra; they run there, not in this suite.)"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"
BASH = shutil.which("bash")


def run_script(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """gpu.sh with PATH holding only `bin_dir`, and a results folder that must not be created."""
    return subprocess.run([BASH, str(SCRIPT), str(tmp_path / "results")], env={"PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_without_nvidia_smi_it_exits_0_saying_so(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_script(tmp_path, empty)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "gpu.sh: no NVIDIA GPU here (nvidia-smi not found); nothing to check.\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_with_a_failing_nvidia_smi_it_exits_0_saying_so(tmp_path: Path) -> None:
    """As on a machine whose driver is missing or broken."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver.'\n"
                    "exit 9\n")
    fake.chmod(0o755)
    done = run_script(tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu.sh: no usable NVIDIA GPU here (nvidia-smi failed: NVIDIA-SMI has failed")
    assert done.stdout.endswith("nothing to check.\n")
    assert not (tmp_path / "results").exists()


def test_the_script_is_executable_bash_with_strict_mode() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert SCRIPT.stat().st_mode & 0o111
