#!/usr/bin/env bash
# Issue 14 on the GPU machine, from the repository root, results under $OUT:
#   bash bench/op_visit.sh
# 1. the op's GPU tests (forward, backward vs the fp32 reference, varlen, opcheck, torch.compile,
#    CUDA graphs) and the transformers model against sdpa;
# 2. the cold first call of a cached kernel in a new process (bench/first_call.py);
# 3. the per-call host overhead against a bare launch (bench/op_overhead.py), full and causal;
# then a short table. Parts are independent: one failing does not stop the next (no set -e).
set -u
OUT="${OUT:-$PWD/op_visit_out}"
mkdir -p "$OUT"
export AVO_CACHE_DIR="${AVO_CACHE_DIR:-$(mktemp -d /tmp/avo-op-cache.XXXX)}"  # a fresh cache (outside $OUT: thousands of files)
declare -A RC

part() {  # part NAME CMD...: run, tee its output to $OUT/NAME.txt, keep its exit status
    local name="$1"; shift
    echo "=== $name: $*" | tee "$OUT/$name.txt"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$OUT/$name.txt"
    RC[$name]=${PIPESTATUS[0]}
    echo "=== $name: exit ${RC[$name]} after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

part env bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"; git log -1 --format="%h %s" 2>/dev/null | cut -c1-100'

if ! python -c "import transformers" 2>/dev/null; then
    # no network on the device machine: install from a wheel directory carried along, if any
    wheels="${AVO_WHEELS:-shared/wheels}"
    if [ -d "$wheels" ]; then
        part install_transformers python -m pip install -q --no-index --find-links "$wheels" transformers
    else
        echo "transformers is not installed and no wheel dir ($wheels): its tests will skip" | tee "$OUT/install_transformers.txt"
    fi
fi

part gpu_tests python -m pytest -q -m gpu -rs tests/test_ops.py tests/test_integrations_transformers.py \
    --junitxml="$OUT/gpu_tests.xml"
part first_call python bench/first_call.py --runs 5 --out "$OUT/first_call.json"
part first_call_causal python bench/first_call.py --runs 5 --causal --out "$OUT/first_call_causal.json"
part op_overhead python bench/op_overhead.py --out "$OUT/op_overhead.json"
part op_overhead_causal python bench/op_overhead.py --causal --seqlen 1024 --out "$OUT/op_overhead_causal.json"

echo
echo "=== summary ($OUT)"
for name in "${!RC[@]}"; do echo "$name exit ${RC[$name]}"; done | sort
OUT="$OUT" python - <<'EOF'
import json, os, re, xml.etree.ElementTree as ET
out = os.environ["OUT"]

def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

try:
    suite = ET.parse(os.path.join(out, "gpu_tests.xml")).getroot().iter("testsuite").__next__()
    print(f"gpu tests: {suite.get('tests')} run, {suite.get('failures')} failed, {suite.get('errors')} errors, "
          f"{suite.get('skipped')} skipped")
except Exception as exc:
    print(f"gpu tests: no junit xml ({exc})")
for name in ("first_call.json", "first_call_causal.json"):
    r = load(name)
    if r:
        c = r["cold"]
        print(f"{name[:-5]:20s} import avo {c['import_avo_ms']:7.1f} ms  first call {c['first_call_ms']:7.1f} ms  "
              f"second {c['second_call_ms']:6.2f} ms  dsl_imported {c['dsl_imported']}  "
              f"dynamo_imported {c.get('dynamo_imported')}  (goal: import + first <= 500 ms)")
for name in ("op_overhead.json", "op_overhead_causal.json"):
    r = load(name)
    if r:
        cols = "  ".join(f"{k} {r[k]['median_us']:.1f}" for k in ("bare", "op", "attention", "inference", "grad", "sdpa"))
        print(f"{name[:-5]:20s} {r['shape']} us/call: {cols}  attention-bare {r['attention_minus_bare_us']:.1f} (goal <= 10)")
EOF
