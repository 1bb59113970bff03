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


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_a_relative_results_folder_is_the_callers_and_work_folders_are_fresh(tmp_path: Path) -> None:
    """With a GPU listed (nvidia-smi here is a script) and a Python that fails, the info stage fails and the run
    ends there with exit 1: its log and summary land in DIR as the caller named it (relative to the caller's
    folder, not to the repository the script moves to), an earlier run's records there are gone, and WORK gets a
    new folder of this run's own beside the earlier one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nvidia-smi", "echo 'NVIDIA H200'"), ("python", "echo 'no python here' >&2; exit 3")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    results, work = tmp_path / "results", tmp_path / "work"
    (work / "spade-gpu-earlier").mkdir(parents=True)
    results.mkdir()
    (results / "parity.json").write_text("{}")
    done = subprocess.run([BASH, str(SCRIPT), "results"], env={"PATH": f"{bin_dir}:/usr/bin:/bin", "WORK": "work"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED   info (exit 3" in (results / "summary.txt").read_text()
    assert "no python here" in (results / "info.log").read_text()
    assert not (results / "parity.json").exists()
    assert len(list(work.iterdir())) == 2, list(work.iterdir())
