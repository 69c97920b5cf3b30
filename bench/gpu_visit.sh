#!/bin/bash
# One device visit: GPU tests, the cascade on a kernel, and a side-by-side benchmark.
# Usage (on the GPU machine, after `source .gpu-bundle/b/setup.sh`):
#   bash bench/gpu_visit.sh [kernel] [suite] [pytest -k expr]
set -uo pipefail
kernel=${1:-flash_fwd_sm90}; suite=${2:-quick}; tests=${3:-}
out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,utilization.gpu --format=csv,noheader | tee "$out/gpu.txt"
python3 -m pytest -q -m gpu ${tests:+-k "$tests"} tests 2>&1 | tee "$out/gpu_tests.txt" | tail -25
python3 -m avo.eval "$kernel" --suite "$suite" --incumbent none --baselines fa4,cudnn --json "$out/eval.json" 2>&1 | tee "$out/eval.txt"
python3 -m avo.bench --kernel "$kernel" --suite "$suite" --out "$out/bench.json" 2>&1 | tee "$out/bench.txt"
