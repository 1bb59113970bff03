"""File size, load memory and speed of the sparse export, whose Winograd convs store their 3x3 weight and leave
`U = G W G^T` to the runtime's constant folding, against the same graph with U stored and against the plain export.

    nice -n 10 .venv/bin/python benchmarks/sparse_file_size.py \
        --out benchmarks/results/<date>-<machine>-sparse-file-size

One random-weight generator (default: ADE20K 256x256, ngf 64) is exported three ways:
- `plain`: the unmodified model (`--graph plain`), the baseline;
- `sparse-stored-u`: the sparse graph with each U computed at export in float64 and stored, one [C, O] matrix per
  tile position (16 or 36 per conv: 16/9 or 4x its 3x3 weight);
- `sparse`: the sparse graph as `spade-deploy export onnx` writes it: the 3x3 taps stored, U computed in the graph by
  Einsums of constants, which ONNX Runtime and OpenVINO fold when they load the file.
Each file is then loaded by ONNX Runtime and by OpenVINO (f32) in a fresh process of its own, which reports its peak
resident memory over loading and one call; one more process per sparse file saves ONNX Runtime's optimised graph and
counts the nodes left with only constant inputs (0: all folded) and the MatMuls by a 2-D constant (what ONNX Runtime
pre-packs); a last process loads every file twice in turn (best load time kept), then times the runners call by call
in rotation, so load that drifts hits all alike. Outputs are compared with `sparse-stored-u` in ONNX Runtime, the
layout this one replaces. Writes `result.json` and `README.md` (the tables) to `--out`; the ONNX files live in a
temporary folder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from spade_deploy.bench.machine import describe_machine, peak_resident_mb, resident_mb
from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.model import io_spec

GRAPHS = ("plain", "sparse-stored-u", "sparse")
RUNTIMES = ("onnxruntime", "openvino")
REFERENCE = ("onnxruntime", "sparse-stored-u")


# ---- children: each measurement in a process of its own (torch-free, so the baseline is the runtime alone) ----

def load_runner(runtime: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """labels `[N, H, W]` -> `image_float`, in ONNX Runtime with the deployment's session options or in OpenVINO
    pinned to f32 (as `spade-deploy bench` runs them)."""
    if runtime == "onnxruntime":
        from spade_deploy.export.runtime import OnnxGenerator
        generator = OnnxGenerator(path, threads=threads)
        return lambda labels: generator(labels)[1]
    import openvino
    metadata = read_export_metadata(path)
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    output = compiled.output(io_spec.IMAGE_FLOAT)

    def run(labels: np.ndarray) -> np.ndarray:
        feeds = io_spec.generator_feeds(metadata.config, metadata.height, metadata.width, labels)
        return request.infer(feeds)[output].copy()
    return run


def child_memory(runtime: str, path: Path, labels: np.ndarray, threads: int) -> dict[str, Any]:
    """Peak RSS over loading the file and one call, and the RSS before loading (imports only)."""
    before = resident_mb()
    load_runner(runtime, path, threads)(labels)
    return {"rss_before_mib": before, "peak_rss_mib": peak_resident_mb()}


def child_folded(path: Path, out: Path) -> dict[str, Any]:
    """ONNX Runtime's optimised graph (the deployment's options, as `make_session` sets them): how many nodes are
    left with only constant inputs (not folded), and how many MatMuls multiply by a 2-D constant."""
    import onnx
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3  # its notice that an ORT_ENABLE_ALL graph is hardware-specific
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(out)).graph
    constants = {tensor.name: len(tensor.dims) for tensor in graph.initializer}
    constants.update({output: -1 for node in graph.node if node.op_type == "Constant" for output in node.output})
    computed = [node for node in graph.node if node.op_type != "Constant"]
    return {"constant_nodes": sum(all(name in constants for name in node.input) for node in computed),
            "einsums": sum(node.op_type == "Einsum" for node in computed),
            "matmuls_by_2d_constant": sum(node.op_type == "MatMul" and constants.get(node.input[1]) == 2
                                          for node in computed)}


def child_timing(runners: list[tuple[str, str, Path]], labels: np.ndarray, threads: int, repeats: int,
                 warmup: int) -> list[dict[str, Any]]:
    """Every runner built twice in turn (the best load time kept), then `warmup` + `repeats` rounds, one call each,
    the first runner rotating."""
    built: list[Callable[[np.ndarray], np.ndarray] | None] = [None] * len(runners)
    load_s = [float("inf")] * len(runners)
    for _ in range(2):
        for index, (runtime, _, path) in enumerate(runners):
            built[index] = None  # the previous session freed first
            began = time.perf_counter()
            built[index] = load_runner(runtime, path, threads)
            load_s[index] = min(load_s[index], time.perf_counter() - began)
    times: list[list[float]] = [[] for _ in runners]
    outputs: list[np.ndarray] = [np.empty(0)] * len(runners)
    for round_index in range(warmup + repeats):
        for offset in range(len(runners)):
            index = (round_index + offset) % len(runners)
            began = time.perf_counter()
            outputs[index] = built[index](labels)
            if round_index >= warmup:
                times[index].append(time.perf_counter() - began)
    reference = outputs[[(runtime, graph) for runtime, graph, _ in runners].index(REFERENCE)]
    return [{"runtime": runtime, "graph": graph, "load_s": load_s[index], "p50_s": float(np.median(times[index])),
             "max_abs_vs_stored_u": float(np.abs(outputs[index].astype(np.float64) - reference).max())}
            for index, (runtime, graph, _) in enumerate(runners)]


def child(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["memory", "folded", "timing"])
    parser.add_argument("--labels", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runner", nargs=3, action="append", default=[], metavar=("RUNTIME", "GRAPH", "PATH"))
    parser.add_argument("--optimized", type=Path)
    options = parser.parse_args(arguments)
    runners = [(runtime, graph, Path(path)) for runtime, graph, path in options.runner]
    labels = np.load(options.labels) if options.labels else None
    if options.mode == "memory":
        result: Any = child_memory(runners[0][0], runners[0][2], labels, options.threads)
    elif options.mode == "folded":
        result = child_folded(runners[0][2], options.optimized)
    else:
        result = child_timing(runners, labels, options.threads, options.repeats, options.warmup)
    print(json.dumps(result))


def run_child(*arguments: str) -> Any:
    completed = subprocess.run([sys.executable, __file__, "--child", *arguments], check=True, stdout=subprocess.PIPE,
                               text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---- the parent: export, then one child per measurement ----

def export_all(options: argparse.Namespace, folder: Path) -> tuple[dict[str, Path], np.ndarray, dict[str, Any]]:
    """The three files and one synthetic label map `[1, H, W]`."""
    import torch
    from torch import nn

    from spade_deploy.export.graphs import generator_graph
    from spade_deploy.export.onnx import write_generator_onnx
    from spade_deploy.export.winograd import WinogradConv3x3
    from spade_deploy.model.config import generator_preset
    from spade_deploy.model.synthetic import random_generator, synthetic_batch

    class StoredU(WinogradConv3x3):
        """U = G W G^T computed at export in float64 and stored, `[positions, C, O]`."""

        def __init__(self, winograd: WinogradConv3x3) -> None:
            nn.Module.__init__(self)
            for name in ("tile", "height", "width", "out_channels", "per_position", "input_transform",
                         "output_transform"):
                setattr(self, name, getattr(winograd, name))
            self.register_buffer("tile_index", winograd.tile_index, persistent=False)
            u = torch.einsum("cot,kt->kco", winograd.taps.double(), winograd.tap_coefficients.double())
            self.register_buffer("u", u.float().contiguous())
            self.register_buffer("bias", winograd.bias)

        def transformed_weights(self) -> torch.Tensor:
            return self.u

        def position_weights(self, position: int) -> torch.Tensor:
            return self.u[position]

    config = generator_preset(options.preset, ngf=options.ngf)
    height, width = config.image_size
    generator = random_generator(config, seed=options.seed, calibration_batches=1)
    paths = {}
    with torch.no_grad():
        for graph in GRAPHS:
            module = generator_graph(generator, graph=graph.replace("-stored-u", ""), height=height, width=width)
            if graph == "sparse-stored-u":
                for parent in list(module.modules()):
                    for name, conv in list(parent.named_children()):
                        if isinstance(conv, WinogradConv3x3):
                            setattr(parent, name, StoredU(conv))
            began = time.perf_counter()
            paths[graph] = write_generator_onnx(module, folder / f"{graph}.onnx", height=height, width=width)
            print(f"exported {graph} in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    labels, _ = synthetic_batch(config, 1, num_regions=options.regions, seed=options.seed)
    setup = {"preset": options.preset, "ngf": options.ngf, "size": f"{height}x{width}", "regions": options.regions,
             "seed": options.seed, "threads": options.threads, "repeats": options.repeats}
    return paths, labels, setup


def initializer_mb(path: Path) -> float:
    import onnx
    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(tensor).nbytes for tensor in model.graph.initializer) / 1e6


def write_report(out: Path, result: dict[str, Any]) -> None:
    rows = {(row["runtime"], row["graph"]): row for row in result["rows"]}
    machine = result["machine"]
    lines = [
        "# Sparse export with 3x3 Winograd weights folded at load: file size, load memory, speed (issue 17, item 5)",
        "",
        f"- Machine: {machine['cores']}-core {machine['cpu']}, CPU {machine['cpu_id']}, {machine['os']}, Python "
        f"{machine['python']}, " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
        + f"; git {machine['git']}. Other jobs shared the CPUs (times are comparable only within this run).",
        f"- Model: random-weight generator, preset {result['setup']['preset']}, ngf {result['setup']['ngf']}, "
        f"{result['setup']['size']}, batch 1, one synthetic map of {result['setup']['regions']} regions; "
        f"{result['setup']['threads']} threads.",
        f"- Command: `{result['command']}`",
        "- peak RSS: one fresh process per row loads the file and runs one call; `above imports` subtracts the RSS "
        "before loading. load: session creation or compilation, best of two; p50: median of the timed calls; both "
        "with all rows in one process, in turn. max |Δ|: against `sparse-stored-u` in ONNX Runtime (float32 U "
        "folded at load vs float64 U rounded at export).",
        "",
        "| graph | file MB | initializers MB | runtime | load s | peak RSS MiB | above imports MiB | p50 ms "
        "| max abs Δ vs stored U |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (runtime, graph), row in rows.items():
        lines.append(f"| {graph} | {row['file_mb']:.1f} | {row['initializer_mb']:.1f} | {runtime} "
                     f"| {row['load_s']:.1f} "
                     f"| {row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] - row['rss_before_mib']:.0f} "
                     f"| {1000 * row['p50_s']:.0f} | {row['max_abs_vs_stored_u']:.1e} |")
    lines += ["", "ONNX Runtime's optimised graph (`ORT_ENABLE_ALL`): nodes left with only constant inputs and "
              "Einsums left (0: all folded at load), MatMuls by a 2-D constant (the ones it pre-packs).", "",
              "| graph | constant nodes left | Einsums left | MatMuls by a 2-D constant |", "|---|---|---|---|"]
    for graph, folded in result["folded"].items():
        lines.append(f"| {graph} | {folded['constant_nodes']} | {folded['einsums']} "
                     f"| {folded['matmuls_by_2d_constant']} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="result folder (result.json, README.md)")
    parser.add_argument("--preset", default="ade20k")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--regions", type=int, default=16, help="irregular regions of the synthetic label map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runner")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/sparse_file_size.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        paths, labels, setup = export_all(options, folder)
        np.save(folder / "labels.npy", labels)
        common = ["--labels", str(folder / "labels.npy"), "--threads", str(options.threads)]
        rows = []
        for graph, path in paths.items():
            for runtime in RUNTIMES:
                memory = run_child("memory", *common, "--runner", runtime, graph, str(path))
                rows.append({"runtime": runtime, "graph": graph, "file_mb": path.stat().st_size / 1e6,
                             "initializer_mb": initializer_mb(path), **memory})
                print(f"{graph} in {runtime}: peak RSS {memory['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        folded = {graph: run_child("folded", "--runner", "onnxruntime", graph, str(paths[graph]), "--optimized",
                                   str(folder / f"{graph}.optimized.onnx"))
                  for graph in GRAPHS if graph != "plain"}
        runners = [argument for row in rows for argument in ("--runner", row["runtime"], row["graph"],
                                                             str(paths[row["graph"]]))]
        timing = run_child("timing", *common, "--repeats", str(options.repeats), *runners)
    for row, timed in zip(rows, timing):
        row.update(timed)
    result = {"machine": describe_machine(options.threads), "setup": setup, "command": command, "rows": rows,
              "folded": folded}
    (options.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(options.out, result)
    print((options.out / "README.md").read_text())


if __name__ == "__main__":
    main()
