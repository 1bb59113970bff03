"""What a benchmark ran on (recorded beside every number), how much of the CPU others took meanwhile, and the
process's resident memory for peak-memory figures.

Competition comes from Linux's /proc/stat (the machine's busy and steal time) against this process's own CPU time
and that of its waited-for children (a benchmark's Triton server and perf_analyzer). The load average cannot tell:
it counts the benchmark's own threads and, for a minute, those of the run before it.

Resident memory comes from Linux's /proc/self/status (`VmRSS`, and the high-water mark `VmHWM`); writing 5 to
/proc/self/clear_refs resets the high-water mark, so a peak can be taken over one stage instead of the whole process.
Elsewhere the memory functions return None and the reports say "n/a".
"""
from __future__ import annotations

import datetime
import gc
import importlib.metadata
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spade_deploy.model.memory import release_freed_heap

_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")
_PROC_STAT = Path("/proc/stat")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"  # clear_refs code: reset the peak resident set size (Linux >= 4.0)
_VERSIONS = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "openvino", "numpy", "onnx", "tritonclient",
             "nvidia-pytriton")


def describe_machine(threads: int) -> dict[str, Any]:
    """CPU model, cores, SIMD flags, memory, the NVIDIA GPUs (where there are any), the threads the benchmark uses,
    the load average when it started, package versions, date, git commit."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    return {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cpu_id": f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}",  # family 25 = AMD Zen 3/4
        "cores": os.cpu_count(),
        "simd": [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags],
        "memory_gib": round(memory / 2 ** 20, 1) if (memory := _proc_kib(_MEMINFO, "MemTotal")) else None,
        "gpus": _gpus(),
        "threads": threads,
        "load_average_1min": load_average(),  # other work on the machine skews every number
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _VERSIONS if _version(name)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": _git_revision(),
    }


def load_average() -> float:
    """The 1-minute load average: runnable processes, which on a machine this small includes every competitor."""
    return round(os.getloadavg()[0], 2)


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds so far, for `cpu_competition`."""
    busy_s: float  # every CPU of the machine, every process
    steal_s: float  # time the hypervisor gave to other guests of the host
    own_s: float  # this process and its waited-for children
    wall_s: float


def cpu_times() -> CpuTimes | None:
    """The counters now; None where /proc/stat cannot be read."""
    try:  # guest time is already inside user and nice
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(value) for value in _PROC_STAT.read_text().split("\n", 1)[0].split()[1:9])
    except (OSError, ValueError):
        return None
    per_second = os.sysconf("SC_CLK_TCK")
    own = sum(usage.ru_utime + usage.ru_stime for usage in (resource.getrusage(resource.RUSAGE_SELF),
                                                             resource.getrusage(resource.RUSAGE_CHILDREN)))
    return CpuTimes((user + nice + system + irq + softirq) / per_second, steal / per_second, own, time.monotonic())


def cpu_competition(start: CpuTimes | None, cores: int) -> dict[str, float]:
    """Shares of the machine's CPU capacity (cores x wall time) since `start` that went to other processes
    (`cpu_others_share`) and, by the hypervisor, to other guests (`cpu_steal_share`); empty where not measurable."""
    end = cpu_times()
    if start is None or end is None or end.wall_s <= start.wall_s:
        return {}
    capacity = cores * (end.wall_s - start.wall_s)
    others = (end.busy_s - start.busy_s) - (end.own_s - start.own_s)
    return {"cpu_others_share": round(min(max(others / capacity, 0.0), 1.0), 3),
            "cpu_steal_share": round(min((end.steal_s - start.steal_s) / capacity, 1.0), 3)}


def machine_slug(machine: dict[str, Any]) -> str:
    """Short folder-name form of a machine, e.g. `amd-epyc-f25m17-2c`. The CPU family and model are part of it:
    virtual machines often show only a brand ("AMD EPYC") for CPUs of different generations, whose results differ."""
    name = re.sub(r"\((r|tm)\)|cpu|processor|@.*", "", machine["cpu"].lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    ids = re.fullmatch(r"family (\d+) model (\d+)", machine["cpu_id"])
    generation = f"f{ids[1]}m{ids[2]}" if ids else ""
    return "-".join(part for part in (name, generation, f"{machine['cores']}c") if part)


def resident_mb() -> float | None:
    """Current resident set size in MiB."""
    return _status_mib("VmRSS")


def reset_peak_resident() -> bool:
    """Release freed heap memory to the OS, then restart the peak-RSS count; False where that is not possible."""
    gc.collect()
    release_freed_heap()  # so that a later RSS baseline is not inflated by freed heap
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError:
        return False
    return True


def peak_resident_mb() -> float | None:
    """Peak resident set size in MiB since the last `reset_peak_resident` (or since the process started)."""
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float | None:
    kib = _proc_kib(_STATUS, field)
    return kib / 1024 if kib is not None else None


def _proc_kib(path: Path, field: str) -> int | None:
    """A `Field:   123 kB` line of a /proc file, in KiB."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", path.read_text(), flags=re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _cpuinfo() -> dict[str, str]:
    """Fields of the first processor in /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _gpus() -> list[str]:
    """The NVIDIA GPUs as nvidia-smi lists them ("name, driver version"); none where it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    """HEAD of the source tree this package runs from, with `+dirty` when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head
