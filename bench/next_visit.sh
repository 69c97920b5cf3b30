#!/bin/bash
# What is left for the GPU (issues 4, 5, 6), in one visit of ~25 minutes held.
# Call 1: `bash .gpu-bundle/a/stash.sh` (carry .gpu-bundle/a). Call 2 and on, carry .gpu-bundle/b:
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh tests       # zoo + jit GPU tests, ~5 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh ops         # op GPU tests, ~1 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh throughput  # ~5 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh evolve 12   # knob run, ~7 min
#   source .gpu-bundle/b/setup.sh && bash bench/next_visit.sh compare     # best vs seed + first call, ~3 min
set -uo pipefail
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader | tee -a "$out/gpu.txt"
case "${1:-}" in
  tests) python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_zoo.py tests/test_jit.py 2>&1 \
           | grep -v Warning | tail -25 | tee "$out/gpu_tests.txt" ;;
  ops) python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_ops.py 2>&1 | grep -v Warning | tail -15 \
         | tee "$out/ops_tests.txt" ;;
  throughput) python3 bench/harness_throughput.py --suite quick --count "${2:-12}" --out "$out/throughput.json" ;;
  evolve)  # a new knob run continuing the archive's lineage from its newest commit
    rm -rf runs/mha_sm90
    timeout -k 30 "${3:-400}" python3 -m avo.evolve --config configs/evolve_mha_sm90.yaml --operator knobs \
      --candidates "${2:-12}" --set evaluation.timeout_s=120 > "$out/evolve.log" 2>&1
    echo "evolve exit $?"; grep -v Warning "$out/evolve.log" | tail -8
    tar czf "$out/archive.tgz" archive runs/mha_sm90
    rm -rf runs/archive_saved && cp -r archive runs/archive_saved ;;  # runs/ is ignored: it survives the next call's copy
  compare)  # the best vs the seed in one run, then the first-call time
    [ -d runs/archive_saved ] && rm -rf archive && cp -r runs/archive_saved archive
    python3 -m avo.bench --kernel best --compare v0000 --suite mha --baselines fa4,cudnn \
      --out "$out/best_vs_seed.json" 2>&1 | grep -v Warning | tail -14
    # the bundle is installed without bytecode; pip compiles it at install, so do that first
    export PYTHONPYCACHEPREFIX=/tmp/pyc
    python3 -m compileall -q -j 8 /tmp/site "$(python3 -c 'import os, yaml; print(os.path.dirname(yaml.__file__))')" \
      avo > /dev/null 2>&1
    python3 bench/first_call.py --runs 5 --out "$out/first_call.json" 2>&1 | tail -3 ;;
  *) echo "usage: bash bench/next_visit.sh tests|ops|throughput|evolve [N] [seconds]|compare"; exit 2 ;;
esac
