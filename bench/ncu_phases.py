"""Where a kernel's K/V loop spends its time, phase by phase, from Nsight Compute's warp stall
samples per SASS instruction (`bash bench/fa4_gap_visit.sh ncu-src`, or any `ncu --section
SourceCounters` report exported with `ncu --import R --page source --csv --print-source sass`).

    python bench/ncu_phases.py ours.csv[.gz] fa4.csv[.gz] ...

The loop is the instructions executed at least half as often as the hottest one; its phases, in
SASS order: before the first HGMMA (waits, barriers), the GEMM issue up to the first FMNMX, the row
max up to the first FFMA, the exp2 work up to the wait for the PV GEMM (the first WARPGROUP op
after the FFMAs), and everything after that wait. For each: instructions, samples, and the top
stall reasons. Issue 13 (H100, 2026-11-23): at d64 ours and FA4 differ after the PV wait, where
ours holds 12% more samples (fixed-latency waits and the MIO queue at the MUFU ops).
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import sys

PHASES = ("before issue", "GEMM issue", "row max", "exp2 before PV wait", "after PV wait")


def read_rows(path: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of an `ncu --page source --csv` export; the first line names the kernel."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    return rows[1], rows[2:]


def opcode(source: str) -> str:
    words = source.split()
    if not words:
        return "?"
    return (words[1] if words[0].startswith("@") and len(words) > 1 else words[0]).split(".")[0]


def phases(header: list[str], rows: list[list[str]]) -> list[tuple[str, int, int, collections.Counter]]:
    """(phase, instructions, samples, stall reasons) for each phase of the hottest loop."""
    src, executed = header.index("Source"), header.index("Instructions Executed")
    samples = header.index("Warp Stall Sampling (All Samples)")
    reasons = [(h[len("stall_"):], i) for i, h in enumerate(header)
               if h.startswith("stall_") and "Not Issued" not in h]
    top = max(int(r[executed] or 0) for r in rows)
    loop = [r for r in rows if int(r[executed] or 0) >= top // 2]
    ops = [opcode(r[src]) for r in loop]

    def first(op: str, after: int = 0) -> int:
        return next(k for k in range(after, len(ops)) if ops[k] == op)

    ffma = first("FFMA")
    bounds = [0, first("HGMMA"), first("FMNMX"), ffma, first("WARPGROUP", ffma), len(loop)]
    out = []
    for name, a, b in zip(PHASES, bounds, bounds[1:], strict=False):
        stalls = collections.Counter()
        for r in loop[a:b]:
            for reason, i in reasons:
                stalls[reason] += int(r[i] or 0)
        out.append((name, b - a, sum(int(r[samples] or 0) for r in loop[a:b]), stalls))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", help="source-page CSV exports (optionally gzipped)")
    args = ap.parse_args(argv)
    for path in args.csv:
        header, rows = read_rows(path)
        total = sum(int(r[header.index("Warp Stall Sampling (All Samples)")] or 0) for r in rows)
        print(f"{path}: {total} samples")
        for name, n, count, stalls in phases(header, rows):
            top = ", ".join(f"{k} {v}" for k, v in stalls.most_common(4))
            print(f"  {name:20s} {n:4d} instructions {count:7d} samples  ({top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
