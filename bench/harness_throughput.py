"""Harness throughput (issue 4): candidates per GPU-hour through the whole cascade on a suite,
with warm compile caches, as evolution sees them once a knob set or an edit has been compiled.

    python bench/harness_throughput.py [--suite quick] [--count 12] [--archive archive]

Takes the knob assignments recorded in the lineage (distinct ones, up to --count), renders them,
compiles each for the suite first (the warm-up, not timed), then runs the full cascade (compile
from cache, correctness, paired adaptive timing vs the seed with timed outputs checked, sanitizer
on a commit) on each and prints the rate.
"""

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo import jit  # noqa: E402
from avo.evaluate import evaluate  # noqa: E402
from avo.lineage import Lineage  # noqa: E402
from avo.suites import load_suite  # noqa: E402


def _warm(job) -> None:
    source, spec = job
    try:
        jit.compile_kernel(source, spec, run=False)
    except jit.CompileError:
        pass  # the cascade records it


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--count", type=int, default=12)
    ap.add_argument("--archive", default="archive")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suite = load_suite(args.suite)
    seen, sources = set(), []
    for node in Lineage.load(args.archive).nodes():
        key = json.dumps(node.knobs, sort_keys=True)
        if node.template and node.knobs and key not in seen:
            seen.add(key)
            sources.append(jit.render(node.template, jit.load_table(node.template, node.knobs)))
    sources = sources[: args.count]
    seed = jit.render("flash_fwd_sm90")  # the seed table: each spec its own knobs
    # warm-up, not timed: fill the disk cache, compiles spread over the host's cores
    jobs = [(str(source), spec) for source in [seed, *sources] for spec in suite.specs]
    with ProcessPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2) - 1))) as pool:
        list(pool.map(_warm, jobs))
    started = time.monotonic()
    verdicts = [evaluate(s, suite=args.suite, incumbent=seed, seeds=1, timeout_s=300) for s in sources]
    seconds = time.monotonic() - started
    rate = 3600 * len(sources) / seconds
    rows = [{"source": Path(s).name, "status": v.status, "seconds": v.timing.get("total"), "ratio": v.ratio}
            for s, v in zip(sources, verdicts, strict=True)]
    report = {"suite": args.suite, "candidates": len(sources), "seconds": round(seconds, 1),
              "candidates_per_hour": round(rate, 1), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    for row in rows:
        print(f"{row['source']:36s} {row['status']:18s} {row['seconds']:7.1f} s  ratio {row['ratio']}")
    if jit.current_arch() is None:
        print(f"no GPU: {len(sources)} candidates were only screened (compile from cache), not a harness rate")
        return 1
    print(f"{len(sources)} candidates through the whole cascade in {seconds:.0f} s: {rate:.0f} per GPU-hour "
          f"(suite {args.suite}, warm compile caches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
