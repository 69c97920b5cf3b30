#!/bin/bash
# Issue 12 on the GPU machine: the kernel engineer's tools on the seed kernel, through the CLI
# (python -m avo.tool, the same registry the in-process agent and the MCP server serve), ~6 min.
#   call 1: bash .gpu-bundle/a/stash.sh                                   (carry .gpu-bundle/a)
#   call 2: source .gpu-bundle/b/setup.sh && bash bench/tools_visit.sh   (carry .gpu-bundle/b)
# Everything lands under $OUT: tools_visit.log (every command and its answer), profiles.tgz (the
# raw ncu reports and their --page raw CSVs, for the parser tests), and a short table last.
# A dry run of the plumbing on a CPU machine: AVO_VISIT_CONFIG=configs/evolve_tiny.yaml AVO_VISIT_SUITE=tiny
set -uo pipefail
out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
log=$out/tools_visit.log
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
export PATH="/usr/local/cuda/bin:$PATH"
run=/tmp/avo-tools-visit
rm -rf "$run"
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv,noheader | tee "$log"
for b in ncu cuobjdump nvdisasm; do echo "$b: $(command -v $b || echo missing)" | tee -a "$log"; done

T=(python3 -m avo.tool --config "${AVO_VISIT_CONFIG:-configs/evolve_mha_sm90.yaml}" --set "run_dir=$run" --set "archive=$run/archive"
   --set "suite=${AVO_VISIT_SUITE:-quick}" --set evaluation.timeout_s=400 --set evaluation.rounds=2 --set "evaluation.baselines=[fa4, cudnn]")
declare -A status
tool() {  # tool LABEL SECONDS NAME ARGS...: one registry call, its answer logged
  local label=$1 secs=$2; shift 2
  echo "=== $label: avo.tool $*" >> "$log"
  local t0=$SECONDS
  timeout -k 10 "$secs" "${T[@]}" "$@" > "$out/.last" 2>> "$out/stderr.log"
  local rc=$?
  cat "$out/.last" >> "$log"
  status[$label]="exit $rc, $((SECONDS - t0)) s"
  echo "--- $label: ${status[$label]}" | tee -a "$log"
}
# the first call judges the seed (compile, correctness, timing with FA4 and cuDNN), then opens a step
tool configs 300 list_configs
config=$(python3 -c "import json,sys; print(json.load(open('$out/.last'))['timed'][0]['name'])" 2>/dev/null || echo "")
echo "profiled config: $config" | tee -a "$log"
tool sass_loops 120 sass loops=true
tool sass_mma 120 sass "grep=HGMMA|MUFU|BAR|SYNCS" count=60
tool ptx_wgmma 60 ptx "grep=wgmma" count=20
tool mix 120 instruction_mix a=v0000 b=candidate
tool profile 400 profile "config=$config" incumbent=true
tool test_one 200 test "configs=[$config]"
tool bench_one 200 benchmark "configs=[$config]"
tool give_up 60 give_up "reason=tools visit done"
tar czf "$out/profiles.tgz" -C "$run" profiles transcripts 2>/dev/null
rm -f "$out/.last"

echo; echo "== tools on the seed ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
for k in configs sass_loops sass_mma ptx_wgmma mix profile test_one bench_one give_up; do
  printf '%-11s %s\n' "$k" "${status[$k]:-not run}"
done
python3 - "$log" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"=== profile: .*?\n(\{.*?\n\})\n--- profile", text, re.S)
if m:
    s = json.loads(m.group(1))
    keys = ("duration_us", "tensor_pipe_pct", "mufu_pipe_pct", "fma_pipe_pct", "smem_throughput_pct",
            "l2_throughput_pct", "dram_throughput_pct", "achieved_occupancy_pct", "registers_per_thread")
    versions = [k for k in s if k not in ("config", "reports")]
    print(f"profile {s.get('config')}: " + " | ".join(versions))
    for key in keys:
        print(f"  {key:24s} " + "  ".join(f"{s[v].get(key, '-')!s:>10}" for v in versions))
    for v in versions:
        print(f"  {v} stalls: {s[v].get('top_stalls') or s[v].get('error')}")
m = re.search(r"=== sass_loops: .*?\n(\{.*?\n\})\n--- sass_loops", text, re.S)
if m:
    loops = json.loads(m.group(1)).get("loops", [])[:2]
    for loop in loops:
        print(f"sass loop {loop['from']}-{loop['to']}: {loop['instructions']} instructions, mix {loop['mix']}")
PY
