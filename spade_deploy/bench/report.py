"""A results folder: `inprocess.json` and/or `served.json`, rendered into `summary.md` and PNG charts.

`write_result` stores one benchmark's result and re-renders the folder from every result in it, so the in-process
and the served benchmark can be run one after the other into the same folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from spade_deploy.bench.perf_analyzer import STABILITY_PERCENT  # noqa: E402
from spade_deploy.files import atomic_path  # noqa: E402
from spade_deploy.model.io_spec import GENERATOR_MODEL, PIPELINE_MODEL  # noqa: E402

RESULT_FILES = {"inprocess": "inprocess.json", "served": "served.json"}
KIND_TITLES = {"inprocess": "in-process", "served": "served"}
SUMMARY = "summary.md"
LATENCY_CHART = "latency_vs_batch.png"
SERVED_CHART = "throughput_vs_concurrency.png"
BUSY_SHARE = 0.1  # of the machine's CPU time taken by others during a run: beyond it, the summary warns


def write_result(directory: Path, result: dict[str, Any]) -> Path:
    """Write `result` as the folder's JSON of its kind, then re-render the summary and charts; the summary's path."""
    kind = result.get("kind")
    if kind not in RESULT_FILES:
        raise ValueError(f"a benchmark result has kind {list(RESULT_FILES)}, got {kind!r}")
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / RESULT_FILES[kind], result)
    return render(directory)


def write_json(path: Path, result: dict[str, Any]) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(result, indent=1) + "\n")
    return path


def read_results(directory: Path) -> dict[str, dict[str, Any]]:
    """The results a folder holds, by kind; a `ValueError` naming a file that is not a result (checked before a run
    that will write beside it, so that the run's work is not lost to it)."""
    results = {}
    for kind, name in RESULT_FILES.items():
        path = directory / name
        if not path.is_file():
            continue
        try:
            results[kind] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} is not a readable benchmark result ({error}); move it away, or write to "
                             f"another folder") from None
        if not isinstance(results[kind], dict) or results[kind].get("kind") != kind:
            raise ValueError(f"{path} is not a {kind} benchmark result; move it away, or write to another folder")
    return results


def render(directory: Path) -> Path:
    """`summary.md` (and the charts) from the results in `directory`."""
    results = read_results(directory)
    if not results:
        raise ValueError(f"{directory} holds no benchmark result ({', '.join(RESULT_FILES.values())})")
    machine = next(iter(results.values()))["machine"]
    lines = [f"# SPADE benchmarks: {machine['cpu']}, {machine['cores']} cores, {machine['date'][:10]}", "",
             machine_line(machine), "",
             "Speed claims are ratios measured within one run: between runs this machine varies by ±10–15 %, and by "
             "up to 2× in the slow phases of its shared host.", ""]
    for result in results.values():
        machine = result["machine"]
        competition = _competition(machine)
        lines += [f"The {KIND_TITLES[result['kind']]} run started {machine['date']} with a 1-min load average of "
                  f"{machine['load_average_1min']} and ended with {machine.get('load_average_1min_end', 'n/a')} (its "
                  f"own {machine['threads']} threads included){'; meanwhile ' + competition if competition else ''}.",
                  ""]
        lines += [warning for warning in [_busy_warning(result)] if warning]
    if "inprocess" in results:
        latency_chart(results["inprocess"], directory / LATENCY_CHART)
    if "served" in results:
        served_chart(results["served"], directory / SERVED_CHART)
    for result in results.values():
        lines += section(result)
    lines += ["## Reproduce", "", "```"] + [result.get("command", f"(command of the {kind} run not recorded)")
                                            for kind, result in results.items()] + ["```", ""]
    path = directory / SUMMARY
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------ markdown

def section(result: dict[str, Any]) -> list[str]:
    """The markdown lines of one result (what the summary shows for it)."""
    return _inprocess_section(result) if result["kind"] == "inprocess" else _served_section(result)


