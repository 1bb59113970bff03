#!/usr/bin/env bash
# Reproduce the published results: `benchmarks/publish.sh [DIR]` (default benchmarks/results/<date>-<machine>).
#
# 1. in-process: the runtimes of the export and serving stack on the ADE20K generator at full size (256x256,
#    ngf 64), batch 1 and 4, 2 threads;
# 2. served: the ADE20K generator at ngf 16, 128x128 behind Triton, concurrency 1, 2, 4, 8 and two fixed rates, with
#    perf_analyzer beside our load generator;
# 3. the boundary-sparse graph against eager PyTorch, the plain exports and our dense graph: ADE20K (batch 1 and 4,
#    runtimes taking turns) and Cityscapes (512x256; batch 1 taking turns, batch 4 one runtime at a time, as the
#    five do not fit in memory together), into DIR-sparse-ade20k, DIR-sparse-cityscapes, DIR-sparse-cityscapes-batch4;
#    and ADE20K batch 1 on maps with 8 and 40 regions (DIR-sparse-ade20k-8-regions, ...-40-regions).
# About 90 minutes on a 2-core machine. Run it on an otherwise idle machine: the summaries flag a busy one.
set -euo pipefail
cd "$(dirname "$0")/.."
slug=$(python -c "from spade_deploy.bench.machine import describe_machine, machine_slug; print(machine_slug(describe_machine(2)))")
out=${1:-benchmarks/results/$(date -u +%F)-$slug}
common=(--repeats 3 --threads 2)  # --warmup: its default, 3
# The sparse runs: more timed calls where they are cheap, as this shared host varies from call to call (ADE20K: 10;
# Cityscapes batch 1 and the region counts: 5; Cityscapes batch 4: 3).
sparse=(--runtimes eager,plain-ort,plain-openvino,ort,sparse-ort --threads 2)

spade-deploy bench --preset ade20k --ngf 64 --height 256 --width 256 --batch 1,4 \
    --runtimes eager,folded-torch,plain-ort,plain-openvino,ort,openvino "${common[@]}" --out "$out"
spade-deploy bench --served --preset ade20k --ngf 16 --height 128 --width 128 --concurrency 1,2,4,8 \
    --requests 48 --rate-requests 48 --perf-analyzer --out "$out"
spade-deploy bench --preset ade20k --batch 1,4 "${sparse[@]}" --repeats 10 --out "$out-sparse-ade20k"
spade-deploy bench --preset cityscapes --batch 1 "${sparse[@]}" --repeats 5 --out "$out-sparse-cityscapes"
spade-deploy bench --preset cityscapes --batch 4 "${sparse[@]}" --repeats 3 --one-at-a-time \
    --out "$out-sparse-cityscapes-batch4"
for regions in 8 40; do
    spade-deploy bench --preset ade20k --batch 1 --runtimes eager,plain-ort,plain-openvino,sparse-ort --repeats 5 \
        --threads 2 --regions "$regions" --out "$out-sparse-ade20k-$regions-regions"
done
echo "results: $out/summary.md, $out-sparse-*/summary.md"
