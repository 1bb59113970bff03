#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go: `benchmarks/gpu.sh [DIR]` (default
# benchmarks/results/<date>-<gpu name>/ of this repository; a relative DIR is the caller's). Without a GPU
# (nvidia-smi missing or failing) it says so and exits 0 at once.
#
# Needs, from a fresh clone, on a Linux machine with an NVIDIA GPU and its driver:
#     pip install torch                        # PyPI's Linux wheel is the CUDA build (not the CPU wheel of pyproject)
#     pip install -e ".[gpu,train,bench]"      # onnxruntime-gpu + tensorrt<11, tensorboard, openvino + matplotlib
#     pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu>=1.19"   # CUDA 12 builds
# The last line because the core dependency `onnxruntime` and `onnxruntime-gpu` install the same package: with both,
# whichever came last wins and the CUDA providers may be gone (the info stage fails then, saying so).
# PYTHON=/path/to/python picks the interpreter (default: python); WORK=DIR keeps the datasets, checkpoints, ONNX
# files and engines in a new folder inside DIR (default: a new temporary folder), left in place and named at the end.
#
# Stages, each logged to DIR/<stage>.log; a stage that fails is reported and the independent ones still run:
#   info        nvidia-smi, versions, ONNX Runtime's providers (the CUDA one must start a session, not only be
#               listed), whether TensorRT imports;
#   data        16 procedural landscapes of 64x64 (`spade-deploy landscapes`);
#   train-fp32, train-bf16, train-fp16
#               3 steps of `python -m training.train --device cuda --amp none|bf16|fp16` on them (ngf 16, no VGG);
#   export      the fp32-trained checkpoint: `python -m export.trt` (dense graph; ONNX parity against float64, then
#               the fp16 engine; `export-fp32`: the fp32 engine; `export-sparse`: the fp16 engine of the
#               sparse-tensorrt graph), or `python -m export.onnx --dense` where TensorRT does not import;
#   parity      that ONNX in ONNX Runtime's CUDA provider (fp32, TF32 off; must pass the export's parity check
#               against float64) and the engines (max |Δ|, PSNR and 8-bit levels against float64; reported) ->
#               DIR/parity.json;
#   bench       `spade-deploy bench` on the ADE20K generator at 256x256, batch 1 and 4: eager PyTorch (CPU) as the
#               baseline, then on the GPU at fp32 (plain export and our graph in ONNX Runtime's CUDA provider), TF32
#               (ONNX Runtime's TensorRT provider) and fp16 (the engine `export trt` ships) -> DIR/inprocess.json,
#               DIR/summary.md. BENCH_RUNTIMES=a,b,... overrides the runtimes.
# About 10 minutes on one H100/H200. Exit status: 0 when every stage that ran passed, 1 otherwise.
set -euo pipefail

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu.sh: no NVIDIA GPU here (nvidia-smi not found); nothing to check."
    exit 0
fi
if ! gpu_names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>&1) || [[ -z $gpu_names ]]; then
    echo "gpu.sh: no usable NVIDIA GPU here (nvidia-smi failed: ${gpu_names:-no output}); nothing to check."
    exit 0
fi
gpu=${gpu_names%%$'\n'*}  # the first GPU: every stage runs on device 0

