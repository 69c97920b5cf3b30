#!/bin/bash
# Issue 16 on a 2-GPU H200 machine (kind nvidia-h200-x2): candidates per hour of the knob operator on
# 1 GPU, on 2 GPUs through evaluation.gpus, and on 2 GPUs through the Ray backend (a Ray instance of
# this host's own); the goal is >= 1.8x of the 1-GPU rate. Each run's per-GPU stage log is checked:
# no two candidates may have held one GPU at once. Results under $OUT; a table is printed last.
#
# Ray travels as wheels: ray 2.60.0 for cp312 is a 79 MB wheel (+ 3.4 MB of dependencies), more
# than one 64 MiB carry, and .gpu-bundle/b (50 MB) leaves no room beside it: two calls of its own.
# Here, on the CPU machine (repo root), after bash ../shared/device/make-bundle.sh:
#   bash bench/multi_gpu_visit.sh ray-wheels          # -> .gpu-bundle/ray-a (41 MB), .gpu-bundle/ray-b (39 MB)
# Device calls (kind nvidia-h200-x2), each under 10 minutes; the machine must stay warm between them:
#   1. bash .gpu-bundle/a/stash.sh                                              carry .gpu-bundle/a
#   2. bash bench/multi_gpu_visit.sh ray-stash                                  carry .gpu-bundle/ray-a
#   3. bash bench/multi_gpu_visit.sh ray-stash                                  carry .gpu-bundle/ray-b
#   4. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh one       carry .gpu-bundle/b
#      (one-serial: one GPU with evaluation.lookahead=0, what one was before the knob operator streamed)
#   5. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh two       carry .gpu-bundle/b
#   6. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh ray       carry .gpu-bundle/b
#   7. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh report    carry .gpu-bundle/b
# The agent operator, one step per GPU (no model reachable there: bench/scripted_agent.py plays a
# minimal agent that marks, benchmarks and submits; the report counts its re-judged commits):
#   8. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh agent-one   carry .gpu-bundle/b
#   9. source .gpu-bundle/b/setup.sh && bash bench/multi_gpu_visit.sh agent-two   carry .gpu-bundle/b
#      then report again
# Ray is installed from the stashed halves once (into /tmp/site-ray); without them the ray mode
# says so and the others run. RUN_SECONDS (default 420) is each run's length; runs, caches and
# logs stay in /tmp/avo-multi on the warm machine, their summaries and event logs go to $OUT.
# About 27 minutes of device time in all: each run is its own call, the three take 3 x ~7.5 min.
set -uo pipefail
mode=${1:-}
seconds=${RUN_SECONDS:-420}
work=/tmp/avo-multi
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
export PATH=$PATH:/usr/local/cuda/bin

install_ray() {  # the stashed halves -> /tmp/site-ray, once per machine
  if [ ! -f /tmp/site-ray/.done ] && ls /root/ray-wheels/ray.part.ab >/dev/null 2>&1; then
    cat /root/ray-wheels/ray.part.* > "/root/ray-wheels/$(cat /root/ray-wheels/ray.name)"
    python3 -m pip install -q --no-index --no-compile --target /tmp/site-ray --find-links /root/ray-wheels \
      "ray==2.60.0" && touch /tmp/site-ray/.done
  fi
  if [ -f /tmp/site-ray/.done ]; then export PYTHONPATH="${PYTHONPATH:-}:/tmp/site-ray"; fi
}

evolve() {  # evolve NAME [--set ...]: a knob-operator run (OPERATOR=agent: the agent's) on the mha suite, cold caches
  local name=$1; shift
  rm -rf "$work/$name" "$work/cache-$name"
  AVO_CACHE_DIR="$work/cache-$name" timeout --signal=INT "$seconds" python3 -m avo.evolve \
    --config configs/evolve_mha_sm90.yaml --operator "${OPERATOR:-knobs}" --candidates 500 \
    --set run_dir="$work/$name" --set archive="$work/$name/archive" --set evaluation.seeds=1 "$@" \
    2>&1 | grep -v Warning > "$work/$name.log"
  tail -40 "$work/$name.log" | tee "$out/$name.log"
  python3 -m avo.cluster overlaps "$work/$name/events.jsonl" | tail -5 | tee "$out/$name.overlaps.txt"
  cp "$work/$name/events.jsonl" "$out/$name.events.jsonl"
}

