"""Where a sparse export's time goes, in ONNX Runtime (its profiler's kernel times) or in OpenVINO (its performance
counters, at the precision asked): time per call by block and by kind of work, on a random-weight generator with
calibrated batch-norm statistics and synthetic label maps.

    nice -n 10 .venv/bin/python benchmarks/profile_sparse.py --out benchmarks/results/<date>-<machine>-sparse-profile
    .venv/bin/python benchmarks/profile_sparse.py --graph sparse-bf16 --runtime openvino --precision bf16 --out DIR

Kinds, by the node names the exporter gives (`/core/blocks.<i>/<module>/<op>`): `main conv` (a block's Conv, its
1x1 shortcut's MatMul `mod_s/conv`, or the MatMuls by U of its Winograd convs), `winograd transforms` (the rest of
those convs: the tile gather, the input and output transforms' MatMuls, padding, transpose, bias), `boundary table`
(the MatMul `actv @ W_t` of a modulation), `modulation gathers` (its look-ups: the boundary rows, then A and B per
pixel), `modulation sums` (ReduceSum of the 9 taps, + bias), `modulation x*A+B` (Mul, Add), `layout` (the reorders
the runtime adds around convs, and the transposes around direct convs), `output conv` (the generator's last conv,
`TapSumConv` after a sparse last block), `label bookkeeping` (the per-resolution index work outside the blocks:
Unique, NonZero, MaxPool, …) and `other`. OpenVINO's node types are named as the ONNX ops they run (Convolution as
Conv, FullyConnected as MatMul, …). Writes `profile.json` (every node's mean kernel time) and `README.md` (the
tables).
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from spade_deploy.bench.inprocess import boundary_share, graph_feeds
from spade_deploy.bench.machine import describe_machine
from spade_deploy.export.onnx import export_generator_onnx
from spade_deploy.export.precision import CPU_PRECISIONS, FP32, ONNXRUNTIME, OPENVINO, runtime_name
from spade_deploy.export.runtime import make_session, openvino_settings, read_openvino_model, session_options
from spade_deploy.files import atomic_path
from spade_deploy.model import io_spec
from spade_deploy.model.config import generator_preset
from spade_deploy.model.synthetic import random_generator

_BLOCK = re.compile(r"^/core/blocks\.(\d+)/")
_DIRECT_CONV = re.compile(r"^(.*/conv_[01s])/conv/Conv")
# OpenVINO node types -> the ONNX ops `kind` reads (the others keep their names).
_ONNX_OPS = {"Convolution": "Conv", "FullyConnected": "MatMul", "Multiply": "Mul", "Subtract": "Sub",
             "Eltwise": "Add", "MulAdd": "Add"}


def kind(node: str, op: str, direct_convs: frozenset[str] = frozenset()) -> str:
    """The kind of work of a node, from its name and op type (see the module docstring); `direct_convs`: the name
    prefixes (`/core/blocks.<i>/conv_0`) of the block convs that run as a Conv, whose transposes are layout."""
    if op.startswith("Reorder") or (op == "Transpose" and node.rsplit("/", 1)[0] in direct_convs):
        return "layout"
    if "/conv_img/" in node or node == f"{io_spec.IMAGE_FLOAT}_nchwc":
        return "output conv"
    if "/conv_" in node or "/mod_s/conv/" in node:
        transform = "_transform/" in node
        return "main conv" if op in ("Conv", "MatMul") and not transform else "winograd transforms"
    if "/mod_" in node:
        if op == "Add" and ("/scale/" in node or "/shift/" in node):
            return "modulation sums"  # the conv's bias, added to the boundary rows' sums
        return {"MatMul": "boundary table", "Gather": "modulation gathers", "ReduceSum": "modulation sums",
                "Mul": "modulation x*A+B", "Add": "modulation x*A+B"}.get(op, "other")
    if node.startswith("/core/") and not _BLOCK.match(node) and op != "Conv":
        return "label bookkeeping"
    return "main conv" if op == "Conv" else "other"


def profile(path: Path, feeds: dict[str, Any], *, threads: int, warmup: int, calls: int,
            workdir: Path) -> tuple[dict[tuple[str, str], float], float]:
    """In ONNX Runtime: ({(node, op): mean kernel ms per call}, median wall-clock ms per call) over `calls` profiled
    calls."""
    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / "ort-profile")
    session = make_session(path, options=options)
    for _ in range(warmup):
        session.run([io_spec.IMAGE_FLOAT], feeds)
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run([io_spec.IMAGE_FLOAT], feeds)
        walls.append((time.perf_counter() - start) * 1e3)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sum(1 for event in events if event.get("name") == "model_run")  # warm-up calls are profiled too
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[(event["name"].removesuffix("_kernel_time"), event["args"]["op_name"])] += event["dur"] / 1e3
    return {key: total / runs for key, total in totals.items()}, sorted(walls)[len(walls) // 2]


def profile_openvino(path: Path, feeds: dict[str, Any], *, precision: str, threads: int, warmup: int,
                     calls: int) -> tuple[dict[tuple[str, str], float], float]:
    """In OpenVINO at `precision` (its performance counters): as `profile`."""
    import openvino

    core = openvino.Core()
    model, _ = read_openvino_model(core, path)  # as OpenVinoSession compiles it: for one image
    compiled = core.compile_model(model, "CPU", {**openvino_settings(precision, threads), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer(feeds)
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer(feeds)
        walls.append((time.perf_counter() - start) * 1e3)
        for node in request.profiling_info:
            op = _ONNX_OPS.get(node.node_type, node.node_type)
            totals[(node.node_name, op)] += node.real_time.total_seconds() * 1e3
    return {key: total / calls for key, total in totals.items()}, sorted(walls)[len(walls) // 2]


def tables(nodes: dict[tuple[str, str], float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(ms per kind, {block: ms per kind}), blocks named `blocks.<i>` and `outside blocks`."""
    by_kind: dict[str, float] = collections.Counter()
    by_block: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
    direct_convs = frozenset(match.group(1) for node, op in nodes if op == "Conv"
                             for match in [_DIRECT_CONV.match(node)] if match)
    for (node, op), ms in nodes.items():
        work = kind(node, op, direct_convs)
        match = _BLOCK.match(node)
        by_kind[work] += ms
        by_block[f"blocks.{match.group(1)}" if match else "outside blocks"][work] += ms
    return dict(by_kind), {block: dict(kinds) for block, kinds in by_block.items()}


