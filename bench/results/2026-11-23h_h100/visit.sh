#!/bin/bash
# one device call: steps in order, each under the time left of a 540 s call
set -uo pipefail
t0=$(date +%s); out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
export AVO_CACHE_DIR=/tmp/avo-cache; mkdir -p $AVO_CACHE_DIR
[ -d .avo-precache ] && cp -rn .avo-precache/* $AVO_CACHE_DIR/ 2>/dev/null
for w in .gpu-bundle/extra/*.whl; do [ -e "$w" ] && export PYTHONPATH="$PYTHONPATH:$PWD/$w"; done
left() { echo $(( 540 - ($(date +%s) - t0) )); }
step() {  # NAME CMD...
  local name=$1; shift; local l; l=$(left)
  if [ "$l" -lt 40 ]; then echo "SKIP $name (time)" | tee -a "$out/steps.txt"; return; fi
  local s=$(date +%s)
  timeout "$l" "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - s ))s" | tee -a "$out/steps.txt"
  grep -v Warning "$out/$name.log" | tail -n 8
}
gpu() { timeout 200 "$@"; }
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee "$out/gpu.txt"
for s in "$@"; do
  case $s in
    tests_zoo) step tests_zoo python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_zoo.py -k sink ;;
    tests_timing) step tests_timing python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_timing.py -k "shaped or warm" ;;
    tests_seed) step tests_seed python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_seed_kernel.py -k "frozen_over_early or frozen_row_max" ;;
    tests_ops) step tests_ops python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_ops.py ;;
    bench_*) suite=${s#bench_}; step bench_$suite python3 -m avo.bench --kernel best --suite $suite --baselines fa4,cudnn --rounds 16 --out "$out/bench_best_$suite.json" ;;
    aa) step aa bash bench/fa4_gap_visit.sh aa paper v0094 ;;
    early_*) suite=${s#early_}; inc=$(case $suite in paper) echo v0091;; hdim64) echo v0087;; hdim256) echo v0093;; esac)
      step early_$suite bash bench/fa4_gap_visit.sh eval $suite $inc archive/attempts/13/frozen_over_early.py ;;
  esac
done
echo "== steps"; cat "$out/steps.txt"
