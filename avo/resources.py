"""Resource checks the CuTe DSL does not make at compile time, read from a compiled kernel.

A kernel that breaks one of these compiles cleanly and fails only on the GPU: too much shared
memory fails the launch; a setmaxnreg split larger than the CTA's launch allocation makes
setmaxnreg.inc wait forever (the Hopper hangs in knowledge/tried.md); TMEM that is over-allocated
stalls tcgen05.alloc, and TMEM not freed stalls the next CTA on the SM; named barriers used with
different thread counts hang or are undefined. Everything here reads the PTX text and the
compile report, so it runs without a GPU (the point for sm_100a, where no B200 is at hand).

    problems = check_report(kernel.report, "sm_100a", kernel.artifact_dir)   # [] when clean
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["LIMITS", "check_report", "ptx_facts"]

# Per-CTA limits. Shared memory: 227 KB opt-in dynamic per block on both (CUDA C++ Programming
# Guide, compute capabilities 9.0 and 10.0; the DSL's get_smem_capacity_in_bytes("sm_100") also
# says 232448). Registers: 64K 32-bit per SM and per CTA. TMEM: 512 columns x 128 lanes per SM
# (PTX ISA, tcgen05; the DSL's get_max_tmem_alloc_cols("sm_100") = 512).
LIMITS = {
    "sm_90a": {"smem_bytes": 232448, "registers": 65536, "tmem_columns": 0},
    "sm_100a": {"smem_bytes": 232448, "registers": 65536, "tmem_columns": 512},
}
_NAMED_BARRIERS = 16

_MOV_IMM = re.compile(r"mov\.[bsu]32\s+(%r\d+),\s*(-?\d+);")
_ALLOC = re.compile(r"tcgen05\.alloc\.cta_group::(\d)[^\[]*\[[^\]]*\],\s*(%r\d+|\d+);")
_DEALLOC = re.compile(r"tcgen05\.dealloc\.cta_group::(\d)[^;]*,\s*(%r\d+|\d+);")
_SETMAXNREG = re.compile(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+);")
_BAR = re.compile(r"\b(bar|barrier)(?:\.cta)?\.(sync|arrive|red\.\w+)(?:\.aligned)?\s+(%r\d+|\d+)(?:,\s*(%r\d+|\d+))?")
_MBAR_INIT = re.compile(r"mbarrier\.init(?:\.shared(?:::cta)?)?\.b64\s+\[[^\]]*\],\s*(%r\d+|\d+);")
_REQNTID = re.compile(r"\.reqntid\s+(\d+)(?:,\s*(\d+))?(?:,\s*(\d+))?")


def ptx_facts(ptx: str) -> dict:
    """Instruction families and the resource-relevant operands of a kernel's PTX. Operands held
    in registers are resolved through their `mov` of an immediate when it is unique (None if not)."""
    imm: dict[str, set] = {}
    for reg, value in _MOV_IMM.findall(ptx):
        imm.setdefault(reg, set()).add(int(value))

    def value(tok: str):
        if not tok.startswith("%"):
            return int(tok)
        vals = imm.get(tok, set())
        return next(iter(vals)) if len(vals) == 1 else None

    named = []
    for _, op, bar_id, count in _BAR.findall(ptx):
        named.append({"op": op, "id": value(bar_id), "count": value(count) if count else None})
    threads = None
    if m := _REQNTID.search(ptx):
        threads = 1
        for dim in m.groups():
            threads *= int(dim) if dim else 1
    return {
        "tcgen05_mma": len(re.findall(r"\btcgen05\.mma\b", ptx)),
        "tcgen05_ld": len(re.findall(r"\btcgen05\.ld\b", ptx)),
        "tcgen05_st": len(re.findall(r"\btcgen05\.st\b", ptx)),
        "tcgen05_commit": len(re.findall(r"\btcgen05\.commit\b", ptx)),
        "tcgen05_alloc": [{"cta_group": int(g), "columns": value(c)} for g, c in _ALLOC.findall(ptx)],
        "tcgen05_dealloc": [{"cta_group": int(g), "columns": value(c)} for g, c in _DEALLOC.findall(ptx)],
        "tcgen05_relinquish": len(re.findall(r"\btcgen05\.relinquish_alloc_permit\b", ptx)),
        "tma_loads": len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.shared::\w+\.global", ptx)),
        "tma_stores": len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.global\.shared", ptx)),
        "wgmma": len(re.findall(r"\bwgmma\.mma_async\b", ptx)),
        "setmaxnreg": [(kind, int(n)) for kind, n in _SETMAXNREG.findall(ptx)],
        "named_barriers": named,
        "mbarrier_init_counts": [value(c) for c in _MBAR_INIT.findall(ptx)],
        "reqntid": threads,
    }


def check_report(report: dict, arch: str, artifact_dir: str | Path | None = None) -> list[str]:
    """Problems (one line each) that would make the kernel fail or hang at launch; [] when clean.

    `report` is a compile report (avo.jit): registers, threads_per_block, static_smem_bytes,
    dynamic_smem_bytes or launches, and optionally register_split (setmaxnreg target of each warp
    group in order, declared by the kernel class). The PTX is read from `artifact_dir`/kernel.ptx,
    else from report["ptx_facts"] if the report carries them."""
    limits = LIMITS.get(arch)
    if limits is None:
        return [f"unknown arch {arch!r}: limits known for {', '.join(LIMITS)}"]
    facts = report.get("ptx_facts")
    if artifact_dir is not None and (Path(artifact_dir) / "kernel.ptx").exists():
        facts = ptx_facts((Path(artifact_dir) / "kernel.ptx").read_text())
    problems: list[str] = []
    threads = report.get("threads_per_block") or (facts or {}).get("reqntid") or _launch_threads(report)
    problems += _check_smem(report, limits)
    if threads:
        problems += _check_registers(report, threads, facts, limits)
    if facts is not None:
        problems += _check_tmem(facts, limits)
        problems += _check_barriers(facts, threads)
    return problems


def _launch_threads(report: dict) -> int | None:
    for launch in report.get("launches") or []:
        block = launch.get("block")
        if block:
            n = 1
            for b in block:
                n *= b
            return n
    return None


def _check_smem(report: dict, limits: dict) -> list[str]:
    dynamic = report.get("dynamic_smem_bytes")
    if dynamic is None:
        sizes = [x.get("smem") for x in report.get("launches") or [] if isinstance(x.get("smem"), int)]
        dynamic = max(sizes) if sizes else 0
    total = dynamic + report.get("static_smem_bytes", 0)
    if total > limits["smem_bytes"]:
        return [f"shared memory {total} B (dynamic {dynamic} + static {report.get('static_smem_bytes', 0)})"
                f" > the {limits['smem_bytes']} B a block may use: the launch would fail"]
    return []


def _check_registers(report: dict, threads: int, facts: dict | None, limits: dict) -> list[str]:
    problems = []
    regs = report.get("registers", 0)
    pool = regs * threads  # what the CTA gets at launch, the pool setmaxnreg redistributes
    if pool > limits["registers"]:
        problems.append(f"{regs} registers x {threads} threads = {pool} > {limits['registers']} per CTA")
    targets = [n for _, n in (facts or {}).get("setmaxnreg", [])]
    split = report.get("register_split")
    if split:
        groups = (threads + 127) // 128
        if len(split) != groups:
            problems.append(f"register_split declares {len(split)} warp groups; the CTA has {groups}")
        if 128 * sum(split) > pool:
            problems.append(
                f"setmaxnreg split {'+'.join(map(str, split))} = {sum(split)} x 128 threads needs"
                f" {128 * sum(split)} registers > the {pool} the CTA gets at launch ({regs} x {threads}):"
                " setmaxnreg.inc would wait forever")
        unknown = sorted(set(targets) - set(split))
        if unknown:
            problems.append(f"setmaxnreg targets {unknown} in the PTX are not in register_split {list(split)}")
    elif targets:
        # Without the declared split, the least any split with these targets can need: one warp
        # group at the largest target, every other one at the smallest.
        groups = max((threads + 127) // 128, 1)
        least = max(targets) + (groups - 1) * min(targets)
        if 128 * least > pool:
            problems.append(
                f"setmaxnreg: one warp group at {max(targets)} and {groups - 1} at {min(targets)} already"
                f" need {128 * least} registers > the {pool} the CTA gets at launch")
    kinds = {kind for kind, _ in (facts or {}).get("setmaxnreg", [])}
    if "inc" in kinds and "dec" not in kinds:
        problems.append("setmaxnreg.inc with no setmaxnreg.dec: nothing is given back, the inc waits forever")
    for kind, n in (facts or {}).get("setmaxnreg", []):
        if n % 8 or not 24 <= n <= 256:
            problems.append(f"setmaxnreg.{kind} {n}: must be a multiple of 8 in [24, 256]")
        elif kind == "inc" and regs and n < regs:
            problems.append(f"setmaxnreg.inc {n} is below the {regs} registers a thread starts with")
        elif kind == "dec" and regs and n > regs:
            problems.append(f"setmaxnreg.dec {n} is above the {regs} registers a thread starts with")
    return problems


def _check_tmem(facts: dict, limits: dict) -> list[str]:
    problems = []
    allocs, deallocs = facts.get("tcgen05_alloc", []), facts.get("tcgen05_dealloc", [])
    uses_tmem = facts.get("tcgen05_mma", 0) + facts.get("tcgen05_ld", 0) + facts.get("tcgen05_st", 0)
    if not limits["tmem_columns"]:
        if allocs or uses_tmem:
            problems.append("tcgen05 instructions in a kernel for an arch without tensor memory")
        return problems
    if uses_tmem and not allocs:
        problems.append("tcgen05 MMA/ld/st without a tcgen05.alloc: tensor memory is never allocated")
    cols = [a["columns"] for a in allocs]
    if None in cols:
        problems.append("a tcgen05.alloc column count is not a constant the PTX shows: cannot check it")
    known = [c for c in cols if c is not None]
    for c in known:
        if c < 32 or c & (c - 1):
            problems.append(f"tcgen05.alloc of {c} columns: must be a power of two >= 32")
    if sum(known) > limits["tmem_columns"]:
        problems.append(f"tcgen05.alloc of {sum(known)} columns in all > the {limits['tmem_columns']} of an SM")
    freed = [d["columns"] for d in deallocs]
    if Counter(known) != Counter(c for c in freed if c is not None) or len(allocs) != len(deallocs):
        problems.append(f"tensor memory allocated {cols} but freed {freed}: every tcgen05.alloc needs a"
                        " tcgen05.dealloc of the same size, or the next CTA on the SM stalls")
    if allocs and not facts.get("tcgen05_relinquish"):
        problems.append("no tcgen05.relinquish_alloc_permit: other CTAs on the SM cannot allocate")
    return problems


def _check_barriers(facts: dict, threads: int | None) -> list[str]:
    problems = []
    counts: dict[int, set] = {}
    for bar in facts.get("named_barriers", []):
        bar_id, count = bar["id"], bar["count"]
        if bar_id is not None and not 0 <= bar_id < _NAMED_BARRIERS:
            problems.append(f"named barrier id {bar_id} outside [0, {_NAMED_BARRIERS})")
        if count is not None:
            if count % 32:
                problems.append(f"named barrier {bar_id} with {count} threads: not a multiple of 32")
            if threads and count > threads:
                problems.append(f"named barrier {bar_id} waits for {count} threads; the CTA has {threads}")
            if bar_id is not None:
                counts.setdefault(bar_id, set()).add(count)
    for bar_id, seen in sorted(counts.items()):
        if len(seen) > 1:
            problems.append(f"named barrier {bar_id} used with different thread counts {sorted(seen)}")
    for count in facts.get("mbarrier_init_counts", []):
        if count is not None and (count < 1 or (threads and count > threads)):
            problems.append(f"mbarrier initialized with arrival count {count} (CTA of {threads} threads)")
    return problems