def render(result: dict[str, Any]) -> str:
    by_kind, by_block = result["by_kind"], result["by_block"]
    total = sum(by_kind.values())
    kinds = sorted(by_kind, key=by_kind.get, reverse=True)
    setup, machine = result["setup"], result["machine"]
    runtime = runtime_name(setup["runtime"], setup["precision"])
    lines = [f"# Where the {setup['graph']} export's time goes in {runtime}: {setup['preset']} {setup['size']}, "
             f"ngf {setup['ngf']}, batch {setup['batch']}", "",
             f"`{result['command']}`", "",
             f"{machine['cpu']} ({machine['cpu_id']}), {machine['threads']} threads, {runtime_name(setup['runtime'])} "
             f"{machine['versions'].get(setup['runtime'])}, git {machine['git']}, {machine['date']}. Label maps: "
             f"{setup['regions']} irregular regions (boundary share {setup['boundary_share']:.1%}). Mean kernel time "
             f"per call over {setup['calls']} profiled calls: {total:.1f} ms (median wall-clock per call "
             f"{result['wall_ms']:.1f} ms, the profiler's own cost included).", "",
             "| kind | ms per call | share |", "|---|---|---|"]
    lines += [f"| {work} | {by_kind[work]:.1f} | {by_kind[work] / total:.1%} |" for work in kinds]
    lines += ["", "By block (ms per call):", "", "| block | total | " + " | ".join(kinds) + " |",
              "|---" * (len(kinds) + 2) + "|"]
    for block in sorted(by_block, key=lambda name: (name == "outside blocks", name)):
        row = by_block[block]
        lines.append(f"| {block} | {sum(row.values()):.1f} | "
                     + " | ".join(f"{row.get(work, 0.0):.1f}" for work in kinds) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (profile.json, README.md)")
    parser.add_argument("--graph", default="sparse", choices=("sparse", "sparse-bf16"))
    parser.add_argument("--runtime", default=ONNXRUNTIME, choices=(ONNXRUNTIME, OPENVINO))
    parser.add_argument("--precision", default=FP32, choices=CPU_PRECISIONS, help="OpenVINO's precision hint")
    parser.add_argument("--preset", default="ade20k")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--regions", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args(argv)
    if args.runtime == ONNXRUNTIME and args.precision != FP32:
        parser.error(f"--precision {args.precision} needs --runtime openvino: ONNX Runtime runs the graph at fp32")
    if args.runtime == OPENVINO and args.batch != 1:
        parser.error(f"--runtime openvino runs a generator image by image (OpenVinoSession): profile --batch 1, "
                     f"not {args.batch}")
    torch.set_num_threads(args.threads)
    config = generator_preset(args.preset, ngf=args.ngf)
    feeds = graph_feeds(config, args.batch, args.size, args.size, seed=args.seed + 1000 * args.batch,
                        regions=args.regions)
    with tempfile.TemporaryDirectory(prefix="spade-profile-") as temporary:
        workdir = Path(temporary)
        path = export_generator_onnx(random_generator(config, seed=args.seed), workdir / f"{args.graph}.onnx",
                                     height=args.size, width=args.size, graph=args.graph)
        if args.runtime == OPENVINO:
            nodes, wall_ms = profile_openvino(path, feeds, precision=args.precision, threads=args.threads,
                                              warmup=args.warmup, calls=args.calls)
        else:
            nodes, wall_ms = profile(path, feeds, threads=args.threads, warmup=args.warmup, calls=args.calls,
                                     workdir=workdir)
    by_kind, by_block = tables(nodes)
    words = argv if argv is not None else sys.argv[1:]
    result = {"command": " ".join(["python benchmarks/profile_sparse.py", *words]),
              "machine": describe_machine(args.threads),
              "setup": {"graph": args.graph, "runtime": args.runtime, "precision": args.precision,
                        "preset": args.preset, "ngf": args.ngf, "size": f"{args.size}x{args.size}",
                        "batch": args.batch, "regions": args.regions, "seed": args.seed, "calls": args.calls,
                        "boundary_share": boundary_share(feeds[io_spec.LABEL])},
              "wall_ms": wall_ms, "by_kind": by_kind, "by_block": by_block,
              "nodes": [{"node": node, "op": op, "ms": ms} for (node, op), ms in sorted(nodes.items())]}
    for name, text in (("profile.json", json.dumps(result, indent=1) + "\n"), ("README.md", render(result))):
        with atomic_path(args.out / name) as temporary:
            temporary.write_text(text)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
