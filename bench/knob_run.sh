#!/bin/bash
# Device visit: a knob-operator evolution run on the MHA suite (issue 5), resumable across visits.
# Usage: bash bench/knob_run.sh [candidates] [seconds]    (after source .gpu-bundle/b/setup.sh)
set -uo pipefail
candidates=${1:-32}; seconds=${2:-540}
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
run=runs/mha_knobs
if [ -f $run/state.json ]; then
  args=(--resume $run --candidates "$candidates")
else
  args=(--config configs/evolve_mha_sm90.yaml --operator knobs --candidates "$candidates" --set run_dir=$run
        --set archive=$run/archive --set "compile_archs=[sm_90a]" --set evaluation.seeds=1
        --set evaluation.rounds=2 --set evaluation.timeout_s=300)
fi
timeout --signal=INT "$seconds" python3 -m avo.evolve "${args[@]}" 2>&1 | grep -v Warning | tail -45
tar czf "${OUT:-/tmp}/mha_knobs.tgz" $run