case "$mode" in
  ray-wheels)  # on the CPU machine: the Ray wheels for the device's Python 3.12, in two carries
    rm -rf .gpu-bundle/ray-a .gpu-bundle/ray-b /tmp/ray-wheels-312 && mkdir -p .gpu-bundle/ray-a .gpu-bundle/ray-b
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d /tmp/ray-wheels-312 "ray==2.60.0" || exit 1
    big=$(ls /tmp/ray-wheels-312/ray-*.whl)
    basename "$big" > .gpu-bundle/ray-a/ray.name
    split -b 42000000 "$big" .gpu-bundle/ray-a/ray.part.
    mv .gpu-bundle/ray-a/ray.part.ab .gpu-bundle/ray-b/ && rm "$big"
    mv /tmp/ray-wheels-312/*.whl .gpu-bundle/ray-b/
    du -sh .gpu-bundle/ray-a .gpu-bundle/ray-b ;;
  ray-stash)  # device call: keep a half on the machine's disk (whichever half is carried)
    mkdir -p /root/ray-wheels
    for half in .gpu-bundle/ray-a .gpu-bundle/ray-b; do [ -d "$half" ] && cp -f "$half"/* /root/ray-wheels/; done
    ls /root/ray-wheels ;;
  one)  # the baseline: one GPU (streaming: evaluation.lookahead candidates compile while it judges)
    install_ray
    nvidia-smi --query-gpu=index,name,clocks.sm,temperature.gpu --format=csv,noheader | tee "$out/gpus.txt"
    evolve one --set "evaluation.gpus=[0]" ;;
  one-serial)  # one GPU, nothing compiled ahead (lookahead 0): each candidate compiles, then is judged
    evolve one-serial --set "evaluation.gpus=[0]" --set evaluation.lookahead=0 ;;
  two)  # both GPUs of this host, one candidate each (map_per_gpu)
    install_ray
    evolve two --set "evaluation.gpus=[0, 1]" ;;
  ray)  # both GPUs through Ray: a Ray instance of this host's own (ray_address unset); streaming, each
       # candidate a compile task without a GPU, then a task with num_gpus=1 on the compile's node
    install_ray
    if ! python3 -c "import ray" 2>/dev/null; then
      echo "ray is not installed here: run ray-wheels on the CPU machine, then ray-stash (carry .gpu-bundle/ray-a)" \
        | tee "$out/ray.log"; exit 1
    fi
    evolve ray --set evaluation.backend=ray ;;
  agent-one|agent-two)  # the agent operator on GPU 0, or one step per GPU on both, with the scripted agent
    gpus="[0]"; [ "$mode" = agent-two ] && gpus="[0, 1]"
    python3 bench/scripted_agent.py 18431 "$work/$mode" > "$work/$mode.endpoint.log" 2>&1 &
    endpoint=$!
    OPERATOR=agent evolve "$mode" --set "evaluation.gpus=$gpus" --set endpoint.base_url=http://127.0.0.1:18431/v1 \
      --set endpoint.model=scripted --set endpoint.api_key_env=AVO_NO_KEY --set supervisor.stall_steps=100000
    kill "$endpoint"
    grep -c '"event": "rejudge"' "$work/$mode/events.jsonl" | sed 's/^/re-judged commits: /' | tee -a "$out/$mode.log" ;;
  report)
    install_ray
    python3 - "$work" <<'EOF' | tee "$out/table.txt"
import json, sys
from pathlib import Path

from avo.cluster import gpu_overlaps, read_intervals

work = Path(sys.argv[1])
rows, base = [], None
for name, gpus in (("one", "1 (local)"), ("one-serial", "1 (serial)"), ("two", "2 (local)"), ("ray", "2 (ray)"),
                   ("agent-one", "1 (agent)"), ("agent-two", "2 (agent)")):
    path = work / name / "events.jsonl"
    if not path.exists():
        rows.append(f"| {name:9s} | {gpus:9s} | not run |")
        base = None if name in ("one", "agent-one") else base
        continue
    events = [json.loads(line) for line in path.read_text().splitlines()]
    start = next(e["time"] for e in events if e["event"] == "start")
    done = [e for e in events if e["event"] == "candidate"]
    statuses = {s: sum(e["status"] == s for e in done) for s in sorted({e["status"] for e in done})}
    lost = sum(e["event"] == "lost" for e in events)
    # steady state: candidates recorded after the seed, over the time since the seed was recorded
    after = len(done) - 1
    span = done[-1]["time"] - done[0]["time"] if after > 0 else 0.0
    rate = after / span * 3600 if span else 0.0
    base = rate if name in ("one", "agent-one") else base
    speedup = f"{rate / base:.2f}x" if base else "-"
    intervals = read_intervals(path)
    on_gpu = [r for r in intervals if r.get("gpu") is not None]
    used = sorted({(r.get("host") or "", r["gpu"]) for r in on_gpu})
    overlaps = len(gpu_overlaps(intervals))
    rows.append(f"| {name:9s} | {gpus:9s} | {len(done):3d} ({after} after the seed in {span:5.0f} s) | "
                f"{rate:6.1f} | {speedup:6s} | {len(on_gpu)} stages on {len(used)} GPU(s): {overlaps} overlaps | "
                f"{lost} lost | {statuses} | {done[0]['time'] - start:4.0f} s |")
print("| run       | GPUs      | candidates | per hour | vs 1 GPU | per-GPU log | lost | statuses | to the seed |")
print("|-----------|-----------|------------|----------|----------|-------------|------|----------|-------------|")
print("\n".join(rows))
print("goal: two and ray >= 1.80x the one-GPU rate (agent-two: of agent-one), 0 overlaps everywhere")
EOF
    ;;
  *)
    echo "usage: bash bench/multi_gpu_visit.sh ray-wheels | ray-stash | one | one-serial | two | ray | agent-one | agent-two | report" >&2
    exit 2 ;;
esac
