"""Triton start time and python-backend stub memory of spade-deploy's CPU serving path.

Run with the project's venv, e.g.
    cd /work/train_snap && /work/main/.venv/bin/python /tmp/startup_measure/measure.py \
        --repo-root /work/train_snap --out /tmp/startup_measure/before.json

What it does: random-weight generator -> export_generator_onnx (graph "sparse") -> write_repository (cpu variant,
defaults: 2 instances per model) -> ROUNDS x [TritonServer.start() timed until every model is ready; every
triton_python_backend_stub descended from that server: RSS/PSS from /proc/PID/smaps_rollup, libtorch in
/proc/PID/maps; stop]. A separate probe server (one tiny python model) records which spade_deploy the stub's
embedded interpreter would import, since the stub ignores PYTHONPATH and the venv's editable install may point at
another checkout.

Switching layouts: MODULES below lists, per role, the module paths tried in order (new layout first, then old);
`--layout new|old` forces one of them, `auto` (default) takes the first that imports. The JSON records which one
was used.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# role -> {"new": module path, "old": module path}
MODULES: dict[str, dict[str, str]] = {
    "config": {"new": "spade_deploy.model.config", "old": "spade_deploy.config"},  # GeneratorConfig
    "synthetic": {"new": "spade_deploy.model.synthetic", "old": "spade_deploy.synthetic"},  # random_generator
    "export": {"new": "spade_deploy.export.onnx", "old": "spade_deploy.onnx_export"},  # export_generator_onnx
    "repository": {"new": "spade_deploy.serve.repository", "old": "spade_deploy.triton_repo"},  # write_repository
    "server": {"new": "spade_deploy.serve.server", "old": "spade_deploy.serve"},  # TritonServer, free_port
}
NEEDED = {"config": "GeneratorConfig", "synthetic": "random_generator", "export": "export_generator_onnx",
          "repository": "write_repository", "server": "TritonServer"}
STUB_NAME = "triton_python_backend_stub"


def load_modules(layout: str, repo_root: Path) -> tuple[dict[str, object], dict[str, str]]:
    modules, used = {}, {}
    for role, paths in MODULES.items():
        order = [layout] if layout in ("new", "old") else ["new", "old"]
        errors = []
        for which in order:
            name = paths[which]
            base = repo_root.joinpath(*name.split("."))
            if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
                errors.append(f"{name}: not in {repo_root}")  # not imported: the editable finder would answer
                continue
            try:
                module = importlib.import_module(name)
            except ImportError as error:
                errors.append(f"{name}: {error}")
                continue
            # The venv's editable-install finder answers for submodules the checkout lacks (from the checkout it
            # was installed from), so a module outside repo_root means "not in this layout".
            if not Path(module.__file__).resolve().is_relative_to(repo_root):
                errors.append(f"{name}: resolved outside {repo_root} ({module.__file__})")
                continue
            if not hasattr(module, NEEDED[role]):  # e.g. old `spade_deploy.serve` vs new package `serve`
                errors.append(f"{name}: has no {NEEDED[role]}")
                continue
            modules[role], used[role] = module, name
            break
        else:
            raise SystemExit(f"cannot import the {role} module: {errors}")
    return modules, used


# ------------------------------------------------------------------------------------------------ /proc helpers
def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state ppid ...


def descendants(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _ppid(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, ppid in parents.items() if ppid in frontier}
        found.extend(sorted(children))
        frontier = children
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if part]
    except OSError:
        return []


def is_stub(pid: int) -> bool:
    # /proc/PID/comm is cut at 15 characters ("triton_python_b"), so use argv[0] and exe.
    argv = _cmdline(pid)
    if argv and os.path.basename(argv[0]) == STUB_NAME:
        return True
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == STUB_NAME
    except OSError:
        return False


def stub_model(argv: list[str]) -> tuple[str | None, str | None]:
    """(model name, instance name) from the stub's command line: argv[1] is <repo>/<model>/<version>/model.py,
    a later argument is the instance name `<model>_<group>_<index>`."""
    model = None
    if len(argv) > 1:
        parts = Path(argv[1]).parts
        model = parts[-3] if len(parts) >= 3 else None
    instance = next((arg for arg in argv[2:] if model and arg.startswith(f"{model}_")), None)
    return model, instance


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[-1] == "kB":
            values[key.strip()] = int(fields[0])
    return values


def mapped_libraries(pid: int) -> set[str]:
    libs = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and ".so" in fields[5]:
            libs.add(fields[5].strip())
    return libs


def process_row(pid: int) -> dict:
    argv = _cmdline(pid)
    model, instance = stub_model(argv)
    rollup = smaps_rollup_kb(pid)
    maps_text = Path(f"/proc/{pid}/maps").read_text()
    libs = mapped_libraries(pid)
    return {
        "pid": pid, "model": model, "instance": instance,
        "rss_mb": round(rollup["Rss"] / 1024, 1), "pss_mb": round(rollup["Pss"] / 1024, 1),
        "pss_anon_mb": round(rollup.get("Pss_Anon", 0) / 1024, 1),
        "libtorch_mapped": "libtorch" in maps_text,
        "libtorch_libs": sorted({os.path.basename(lib) for lib in libs if "libtorch" in os.path.basename(lib)}),
        "onnxruntime_mapped": any("onnxruntime" in lib for lib in libs),
        "cwd": os.readlink(f"/proc/{pid}/cwd") if os.path.exists(f"/proc/{pid}/cwd") else None,
    }


def cpu_info() -> dict:
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model", "stepping") and key not in info:
            info[key] = value.strip()
    info["online_cpus"] = os.cpu_count()
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


# ------------------------------------------------------------------------------------------------ probe
PROBE_MODEL = '''
import importlib.util, json, os, sys
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        spec = importlib.util.find_spec("spade_deploy")  # locates the package without importing it
        with open(config["parameters"]["out"]["string_value"], "w") as out:
            json.dump({"spade_deploy": spec.origin if spec else None, "sys_path": sys.path, "cwd": os.getcwd(),
                       "executable": sys.executable, "prefix": sys.prefix}, out)

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())]) for r in requests]
'''
PROBE_CONFIG = '''name: "probe"
backend: "python"
max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }]
instance_group [{ count: 1 kind: KIND_CPU }]
parameters { key: "out" value { string_value: "%s" } }
'''


def probe_stub_imports(server_module, work: Path) -> dict:
    repo = work / "probe_repo"
    (repo / "probe" / "1").mkdir(parents=True)
    (repo / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
    out = work / "probe.json"
    (repo / "probe" / "config.pbtxt").write_text(PROBE_CONFIG % out)
    server = server_module.TritonServer(repo, startup_timeout=120)
    server.start()
    try:
        return json.loads(out.read_text())
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-root", default=os.getcwd(),
                        help="checkout whose spade_deploy is measured (default: the current directory)")
    parser.add_argument("--layout", choices=("auto", "new", "old"), default="auto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=None, help="instances per model (default: the API's)")
    parser.add_argument("--out", default="/tmp/startup_measure/before.json")
    parser.add_argument("--no-probe", action="store_true", help="skip the stub import-location probe")
    args = parser.parse_args()

    repo_root = Path(args.repo_root).resolve()
    sys.path.insert(0, str(repo_root))  # the script's own folder would otherwise let the venv's editable install win
    os.chdir(repo_root)  # tritonserver and its stubs inherit this working directory
    import spade_deploy
    if not Path(spade_deploy.__file__).resolve().is_relative_to(repo_root):
        raise SystemExit(f"spade_deploy imported from {spade_deploy.__file__}, not under {repo_root}")
    modules, used = load_modules(args.layout, repo_root)

    work = Path(tempfile.mkdtemp(prefix="startup_measure-", dir="/tmp/startup_measure"))
    config = modules["config"].GeneratorConfig(label_nc=10, ngf=16, crop_size=128, spade_hidden=64)
    began = time.perf_counter()
    generator = modules["synthetic"].random_generator(config)
    onnx_path = modules["export"].export_generator_onnx(generator, work / "generator.onnx")  # graph "sparse"
    export_s = time.perf_counter() - began
    repo_kwargs = {} if args.instances is None else {"instances": args.instances}
    configs = modules["repository"].write_repository(work / "repo", onnx_path, **repo_kwargs)
    print(f"exported in {export_s:.1f} s; repository: {[str(p.parent.name) for p in configs]}", flush=True)

    result = {
        "spade_deploy": spade_deploy.__file__, "modules": used, "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu": cpu_info(), "generator_config": config.to_dict(),
        "onnx_mb": round(onnx_path.stat().st_size / 2 ** 20, 2), "export_s": round(export_s, 1),
        "models": [p.parent.name for p in configs],
        "instance_groups": {p.parent.name: [line.strip() for line in p.read_text().splitlines()
                                            if "count" in line or "kind" in line] for p in configs},
        "rounds": [],
    }
    if not args.no_probe:
        result["stub_probe"] = probe_stub_imports(modules["server"], work)
        print("stub would import spade_deploy from", result["stub_probe"]["spade_deploy"], flush=True)

    for index in range(args.rounds):
        load_before = os.getloadavg()
        server = modules["server"].TritonServer(work / "repo", startup_timeout=600)
        began = time.perf_counter()
        server.start()  # returns once /v2/health/ready is 200, i.e. every model is ready
        start_s = time.perf_counter() - began
        try:
            server_pid = server.pid
            stubs = [pid for pid in descendants(server_pid) if is_stub(pid)]
            rows = sorted((process_row(pid) for pid in stubs),
                          key=lambda row: (row["model"] or "", row["instance"] or ""))
            server_rollup = smaps_rollup_kb(server_pid)
        finally:
            stop_began = time.perf_counter()
            server.stop()
            stop_s = time.perf_counter() - stop_began
        leftover = [pid for pid in stubs if Path(f"/proc/{pid}").exists() and is_stub(pid)]
        round_result = {
            "round": index + 1, "start_s": round(start_s, 2), "stop_s": round(stop_s, 2),
            "loadavg_before": [round(x, 2) for x in load_before], "num_stubs": len(rows),
            "tritonserver_rss_mb": round(server_rollup["Rss"] / 1024, 1),
            "tritonserver_pss_mb": round(server_rollup["Pss"] / 1024, 1),
            "stubs_total_rss_mb": round(sum(row["rss_mb"] for row in rows), 1),
            "stubs_total_pss_mb": round(sum(row["pss_mb"] for row in rows), 1),
            "stubs": rows, "stubs_left_after_stop": leftover,
        }
        result["rounds"].append(round_result)
        print(f"round {index + 1}: start {start_s:.2f} s, {len(rows)} stubs, "
              + ", ".join(f"{row['instance'] or row['model']}: RSS {row['rss_mb']} / PSS {row['pss_mb']} MB"
                          f"{' libtorch' if row['libtorch_mapped'] else ''}" for row in rows), flush=True)

    rounds = result["rounds"]
    per_model: dict[str, dict[str, list[float]]] = {}
    for rnd in rounds:
        for row in rnd["stubs"]:
            entry = per_model.setdefault(row["model"] or "?", {"rss_mb": [], "pss_mb": []})
            entry["rss_mb"].append(row["rss_mb"])
            entry["pss_mb"].append(row["pss_mb"])
    all_rows = [row for rnd in rounds for row in rnd["stubs"]]
    result["median"] = {
        "start_s": round(statistics.median(r["start_s"] for r in rounds), 2),
        "num_stubs": statistics.median(r["num_stubs"] for r in rounds),
        "stub_rss_mb": round(statistics.median(row["rss_mb"] for row in all_rows), 1),
        "stub_pss_mb": round(statistics.median(row["pss_mb"] for row in all_rows), 1),
        "stubs_total_rss_mb": round(statistics.median(r["stubs_total_rss_mb"] for r in rounds), 1),
        "stubs_total_pss_mb": round(statistics.median(r["stubs_total_pss_mb"] for r in rounds), 1),
        "per_model": {model: {key: round(statistics.median(vals), 1) for key, vals in values.items()}
                      for model, values in per_model.items()},
        "libtorch_mapped_stubs": f"{sum(row['libtorch_mapped'] for row in all_rows)}/{len(all_rows)}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