def machine_line(machine: dict[str, Any]) -> str:
    """The reports' line on what a run ran on (`describe_machine`'s record)."""
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    gpus = f"; GPU {', '.join(machine['gpus'])}" if machine.get("gpus") else ""  # earlier results lack it
    return (f"Machine: {machine['cpu']} ({machine['cpu_id']}; {', '.join(machine['simd']) or 'no AVX2'}), "
            f"{machine['cores']} cores, {machine['memory_gib']} GiB{gpus}, {machine['os']}, Python "
            f"{machine['python']}; {versions}; git {machine['git']}.")


def _competition(machine: dict[str, Any]) -> str:
    """What others took of the CPU during the run ("" for results recorded before that was)."""
    if "cpu_others_share" not in machine:
        return ""
    return (f"other processes took {machine['cpu_others_share']:.0%} of the machine's CPU time, and other guests of "
            f"the host {machine['cpu_steal_share']:.0%} (steal)")


def _busy_warning(result: dict[str, Any]) -> str | None:
    """A warning line when other work competed with a benchmark: other processes, or other guests of the host, took
    more than BUSY_SHARE of the machine's CPU time during the run. Results recorded before those shares were judged
    by the 1-min load average: above half the cores at the start, or at the end beyond the benchmark's own threads."""
    machine = result["machine"]
    if "cpu_others_share" in machine:
        if max(machine["cpu_others_share"], machine["cpu_steal_share"]) <= BUSY_SHARE:
            return None
        what = _competition(machine)
    else:
        start, end = machine["load_average_1min"], machine.get("load_average_1min_end", 0.0)
        if max(start, end - machine["threads"]) <= machine["cores"] / 2:
            return None
        what = (f"1-min load average {start} at the start, {end} at the end with its own {machine['threads']} "
                f"threads, on {machine['cores']} cores")
    return (f"**Warning: the machine was busy during the {KIND_TITLES[result['kind']]} run ({what}): its absolute "
            f"times are inflated and its ratios noisier than on an idle machine.**\n")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows] + [""])


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _inprocess_section(result: dict[str, Any]) -> list[str]:
    setup, rows = result["setup"], result["rows"]
    shares = ", ".join(f"batch {row['batch']}: {row['boundary_share']:.1%}"
                       for row in {row["batch"]: row for row in rows}.values())
    lines = [f"## In-process: {setup['preset']}, ngf {setup['ngf']}, {setup['size']}, {setup['threads']} threads",
             "",
             f"Random weights with calibrated batch-norm statistics; {setup['label_maps']} (boundary share "
             f"{shares}); {setup['warmup']} warm-up + {setup['repeats']} timed calls per runtime and batch. "
             f"Every runtime uses {setup['threads']} intra-op threads.", ""]
    lines += _table(["runtime", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "images/s", "× eager",
                     "× best plain", "× best exact plain", "PSNR dB vs float64", "peak MiB"],
                    [[row["runtime"], _precision(row), row["batch"], row["p50_ms"], row["p95_ms"], row["p99_ms"],
                      row["images_per_s"], _ratio(row["speedup_vs_eager"]), _ratio(row["speedup_vs_best_plain"]),
                      _ratio(row.get("speedup_vs_best_exact_plain")), _psnr(row), row["peak_mem_mb"]]
                     for row in rows])
    lines += _quality_section(rows)
    baselines = list(dict.fromkeys(name for row in rows for name in row.get("speedup_vs", {})))
    if baselines:
        lines += ["Speed-up against each baseline (its p50 / the runtime's p50, same batch):", ""]
        lines += _table(["runtime", "batch"] + [f"× {name}" for name in baselines],
                        [[row["runtime"], row["batch"]] + [_ratio(row["speedup_vs"].get(name)) for name in baselines]
                         for row in rows])
    best = {row["batch"]: row["best_plain"] for row in rows if row["best_plain"]}
    precisions = {(row["runtime"], row["batch"]): _precision(row) for row in rows}
    if best:
        lines += ["Best plain runtime (the `× best plain` baseline, the fastest plain export at whatever precision it "
                  "ran): " + ", ".join(f"batch {batch}: {name} ({precisions[name, batch]})"
                                       for batch, name in best.items()) + ".", ""]
    exact = {row["batch"]: row["best_exact_plain"] for row in rows if row.get("best_exact_plain")}
    if exact:
        lines += ["Best exact plain runtime (the `× best exact plain` baseline, the fastest plain export at fp32): "
                  + ", ".join(f"batch {batch}: {name}" for batch, name in exact.items()) + ".", ""]
    lines += [f"- `{name}`: {summary}" for name, summary in setup["runtimes"].items()]
    lines += [f"- skipped `{entry['runtime']}`: {entry['reason']}" for entry in result["skipped"]]
    lines += ["", f"![latency vs batch]({LATENCY_CHART})", "",
              "precision: what the runtime's convs and matmuls compute in, as the runtime reports it where it "
              "chooses (OpenVINO's compiled model); tf32: fp32 tensors, convs on TF32 tensor cores. p50/p95/p99: "
              "percentiles of the timed calls (linear interpolation; with few calls p95 and p99 sit near the "
              "slowest). images/s = batch / p50. peak MiB: "
              + setup.get("peak_memory", "measured by an earlier method, not recorded with these results (see the "
                                         "history of spade_deploy/bench/memory_probe.py)")
              + ". " + _SCHEDULE[bool(setup.get("one_at_a_time"))], ""]
    return lines