slug=${gpu,,}
slug=${slug//[^a-z0-9]/-}
while [[ $slug == *--* ]]; do slug=${slug//--/-}; done
slug=${slug#-}
slug=${slug%-}
results=${1:-$(dirname "$0")/../benchmarks/results/$(date -u +%F)-$slug}
mkdir -p "$results"
results=$(cd "$results" && pwd)  # absolute, as the caller meant it, before the cd below
if [[ -n ${WORK:-} ]]; then
    mkdir -p "$WORK"
    work=$(mktemp -d "$(cd "$WORK" && pwd)/spade-gpu-XXXXXX")  # a fresh one: a rerun must not train on a used one
else
    work=$(mktemp -d -t spade-gpu-XXXXXX)
fi
# This run's files only: an earlier run's parity or engine record would otherwise stay beside a failed stage.
rm -f "$results"/*.log "$results"/engine-*.json "$results/parity.json" "$results/summary.txt"
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
threads=$(nproc)
summary=()
failed=0

# stage NAME COMMAND...: run COMMAND with its output on the terminal and in $results/NAME.log; record the outcome.
stage() {
    local name=$1 status=0 start=$SECONDS
    shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$results/$name.log" || status=$?
    if ((status == 0)); then
        summary+=("ok       $name ($((SECONDS - start)) s)")
    else
        summary+=("FAILED   $name (exit $status after $((SECONDS - start)) s; see $name.log)")
        failed=1
    fi
    return "$status"
}

skip() {  # skip NAME REASON
    summary+=("skipped  $1: $2")
    echo "=== $1: skipped, $2"
}

info() {
    nvidia-smi
    "$PYTHON" - <<'PY'
import importlib.metadata as metadata

import onnxruntime
import torch

for name in ("torch", "onnxruntime-gpu", "onnxruntime", "tensorrt", "openvino", "spade-deploy"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
print("CUDA for torch:", torch.version.cuda, "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available()
      else "none")
print("ONNX Runtime providers:", onnxruntime.get_available_providers())
problems = []
if not torch.cuda.is_available():
    problems.append("torch sees no CUDA device: install PyPI's CUDA build of torch (pip install torch)")
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    problems.append("onnxruntime has no CUDAExecutionProvider: pip uninstall -y onnxruntime onnxruntime-gpu && "
                    "pip install 'onnxruntime-gpu>=1.19'")
else:  # listed is not started: a provider whose libraries do not load leaves ONNX Runtime on the CPU
    import tempfile
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper

    from spade_deploy.errors import Failure
    from spade_deploy.export.runtime import make_session

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    probe = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", tensor[:1],
                                                tensor[1:]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory() as folder:
        onnx.save(probe, Path(folder) / "probe.onnx")
        try:
            make_session(Path(folder) / "probe.onnx", providers=["CUDAExecutionProvider"])
            print("ONNX Runtime's CUDA provider starts")
        except Failure as error:
            problems.append(str(error))
if problems:
    raise SystemExit("gpu.sh: " + "; ".join(problems))
PY
}

train() {  # train AMP: 3 CUDA steps at that mixed precision (none: fp32)
    "$PYTHON" -m training.train --preset custom --label-nc "$label_nc" --dataroot "$work/data" --crop-size 64 \
        --ngf 16 --spade-hidden 32 --ndf 16 --batch-size 4 --max-steps 3 --log-every 1 --no-vgg-loss \
        --num-workers 0 --device cuda --amp "$1" --run-dir "$work/train-${1/none/fp32}"
}

parity() {  # the CUDA provider and the engines against the model in float64
    "$PYTHON" - "$work/train-fp32/checkpoints/latest.pt" "$work/export" "$work/export-fp32" \
        "$results/parity.json" <<'PY'
import json
import sys
from pathlib import Path

from spade_deploy.bench.inprocess import float64_outputs, graph_feeds
from spade_deploy.bench.runtimes import FP16, FP32, Subject, cuda_runner, eager_runner, tensorrt_engine_runner
from spade_deploy.export.metadata import read_export_metadata
from spade_deploy.export.parity import check, compare, format_table, quality
from spade_deploy.model.checkpoint import load_generator

checkpoint, export, export_fp32, out = (Path(arg) for arg in sys.argv[1:])
onnx = export / "generator.onnx"
metadata = read_export_metadata(onnx)
generator = load_generator(checkpoint).eval()
subject = Subject(generator, metadata.height, metadata.width, threads=4, graphs={metadata.graph: onnx})
feeds = graph_feeds(generator.config, 4, metadata.height, metadata.width, seed=0)
reference = float64_outputs(generator, {4: feeds})[4]
runners = {"eager PyTorch (CPU)": eager_runner(subject, None), "ONNX Runtime CUDA": cuda_runner(subject, onnx)}
for directory, precision in ((export, FP16), (export_fp32, FP32)):  # engines are built with TF32 off
    if (directory / "generator.plan").is_file():
        runners[f"TensorRT engine {precision}"] = tensorrt_engine_runner(directory / "generator.plan", precision)
outputs = {name: runner(feeds) for name, runner in runners.items()}
rows = [{"candidate": name, "precision": runners[name].precision, **vars(quality(output, reference))}
        for name, output in outputs.items()]
for row in rows:
    psnr = "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.1f} dB"
    print(f"{row['candidate']:<24} {row['precision']:<5} max |Δ| {row['max_abs_diff']:.2e}, PSNR {psnr}, pixels "
          f"within 1 level {row['within_1_level']:.2%}, within 2 {row['within_2_levels']:.2%}")
fp32 = compare("image_float", reference, outputs["eager PyTorch (CPU)"],
               {"ONNX Runtime CUDA": outputs["ONNX Runtime CUDA"]})
print(format_table(fp32))
# A 3-step model's output can sit near tanh's ±1 almost everywhere, where every runtime agrees: its spread says
# how much this check can tell (the bench measures precision on a calibrated random model instead).
saturated = float((abs(reference) > 0.99).mean())
print(f"float64 output: std {reference.std():.3f}, {saturated:.1%} of values beyond ±0.99")
out.write_text(json.dumps({"checkpoint": str(checkpoint), "graph": metadata.graph,
                           "size": f"{metadata.height}x{metadata.width}", "batch": 4, "reference": "float64",
                           "reference_std": float(reference.std()), "reference_saturated": saturated,
                           "rows": rows}, indent=1) + "\n")
check(fp32)  # fp32 must match float64 as the CPU export does; reduced precision is measured, not judged
PY
}

finish() {
    {
        echo "gpu.sh on $gpu, $(date -u +%FT%TZ); results in $results, work files in $work"
        printf '  %s\n' "${summary[@]}"
    } | tee "$results/summary.txt"
    exit "$failed"
}

stage info info || finish  # without CUDA in torch and ONNX Runtime nothing else can run
label_nc=$("$PYTHON" -c "from spade_deploy.data.landscapes import CLASSES; print(len(CLASSES))")
stage data "$PYTHON" -m spade_deploy.cli landscapes --out "$work/data" --count 16 --size 64 || true
for amp in none bf16 fp16; do
    stage "train-${amp/none/fp32}" train "$amp" || true
done
checkpoint=$work/train-fp32/checkpoints/latest.pt
if [[ ! -f $checkpoint ]]; then
    skip export "no fp32-trained checkpoint"
elif "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then
    if stage export "$PYTHON" -m export.trt "$checkpoint" --out "$work/export" \
        --require-engine; then
        cp "$work/export/generator.plan.json" "$results/engine-fp16.json"
    fi
    if stage export-fp32 "$PYTHON" -m export.trt "$checkpoint" --out "$work/export-fp32" \
        --precision fp32 --require-engine --parity-samples 1; then
        cp "$work/export-fp32/generator.plan.json" "$results/engine-fp32.json"
    fi
    if stage export-sparse "$PYTHON" -m export.trt "$checkpoint" --out "$work/export-sparse" \
        --graph sparse-tensorrt --require-engine --parity-samples 1; then
        cp "$work/export-sparse/generator.plan.json" "$results/engine-sparse-fp16.json"
    fi
else
    skip "TensorRT engines" "TensorRT does not import ($PYTHON -c 'import tensorrt')"
    stage export "$PYTHON" -m export.onnx "$checkpoint" --out "$work/export" --dense || true
fi
if [[ -f $work/export/generator.onnx ]]; then
    stage parity parity || true
else
    skip parity "no exported generator.onnx"
fi
runtimes=${BENCH_RUNTIMES:-eager,plain-ort-cuda,ort-cuda,tensorrt,tensorrt-fp16}
stage bench "$PYTHON" -m spade_deploy.cli bench --preset ade20k --batch 1,4 --runtimes "$runtimes" --repeats 10 \
    --threads "$threads" --out "$results" || true
finish
