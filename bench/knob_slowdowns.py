"""Known slowdowns for the A/B test of the paired estimator (issue 11): several knob variants of the
seed timed interleaved with it in one process, each one's paired speed ratio vs the seed with its
95% interval. A variant that reads ~2% slower here is the "known small slowdown" avo.eval must then
detect as slower, run after run.

    python bench/knob_slowdowns.py [--suite mha] [--rounds 32] [--out FILE]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo import jit, stats, timing  # noqa: E402
from avo.suites import load_suite  # noqa: E402
from avo.telemetry import Telemetry  # noqa: E402

VARIANTS = {
    "no_pingpong": {"pingpong": False},
    "tile_n_96": {"tile_n": 96},
    "tile_n_80": {"tile_n": 80},
    "mma_regs_216": {"mma_regs": 216},
    "one_stage": {"num_stages": 1},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="mha")
    ap.add_argument("--rounds", type=int, default=32)
    ap.add_argument("--out")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    spec = suite.specs[0]
    sources = {"seed": jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90", spec=spec))}
    for name, knobs in VARIANTS.items():
        sources[name] = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90", knobs, spec=spec))
    kernels = {}
    for name, source in sources.items():
        built = jit.compile_many(source, suite.specs, (jit.current_arch(),), run=True, trusted=True)
        if any(isinstance(k, jit.CompileError) for k in built.values()):
            print(f"{name}: does not compile, skipped")
            continue
        kernels[name] = {spec: k.fn for (spec, _), k in built.items()}
    m = timing.measure(list(suite.timed), kernels, min_rounds=args.rounds, block=args.rounds, check=None,
                       telemetry=Telemetry())
    rows = {}
    for name in kernels:
        if name == "seed":
            continue
        est = stats.relative_ratio({c: t["seed"] for c, t in m.times.items()},
                                   {c: t[name] for c, t in m.times.items()}, flags=m.flags)
        rows[name] = {"knobs": VARIANTS[name], "ratio": est.ratio, "ratio_ci": [est.lo, est.hi]}
        print(f"{name:14s} speed vs seed {est.format()}")
    if args.out:
        Path(args.out).write_text(json.dumps({"suite": args.suite, "rounds": args.rounds, "variants": rows,
                                              "telemetry": m.telemetry}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