def _precision(row: dict[str, Any]) -> str:
    return row.get("precision", "fp32")  # results recorded before rows named it ran fp32 runtimes only


def _psnr(row: dict[str, Any]) -> str:
    if "psnr_db" not in row:
        return "n/a"  # recorded before quality was measured against float64
    return "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"


def _quality_section(rows: list[dict[str, Any]]) -> list[str]:
    """Every row's output against the float64 model and against eager float32 (results recorded before quality
    was measured against float64 show the latter only)."""
    measured = [row for row in rows if "max_abs_diff_f64" in row]
    lines = ["Quality, the worst over every call: against the same model in float64 (the reference; eager float32's "
             "row is its own rounding) and against eager PyTorch in float32 on the same inputs. PSNR on the [-1, 1] "
             "output scale with peak-to-peak 2 (the 8-bit scale before rounding); 8-bit pixels as the `image` output "
             "rounds them, a pixel within k levels when all three channels are.", ""]
    if not measured:
        return _table(["runtime", "batch", "max |Δ| vs eager"],
                      [[row["runtime"], row["batch"], f"{row['max_abs_diff']:.1e}"] for row in rows])
    return lines + _table(["runtime", "precision", "batch", "max |Δ| vs float64", "PSNR dB", "pixels ≤ 1 level",
                           "pixels ≤ 2 levels", "max |Δ| vs eager"],
                          [[row["runtime"], _precision(row), row["batch"], f"{row['max_abs_diff_f64']:.1e}",
                            _psnr(row), f"{row['within_1_level']:.2%}", f"{row['within_2_levels']:.2%}",
                            f"{row['max_abs_diff']:.1e}"] for row in measured])


_SCHEDULE = {
    False: "Runtimes take turns call by call, so load that drifts during the run hits all of them alike.",
    True: "Runtimes ran one at a time (each built, timed and freed before the next: together they do not fit in "
          "memory), so load that drifted during the run affects the ratios.",
}


