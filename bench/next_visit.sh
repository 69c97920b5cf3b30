#!/bin/bash
# What is left for the GPU after 2026-11-22 (issues 4, 5, 6), in one visit of ~20 minutes held.
# Call 1: `bash .gpu-bundle/a/stash.sh` (carry .gpu-bundle/a). Call 2 and on, carry .gpu-bundle/b:
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh zoo        # ~4 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh throughput # ~6 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh evolve     # ~9 min, resumable
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh compare    # ~2 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh firstcall  # ~1 min
set -uo pipefail
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
case "${1:-}" in
  zoo) python3 -m pytest -q -m gpu tests/test_zoo.py 2>&1 | tail -15 | tee "$out/zoo.txt" ;;
  throughput) python3 bench/harness_throughput.py --suite quick --count 12 --out "$out/throughput.json" ;;
  evolve)  # continues the archive's lineage from its newest commit; 10+ more candidates
    if [ -f runs/mha_sm90/state.json ]; then args=(--resume runs/mha_sm90 --candidates "${2:-12}")
    else args=(--config configs/evolve_mha_sm90.yaml --operator knobs --candidates "${2:-12}"); fi
    timeout --signal=INT 540 python3 -m avo.evolve "${args[@]}" 2>&1 | grep -v Warning | tail -30
    tar czf "$out/archive.tgz" archive runs/mha_sm90 ;;
  compare) python3 -m avo.bench --kernel best --compare v0000 --suite mha --baselines fa4,cudnn --out "$out/best_vs_seed.json" ;;
  firstcall) python3 bench/first_call.py 2>&1 | tail -20 | tee "$out/first_call.txt" ;;
  *) echo "usage: bash bench/next_visit.sh zoo|throughput|evolve|compare|firstcall"; exit 2 ;;
esac
