#!/bin/bash
# Issue 13 on the GPU: where the seed loses to FA4, and what closes the gap. One mode per device call.
# Call 1: `bash .gpu-bundle/a/stash.sh` (carry .gpu-bundle/a). Then, carrying .gpu-bundle/b and .gpu-bundle/extra:
#   source .gpu-bundle/b/setup.sh && bash bench/fa4_gap_visit.sh tests [FILE]  # GPU tests of FILE (test_timing)
#   source .gpu-bundle/b/setup.sh && bash bench/fa4_gap_visit.sh power     # work per clock vs clock, seed/FA4/cuDNN
#   source .gpu-bundle/b/setup.sh && bash bench/fa4_gap_visit.sh ncu [KERNEL] [CONFIG]  # Nsight Compute, kernel vs FA4
#   source .gpu-bundle/b/setup.sh && bash bench/fa4_gap_visit.sh knobs [SUITE] [ROUNDS] NAME='{json}' ... [NAME=file.py]
#   ... ncu-mem | ncu-src | lineage | final [NODE] | eval SUITE INCUMBENT FILE... | aa SUITE NODE | run NAME SUITE HOURS
#   | frozen-inputs OLD.py NEW.py [SUITES] | aa-split SUITE NODE
#   | run-final NAME SUITE (see each mode)
set -uo pipefail
export AVO_CACHE_DIR=${AVO_CACHE_DIR:-/tmp/avo-cache}
export PATH=$PATH:/usr/local/cuda/bin
for w in .gpu-bundle/extra/*.whl; do [ -e "$w" ] && export PYTHONPATH="$PYTHONPATH:$PWD/$w"; done  # nvidia-ml-py
out=${OUT:-/tmp/avo-out}; mkdir -p "$out"
# the ncu modes: KERNEL CONFIG (of the suite $SUITE, default paper), and two launches of each of it and FA4 (warms the compiles; what ncu profiles)
kernel=${2:-flash_fwd_sm90}; config=${3:-mha16x16_s16k_full}
once=(python3 bench/power_profile.py --kernel "$kernel" --suite "${SUITE:-paper}" --configs "$config" --baselines fa4 --once)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader | tee -a "$out/gpu.txt"
case "${1:-}" in
  tests)  # one file per call: test_timing and test_zoo together (21 tests) take past one call's 560 s
    timeout 560 python3 -m pytest -q -m gpu -p no:cacheprovider "${2:-tests/test_timing.py}" 2>&1 | grep -v Warning \
      | tail -30 | tee -a "$out/gpu_tests.txt" ;;
  power)
    timeout 500 python3 bench/power_profile.py --kernel "${2:-flash_fwd_sm90}" \
      --configs "${3:-mha16x16_s16k_full,gqa32x8_s8k_full,mha16x16_s4k_causal}" --seconds 1.5 --repeats 2 \
      --out "$out/power.json" 2>&1 | grep -v Warning | tail -20 | tee "$out/power.txt" ;;
  ncu)
    sections=""; for s in SpeedOfLight Occupancy LaunchStats WarpStateStats ComputeWorkloadAnalysis \
      MemoryWorkloadAnalysis SchedulerStats InstructionStats; do sections="$sections --section $s"; done
    metrics=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,lts__t_sector_hit_rate.pct,dram__bytes_read.sum
    "${once[@]}" 2>&1 | tail -3
    timeout 400 ncu -k regex:kernel_cutlass --launch-count 4 $sections --metrics "$metrics" -f -o "$out/ncu_$config" \
      "${once[@]}" > "$out/ncu.log" 2>&1
    tail -3 "$out/ncu.log"
    ncu --import "$out/ncu_$config.ncu-rep" --csv --page raw > "$out/ncu_$config.csv"
    python3 - "$out/ncu_$config.csv" <<'EOF' | tee "$out/ncu_summary.txt"
import sys, json
from avo.tools import parse_ncu_csv, summarize_ncu, _num
rows = parse_ncu_csv(open(sys.argv[1]).read())
extra = ("sm__cycles_elapsed.avg.per_second", "smsp__inst_executed.sum", "gpu__time_duration.sum",
         "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", "lts__t_sector_hit_rate.pct", "dram__bytes_read.sum",
         "sm__cycles_elapsed.max")
for r in rows[1::2]:  # the second (warm) launch of each kernel
    s = summarize_ncu(r)
    s["kernel"] = s["kernel"][:60]
    s.update({k: r[k][0] for k in extra if k in r})
    print(json.dumps(s))
EOF
    ;;
  ncu-mem)  # L2/L1 traffic by source and op, the kernel vs FA4 (absolute counts)
    m=lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_write.sum,lts__t_sectors_op_read.sum
    m=$m,lts__t_sectors_op_write.sum,lts__t_requests_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum
    m=$m,lts__t_sectors_srcunit_ltcfabric.sum,lts__t_sectors.sum,lts__t_requests.sum,smsp__inst_executed_op_global_st.sum
    m=$m,smsp__inst_executed_op_global_ld.sum,l1tex__m_xbar2l1tex_read_bytes.sum,l1tex__m_l1tex2xbar_write_bytes.sum
    m=$m,lts__t_sectors_srcunit_tex.sum,lts__t_sectors_srcnode_gpc.sum,gpu__time_duration.sum,dram__bytes_read.sum
    m=$m,lts__t_sectors_srcunit_tex_aperture_device_op_read.sum,lts__average_t_sector_hit_rate_realtime.pct
    "${once[@]}" 2>&1 | tail -1
    timeout 400 ncu -k regex:kernel_cutlass --launch-count 4 --metrics "$m" --csv --page raw \
      "${once[@]}" > "$out/ncu_mem.csv" 2> "$out/ncu_mem.err"
    python3 - "$out/ncu_mem.csv" <<'EOF' | tee "$out/ncu_mem.txt"
import sys
from avo.tools import parse_ncu_csv
text = open(sys.argv[1]).read()
rows = parse_ncu_csv(text[text.find('"ID"'):])
for r in rows[1::2]:
    print(r.get("Kernel Name", ("?",))[0][:50])
    for k, (v, unit) in sorted(r.items()):
        if "__" in k:
            print(f"   {k:70s} {v} {unit}")
EOF
    ;;
  ncu-src)  # warp stall samples per SASS instruction, the kernel and FA4 (warm launch of each)
    "${once[@]}" 2>&1 | tail -1
    for who in avo_generated flash_attncute; do
      timeout 200 ncu -k regex:$who --launch-skip 1 --launch-count 1 --section SourceCounters -f -o "$out/src_$who" \
        "${once[@]}" > /dev/null 2>&1
      ncu --import "$out/src_$who.ncu-rep" --page source --csv --print-source sass > "$out/src_$who.csv" 2>&1
      ls -la "$out/src_$who.csv"; head -3 "$out/src_$who.csv" | cut -c1-400
    done ;;
  lineage)  # every attempt of issue 13 through avo.eval --submit, into a copy of the archive under $OUT
    arch_dir="$out/archive"; rm -rf "$arch_dir"; cp -r archive "$arch_dir"
    who="Claude (lead engineer, issue 13), by hand"
    submit() {  # FILE SUITE PARENT RATIONALE -> prints the recorded node id
      timeout 300 python3 -m avo.eval "$1" --suite "$2" --baselines fa4,cudnn --archive "$arch_dir" --submit \
        --parent "$3" --author "$who" --rationale "$4" --json "$out/eval_$(basename "$1" .py)_$2.json" 2>&1 \
        | grep -v Warning | tee -a "$out/lineage.txt" | grep -E "^recorded|verdict|speed vs" >&2
      tail -1 "$out/lineage.txt" | grep -oE "v[0-9]{4}"
    }
    a=archive/attempts/13
    submit $a/epi_arrive.py mha_full v0000 "epilogue: only the storing warp waits for the stmatrix barrier (FA4's order)" >/dev/null
    g=$(submit $a/grid3d.py mha_full v0000 "3-D grid (m blocks, heads, batch) without the head swizzle, as FA4 launches it")
    s=$(submit $a/grid3d_ssa.py mha_full "$g" "softmax per row as vectors (FA4's shape) on the 3-D grid")
    c=$(submit $a/grid3d_cvt.py mha_full "$g" "P to bf16 with cvt.rn.bf16x2 as an opaque PTX op: LLVM no longer converts at the top of the next iteration")
    submit $a/grid3d_cvt_ssa.py mha_full "$c" "opaque cvt + softmax rows as vectors: ptxas keeps FFMA/exp2 ahead of the PV wait (FA4's schedule)" >/dev/null
    # table_grid3d_cvt_ssa.py: jit.render('flash_fwd_sm90') of the template at this commit (the seed table)
    submit $a/table_grid3d_cvt_ssa.py paper "$c" "the seed's per-spec knob table (GQA packed, causal swizzled) with grid3d + opaque cvt + vector softmax, all specs" >/dev/null
    python3 -m avo.lineage --archive "$arch_dir" show 2>&1 | tail -12 ;;
  final)  # the committed best against FA4/cuDNN on the paper, hdim64 and hdim256 suites, then GPU tests
    # (NODE, or "best": each suite's own newest commit)
    best=${2:-best}
    for suite in paper hdim64 hdim256; do
      timeout 200 python3 -m avo.bench --kernel "$best" --suite $suite --baselines fa4,cudnn --rounds 16 \
        --out "$out/bench_${best}_$suite.json" 2>&1 | grep -v Warning | tail -4 | tee -a "$out/final.txt"
    done
    timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_seed_kernel.py -k "test_matches_reference or frozen" 2>&1 | tail -3 | tee -a "$out/final.txt"
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_ops.py 2>&1 | tail -3 | tee -a "$out/final.txt" ;;
  frozen-inputs)  # `frozen-inputs OLD.py NEW.py [SUITES]`: NEW against OLD, paired, on N(0, 1) and on each of
    # the judge's logit patterns (avo.bench --compare --inputs), suites hdim64 and quick unless named
    for suite in ${4:-hdim64 quick}; do
      for inputs in normal sink rising falling; do
        timeout 140 python3 -m avo.bench --kernel "$3" --compare "$2" --suite "$suite" --inputs $inputs --baselines "" \
          --rounds "${ROUNDS:-8}" --out "$out/inputs_${suite}_$inputs.json" 2>&1 | grep "in the same run (paired" \
          | sed "s/^/$suite $inputs: /" | tee -a "$out/frozen_inputs.txt"
      done
    done ;;
  aa)  # the judge's A/A check, `aa SUITE NODE`: the node's source plus a comment (compiled apart) judged
    # against the node; an unbiased sampler reads an interval that holds 1 (2026-11-23: 0.9976x
    # [0.9967, 0.9985] before the candidate's checks moved to the round's end, 0.9991x [0.9968, 1.0015] after)
    copy=/tmp/aa_$3.py
    { cat "archive/sources/$3.py"; printf '\n# A/A copy of %s (a judge check)\n' "$3"; } > "$copy"
    bash "$0" eval "$2" "$3" "$copy" ;;
  aa-split)  # `aa-split SUITE NODE`: where an A/A bias comes from (eighth session: an A/A judge of v0094
    # read 1.0072x [1.0056, 1.0089]). The node against itself as one callable (same module, same
    # code) and against its copy (another module), each with fixed buffers and with --crossover
    # (the two trade input and output buffers every other round). A bias in the fixed runs that
    # the crossover removes sits in the buffers; one in both copy runs only, in the module
    copy=/tmp/aa_$3.py
    { cat "archive/sources/$3.py"; printf '\n# A/A copy of %s (a judge check)\n' "$3"; } > "$copy"
    for other in "$3" "$copy"; do
      for cross in "" --crossover; do
        timeout 140 python3 -m avo.bench --kernel "$3" --compare "$other" --suite "$2" --baselines "" $cross \
          --rounds "${ROUNDS:-16}" --out "$out/aa_split_$(basename "$other" .py)${cross}.json" 2>&1 \
          | grep "in the same run (paired" | sed "s|^|$(basename "$other") ${cross:-fixed}: |" | tee -a "$out/aa_split.txt"
      done
    done ;;
  eval)  # avo.eval --json of kernel files on a suite against a node (record them here with avo.eval --record)
    suite=$2; inc=$3; shift 3
    for f in "$@"; do
      timeout 280 python3 -m avo.eval "$f" --suite "$suite" --incumbent "$inc" --baselines fa4,cudnn \
        --json "$out/eval_$(basename "$f" .py)_$suite.json" 2>&1 | grep -v Warning | grep -E "verdict|speed vs|  [a-z0-9_]+ +[0-9]" \
        | tee -a "$out/eval.txt"
    done ;;
  run|gqa-transfer)  # a resumable knob run, in calls of < 10 min: `run NAME SUITE HOURS` (gqa-transfer =
    # `run gqa_transfer gqa 0.5`, issue 13's GQA transfer). Repeat the mode: it resumes. Each call
    # leaves the whole run (archive, state, events; no kernel cache) in $OUT/NAME_run.tgz: copy it to
    # bench/results/NAME/run.tgz here and the next call, on this machine or a fresh one, in this
    # session or a later one, goes on from it. Starts from the template (every committed edit).
    if [ "$1" = gqa-transfer ]; then name=gqa_transfer; suite=gqa; hours=0.5; else name=$2; suite=$3; hours=$4; fi
    run=/tmp/$name
    if [ ! -f "$run/state.json" ] && [ -f bench/results/$name/run.tgz ]; then
      mkdir -p "$run" && tar -C "$run" -xzf bench/results/$name/run.tgz
    fi
    start=(--config configs/evolve_gqa_sm90.yaml --set suite=$suite --set name=$name --set archive=$run/archive
           --set run_dir=$run --set budget.wall_hours=$hours)
    [ -f "$run/state.json" ] && start=(--resume $run)  # the run's elapsed time carries over
    # --stop-after: no new candidate and no new judge in the last 140 s of the call (one judge, the
    # one running at the stop, takes 20-110 s: paper at the sampling cap 105 s); the candidates
    # still waiting for the GPU are deferred and the next call judges them first. So the call's
    # limit cuts none off (2026-11-23: 10 of 76 lost without --stop-after, 2 of 26 with it before
    # deferral); timeout is the backstop
    call=${CALL_SECONDS:-560}
    timeout "$call" python3 -m avo.evolve "${start[@]}" --operator knobs --stop-after $((call - 140)) 2>&1 | grep -v Warning \
      | tail -25 | tee -a "$out/$name.txt"
    python3 -m avo.lineage --archive $run/archive show 2>&1 | tail -15 | tee -a "$out/$name.txt"
    tar -C $run -czf "$out/${name}_run.tgz" --exclude='./cache*' . ;;
  run-final|gqa-final)  # a run's best against its start (the template it began from) and FA4/cuDNN, same
    # run: `run-final NAME SUITE` (gqa-final = `run-final gqa_transfer gqa`)
    if [ "$1" = gqa-final ]; then name=gqa_transfer; suite=gqa; else name=$2; suite=$3; fi
    run=/tmp/$name
    if [ ! -d "$run/archive" ] && [ -f bench/results/$name/run.tgz ]; then
      mkdir -p "$run" && tar -C "$run" -xzf bench/results/$name/run.tgz
    fi
    timeout 500 python3 -m avo.bench --kernel best --compare v0000 --archive $run/archive --suite $suite \
      --baselines fa4,cudnn --rounds "${ROUNDS:-16}" --out "$out/bench_$name.json" 2>&1 | grep -v Warning \
      | tail -24 | tee "$out/${name}_final.txt" ;;
  knobs)
    suite=${2:-paper}; rounds=${3:-16}; shift 3 || shift $#
    args=()
    for item in "$@"; do
      case "$item" in *.py) args+=(--file "$item") ;; *) args+=(--variant "$item") ;; esac
    done
    timeout 560 python3 bench/knob_slowdowns.py --suite "$suite" --rounds "$rounds" --baselines fa4,cudnn \
      --per-config "${args[@]}" --out "$out/knobs_$suite.json" 2>&1 | grep -v Warning | tail -80 | tee "$out/knobs_$suite.txt" ;;
  *) echo "usage: bash bench/fa4_gap_visit.sh tests|power|ncu [KERNEL] [CONFIG]|knobs SUITE ROUNDS VARIANTS..."; exit 2 ;;
esac