def _served_section(result: dict[str, Any]) -> list[str]:
    setup, gen, pipe = result["setup"], GENERATOR_MODEL, PIPELINE_MODEL
    # Results recorded before the served benchmark took --regions and --queue-delay-us do not name them.
    regions = f" with {setup['regions']} irregular regions each" if "regions" in setup else ""
    delay = f", waiting up to {setup['queue_delay_us']} µs for a batch" if "queue_delay_us" in setup else ""
    lines = [f"## Served: {setup['preset']}, ngf {setup['ngf']}, {setup['size']}, Triton (CPU variant)", "",
             f"The exporter's default generator graph ({setup['graph']}) in ONNX Runtime behind the `{setup['model']}` "
             f"pipeline, over gRPC (AsyncSpadeClient), batch 1 per request, {setup['label_maps']} synthetic label maps"
             f"{regions} (boundary share {setup['boundary_share']:.1%}); {setup['instances']} instances × "
             f"{setup['intra_op_threads']} ONNX Runtime thread(s), dynamic batching up to {setup['max_batch_size']}"
             f"{delay}. "
             f"{setup['requests_per_level']} timed requests per level after at least {setup['warmup_per_level']} "
             f"warm-up requests. Exactness: served image vs eager PyTorch, max "
             f"{result['exactness']['max_abs_diff_uint8_vs_eager']} 8-bit level(s).", "",
             "### Concurrency sweep (closed loop)", ""]
    lines += _table(["concurrency", "requests (errors)", "p50 ms", "p95 ms", "p99 ms", "req/s",
                     "pipeline queue ms", "pipeline compute ms", "generator queue ms", "generator compute ms",
                     "generator batch"],
                    [[level["concurrency"], f"{level['requests']} ({level['errors']})", level["p50_ms"],
                      level["p95_ms"], level["p99_ms"], level["throughput_rps"], level["server"][pipe]["queue_ms"],
                      level["server"][pipe]["compute_ms"], level["server"][gen]["queue_ms"],
                      level["server"][gen]["compute_ms"], level["server"][gen]["mean_batch"]]
                     for level in result["concurrency"]])
    lines += ["req/s: answers per second until the last request was sent (the drain after it, with fewer requests in "
              "flight, is left out). Server times are Triton's statistics per request the model received (the "
              "pipeline's compute includes its call into the generator; a generator request carries the batch the "
              "pipeline gathered). The load generator itself used "
              + ", ".join(f"{level['client_cpu_ms_per_request']:.1f}" for level in result["concurrency"])
              + " ms of CPU per request at these levels.", "",
              "### Fixed rate (open loop, Poisson arrivals; latency from the scheduled send time)", ""]
    lines += _table(["offered req/s", "requests (errors)", "achieved req/s", "p50 ms", "p95 ms", "p99 ms",
                     "pipeline queue ms", "generator batch", "stopped early"],
                    [[level["rate_rps"], f"{level['requests']} ({level['errors']})", level["throughput_rps"],
                      level["p50_ms"], level["p95_ms"], level["p99_ms"], level["server"][pipe]["queue_ms"],
                      level["server"][gen]["mean_batch"], level["stopped_early"] or "no"]
                     for level in result["fixed_rate"]])
    if result.get("format_version", 1) >= 2:
        lines += ["achieved req/s: every answer, from the first send to the last answer; the arrivals' exponential "
                  "gaps are scaled to span exactly requests / offered rate.", ""]
    else:
        lines += ["(Recorded in format 1: the arrivals were drawn unscaled, so the rate sent could differ from "
                  "the offered one by tens of per cent, and achieved req/s counted only the answers until the last "
                  "send.)", ""]
    lines += _perf_analyzer_section(result)
    overhead, wire = result["serving_overhead"], result["wire_bytes"]
    if overhead:
        lines += ["### Serving overhead at batch 1", "",
                  f"In-process ONNX Runtime with the served session options ({result['inprocess_batch1']['threads']}"
                  f" thread(s)): p50 {overhead['inprocess_p50_ms']:.1f} ms; served at concurrency 1: p50 "
                  f"{overhead['served_p50_ms']:.1f} ms — {overhead['overhead_ms']:+.1f} ms, "
                  f"{_ratio(overhead['served_over_inprocess'])} the in-process latency.", ""]
    lines += ["### Bytes on the wire per request (batch 1)", ""]
    lines += _table(["request kind", "request bytes", "response bytes", "total"],
                    [["uint8 label in, uint8 RGB out (served)", wire["uint8_request"], wire["uint8_response"],
                      wire["uint8_request"] + wire["uint8_response"]],
                     ["naive: float one-hot in, float image out", wire["naive_float_request"],
                      wire["naive_float_response"], wire["naive_float_request"] + wire["naive_float_response"]]])
    lines += [f"The uint8 contract sends {wire['naive_over_uint8']:.0f}× fewer bytes. Method: {wire['method']}.", "",
              f"![throughput vs concurrency]({SERVED_CHART})", ""]
    return lines


