"""Our kernel and FA4's Hopper forward for one spec, side by side in SASS: opcode counts of the
whole kernel and of the main loop (the longest loop with HGMMAs), the opcodes that differ first.
Compiles both on this machine (no GPU needed); FA4 comes from the `baselines` extra.

    python bench/sass_vs_fa4.py KERNEL.py --suite hdim64 [--spec 0] [--fa4-lse]

Issue 13: at parity with FA4 the gap is in issue slots and per-tile fixed costs (a mask applied to
full blocks, a mbarrier poll that sleeps early), each worth 0.1-0.5%; this diff named them where
ncu's stall reasons did not (knowledge/tried.md, "SASS diff d64 against FA4"). FA4 as the baseline
calls it writes no LSE; --fa4-lse compiles the variant that does (ours always writes LSE).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo.tools import find_binary, loop_body, parse_sass, sass_loops  # noqa: E402


def opcode_counts(sass_text: str) -> tuple[Counter, Counter]:
    """(whole kernel, main loop) opcode counts, modifiers stripped (SHFL.BFLY -> SHFL). The main
    loop is the shortest loop that issues HGMMAs and never sleeps: ptxas puts the slow path of an
    mbarrier wait (NANOSLEEP, then a branch back) at the end of the kernel, and those backward
    branches span most of it; a causal kernel's masked loop is longer than its steady state. If
    every such loop sleeps, the shortest; an empty Counter when no loop issues HGMMAs."""
    instrs = parse_sass(sass_text)
    whole = Counter(i["op"].split(".")[0] for i in instrs)
    bodies = []
    for loop in reversed(sass_loops(instrs)):  # shortest first
        body = Counter(i["op"].split(".")[0] for i in loop_body(instrs, loop))
        if body["HGMMA"]:
            bodies.append(body)
    # where ptxas keeps a wait's slow path inside the loop (d256), every loop sleeps: the shortest then
    sleepless = [b for b in bodies if not b["NANOSLEEP"]]
    return whole, (sleepless or bodies or [Counter()])[0]


def diff_rows(ours: tuple[Counter, Counter], theirs: tuple[Counter, Counter], min_rel: float = 0.1) -> list[tuple]:
    """(opcode, ours loop, theirs loop, ours total, theirs total) for every opcode whose loop or
    total count differs by more than `min_rel` (or appears on one side only), largest gap first."""
    rows = []
    for op in set(ours[0]) | set(theirs[0]):
        counts = (ours[1][op], theirs[1][op], ours[0][op], theirs[0][op])
        gaps = [abs(a - b) / max(a, b, 1) for a, b in ((counts[0], counts[1]), (counts[2], counts[3]))]
        if max(gaps) > min_rel:
            rows.append((op, *counts))
    return sorted(rows, key=lambda r: (-abs(r[1] - r[2]), -abs(r[3] - r[4]), r[0]))


def _sass(cubin: Path) -> str:
    tool = find_binary("cuobjdump") or find_binary("nvdisasm")
    if tool is None:
        raise SystemExit("sass_vs_fa4: no cuobjdump or nvdisasm (pip install nvidia-cuda-cuobjdump)")
    flag = "-sass" if Path(tool).name.startswith("cuobjdump") else "-c"
    return subprocess.run([tool, flag, str(cubin)], capture_output=True, text=True, check=True).stdout


def _fa4_cubin(spec, batch: int, seqlen: int, heads_kv: int, lse: bool, dump: Path) -> Path:
    """FA4's forward for `spec` compiled under FakeTensorMode for sm_90a; the cubin it kept."""
    os.environ.update(CUTE_DSL_KEEP="ptx,cubin", CUTE_DSL_DUMP_DIR=str(dump))
    try:
        import triton  # noqa: F401  (quack's autotuner imports it)
    except ImportError:  # FA4's forward does not autotune: a no-op stand-in is enough to import it
        stub = types.ModuleType("quack.autotuner")
        stub.autotune = lambda *a, **k: (lambda f: f)
        stub.AutotuneConfig = type("AutotuneConfig", (), {"__init__": lambda self, *a, **k: None})
        sys.modules["quack.autotuner"] = stub
    import torch
    from flash_attn.cute import flash_attn_func
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = spec.torch_dtype
    heads_q = heads_kv * spec.qhead_per_kvhead
    with FakeTensorMode():
        q = torch.empty(batch, seqlen, heads_q, spec.head_dim, dtype=dtype, device="cuda")
        k = torch.empty(batch, seqlen, heads_kv, spec.head_dim, dtype=dtype, device="cuda")
        flash_attn_func(q, k, torch.empty_like(k), causal=spec.causal, return_lse=lse)
    cubins = sorted(dump.rglob("*.cubin"), key=lambda p: p.stat().st_mtime)
    if not cubins:
        raise SystemExit(f"sass_vs_fa4: FA4 compiled but kept no cubin under {dump}")
    return cubins[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", help="our kernel .py (compiled here) or its .cubin")
    ap.add_argument("--suite", default="paper", help="the spec and shape come from this suite's timed configs")
    ap.add_argument("--spec", type=int, default=0, help="which of the suite's specs (index)")
    ap.add_argument("--fa4-lse", action="store_true", help="FA4 writing LSE (as ours does)")
    ap.add_argument("--min-rel", type=float, default=0.1, help="list opcodes differing by more than this share")
    args = ap.parse_args(argv)
    # before the DSL is imported: it reads its target once (no GPU here to ask)
    os.environ.update(FLASH_ATTENTION_ARCH="sm_90", CUTE_DSL_ARCH="sm_90a", FLASH_ATTENTION_NUM_SMS="132")

    from avo import jit
    from avo.suites import load_suite

    suite = load_suite(args.suite)
    spec = suite.specs[args.spec]
    config = next(c for c in suite.timed if c.spec == spec)
    ours = Path(args.kernel)
    if ours.suffix != ".cubin":
        ours = jit.compile_kernel(ours, spec, arch="sm_90a", run=False).artifact_dir / "kernel.cubin"
    with tempfile.TemporaryDirectory() as tmp:
        fa4 = _fa4_cubin(spec, config.batch, config.seqlen_q, config.heads_kv, args.fa4_lse, Path(tmp))
        theirs = opcode_counts(_sass(fa4))
    mine = opcode_counts(_sass(ours))
    print(f"{spec} ({config.name}); FA4 {'with' if args.fa4_lse else 'without'} LSE")
    print(f"instructions: ours loop {sum(mine[1].values())} total {sum(mine[0].values())}; "
          f"FA4 loop {sum(theirs[1].values())} total {sum(theirs[0].values())}")
    print(f"{'opcode':12s} {'ours loop':>9s} {'FA4 loop':>9s} {'ours total':>10s} {'FA4 total':>10s}")
    for op, a, b, c, d in diff_rows(mine, theirs, args.min_rel):
        print(f"{op:12s} {a:9d} {b:9d} {c:10d} {d:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
