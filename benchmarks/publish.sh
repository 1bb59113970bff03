#!/usr/bin/env bash
# Reproduce the published results: `benchmarks/publish.sh [DIR]` (default benchmarks/results/<date>-<machine>).
#
# 1. in-process: every runtime on the ADE20K generator at full size (256x256, ngf 64), batch 1 and 4, 2 threads;
# 2. served: the ADE20K generator at ngf 16, 128x128 behind Triton, concurrency 1, 2, 4, 8 and two fixed rates, with
#    perf_analyzer beside our load generator.
# About 15 minutes on a 2-core machine. Run it on an otherwise idle machine: the summary flags a busy one.
set -euo pipefail
cd "$(dirname "$0")/.."
slug=$(python -c "from spade_deploy.bench.machine import describe_machine, machine_slug; print(machine_slug(describe_machine(2)))")
out=${1:-benchmarks/results/$(date -u +%F)-$slug}

spade-deploy bench --preset ade20k --ngf 64 --size 256x256 --batch 1,4 --repeats 3 --warmup 1 --threads 2 --out "$out"
spade-deploy bench --served --preset ade20k --ngf 16 --size 128x128 --concurrency 1,2,4,8 --requests 48 \
    --rate-requests 48 --perf-analyzer --out "$out"
echo "results: $out/summary.md"