def _perf_analyzer_section(result: dict[str, Any]) -> list[str]:
    cross = result.get("perf_analyzer")
    if not cross:
        return ["perf_analyzer cross-check: not run (add --perf-analyzer).", ""]
    if "error" in cross:
        return [f"perf_analyzer cross-check failed: {cross['error']}", ""]
    ours = {("concurrency", level["concurrency"]): level for level in result["concurrency"]}
    ours.update({("rate", level["rate_rps"]): level for level in result["fixed_rate"]})
    lines = ["### perf_analyzer beside ours (same server, model and label maps)", ""]
    rows = []
    for row in cross["rows"]:
        mine = ours.get((row["mode"], row["level"]), {})
        label = f"{row['mode']} {row['level']}"
        if "error" in row:
            rows.append([label, mine.get("throughput_rps"), "failed", mine.get("p50_ms"), "", mine.get("p95_ms"),
                         "", row["error"].splitlines()[-1][:80]])
            continue
        rows.append([label, mine.get("throughput_rps"), row["throughput_rps"], mine.get("p50_ms"), row["p50_ms"],
                     mine.get("p95_ms"), row["p95_ms"], f"queue {row['server_queue_ms']:.1f} / compute "
                                                         f"{row['server_compute_ms']:.1f}"])
    lines += _table(["level", "ours req/s", "perf_analyzer req/s", "ours p50 ms", "perf_analyzer p50 ms",
                     "ours p95 ms", "perf_analyzer p95 ms", "perf_analyzer server ms"], rows)
    lines += [f"perf_analyzer {cross['rows'][0]['version'] if cross['rows'] else ''}: time windows of "
              f"{cross['window_ms']} ms (longer at a fixed rate), stable within {STABILITY_PERCENT} % over 3 "
              f"windows; its latency is measured from the actual send, ours from the scheduled one at a fixed rate.",
              ""]
    return lines


# ------------------------------------------------------------------------------------------------ charts

def latency_chart(result: dict[str, Any], path: Path) -> Path:
    """Median latency per call (p95 as the bar's top) and images/s against batch size, a line per runtime."""
    rows, setup = result["rows"], result["setup"]
    seconds = max(row["p95_ms"] for row in rows) > 2000
    scale, unit = (1e-3, "s") if seconds else (1.0, "ms")
    figure, (latency_axes, throughput_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for runtime in dict.fromkeys(row["runtime"] for row in rows):
        mine = sorted((row for row in rows if row["runtime"] == runtime), key=lambda row: row["batch"])
        batches = [row["batch"] for row in mine]
        p50 = [row["p50_ms"] * scale for row in mine]
        above = [(row["p95_ms"] - row["p50_ms"]) * scale for row in mine]
        latency_axes.errorbar(batches, p50, yerr=[[0] * len(mine), above], marker="o", capsize=3, label=runtime)
        throughput_axes.plot(batches, [row["images_per_s"] for row in mine], marker="o", label=runtime)
    batches = sorted({row["batch"] for row in rows})
    for axes in (latency_axes, throughput_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(batches, [str(batch) for batch in batches])
        axes.set_xlabel("batch size")
        axes.grid(True, alpha=0.3)
    latency_axes.set_ylabel(f"latency per call ({unit}): p50, bar to p95")
    latency_axes.set_ylim(bottom=0)
    throughput_axes.set_ylabel("images / s (batch / p50)")
    throughput_axes.set_ylim(bottom=0)
    throughput_axes.legend(fontsize=8)
    figure.suptitle(f"In-process, {setup['preset']} ngf {setup['ngf']} {setup['size']}, {setup['threads']} threads")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def served_chart(result: dict[str, Any], path: Path) -> Path:
    """Throughput and latency against concurrency (ours and perf_analyzer's), and where a request's time goes."""
    levels, setup = result["concurrency"], result["setup"]
    concurrency = [level["concurrency"] for level in levels]
    cross = [row for row in (result.get("perf_analyzer") or {}).get("rows", [])
             if row["mode"] == "concurrency" and "error" not in row]
    figure, (throughput_axes, latency_axes, split_axes) = plt.subplots(1, 3, figsize=(15, 4.2))
    throughput_axes.plot(concurrency, [level["throughput_rps"] for level in levels], marker="o", label="ours")
    latency_axes.plot(concurrency, [level["p50_ms"] for level in levels], marker="o", label="ours p50")
    latency_axes.plot(concurrency, [level["p95_ms"] for level in levels], marker="o", linestyle=":",
                      label="ours p95")
    if cross:
        levels_pa = [row["level"] for row in cross]
        throughput_axes.plot(levels_pa, [row["throughput_rps"] for row in cross], marker="s", linestyle="--",
                             label="perf_analyzer")
        latency_axes.plot(levels_pa, [row["p50_ms"] for row in cross], marker="s", linestyle="--",
                          label="perf_analyzer p50")
        latency_axes.plot(levels_pa, [row["p95_ms"] for row in cross], marker="s", linestyle="-.",
                          label="perf_analyzer p95")
    throughput_axes.set_ylabel("requests / s")
    latency_axes.set_ylabel("latency (ms)")
    # Where a request's mean time goes: queues and compute from Triton's statistics, the rest is transport,
    # (de)serialisation and the client.
    pipe = [level["server"][PIPELINE_MODEL] for level in levels]
    gen = [level["server"][GENERATOR_MODEL] for level in levels]
    parts = {"generator compute": [item["compute_ms"] for item in gen],
             "generator queue": [item["queue_ms"] for item in gen],
             "pipeline beyond its generator call": [max(p["compute_ms"] - g["queue_ms"] - g["compute_ms"], 0.0)
                                         for p, g in zip(pipe, gen)],
             "pipeline queue": [item["queue_ms"] for item in pipe],
             "gRPC + client": [max(level["mean_ms"] - p["queue_ms"] - p["compute_ms"], 0.0)
                               for level, p in zip(levels, pipe)]}
    positions = list(range(len(levels)))
    bottom = [0.0] * len(levels)
    for name, values in parts.items():
        split_axes.bar(positions, values, bottom=bottom, label=name)
        bottom = [low + value for low, value in zip(bottom, values)]
    split_axes.set_xticks(positions, [str(level) for level in concurrency])
    split_axes.set_ylabel("mean ms per request")
    split_axes.margins(y=0.1)
    split_axes.legend(fontsize=7)
    for axes in (throughput_axes, latency_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(concurrency, [str(level) for level in concurrency])
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    for axes in (throughput_axes, latency_axes, split_axes):
        axes.set_xlabel("concurrent requests")
    figure.suptitle(f"Served ({setup['model']} over gRPC), {setup['preset']} ngf {setup['ngf']} {setup['size']}, "
                    f"{setup['instances']} instances × {setup['intra_op_threads']} thread(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
