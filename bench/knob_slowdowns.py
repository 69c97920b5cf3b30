"""Known slowdowns for the A/B test of the paired estimator (issue 11): several knob variants of the
seed timed interleaved with it in one process, each one's paired speed ratio vs the seed with its
95% interval. A variant that reads ~2% slower here is the "known small slowdown" avo.eval must then
detect as slower, run after run.

    python bench/knob_slowdowns.py [--suite mha] [--rounds 32] [--out FILE]
        [--variant NAME='{"tile_n": 176}' ...] [--file NAME=path/to/kernel.py ...] [--per-config]

--variant replaces the built-in variants (knobs over each spec's defaults); --file adds a kernel
source as it is. Sources are rendered per spec of the suite, so a multi-spec suite (paper) gets
each spec's default knobs (pack_gqa for GQA, the CTA order for causal) under the variant's.
"""

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
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
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON knobs")
    ap.add_argument("--file", action="append", default=[], help="NAME=kernel source file")
    ap.add_argument("--per-config", action="store_true", help="print each config's ratio too")
    ap.add_argument("--baselines", default="", help="comma-separated, e.g. fa4,cudnn: timed in the same rounds")
    args = ap.parse_args()
    suite = load_suite(args.suite)
    variants = dict(VARIANTS) if not (args.variant or args.file) else {}
    for item in args.variant:
        name, _, text = item.partition("=")
        variants[name] = json.loads(text)
    arch = (jit.current_arch(),)
    kernels = {}

    def build(name, per_spec_source):
        def one(spec):  # each spec compiles in its own sandboxed process: side by side
            return next(iter(jit.compile_many(per_spec_source(spec), [spec], arch, run=True, trusted=True).values()))

        with ThreadPoolExecutor(max_workers=min(8, len(suite.specs))) as pool:
            results = dict(zip(suite.specs, pool.map(one, suite.specs), strict=True))
        bad = {s.key(): r for s, r in results.items() if isinstance(r, jit.CompileError)}
        if bad:
            print(f"{name}: does not compile, skipped ({bad})")
            return
        kernels[name] = {spec: r.fn for spec, r in results.items()}

    build("seed", lambda spec: jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90", spec=spec)))
    for name, knobs in variants.items():
        build(name, lambda spec, knobs=knobs: jit.render("flash_fwd_sm90",
                                                         jit.load_knobs("flash_fwd_sm90", knobs, spec=spec)))
    for item in args.file:
        name, _, path = item.partition("=")
        variants[name] = {"file": path}
        build(name, lambda spec, path=path: Path(path))
    baselines = tuple(filter(None, args.baselines.split(",")))
    m = timing.measure(list(suite.timed), kernels, baselines, min_rounds=args.rounds, block=args.rounds, check=None,
                       telemetry=Telemetry())
    versus = {name: m.versus(baselines, name=name) for name in kernels} if baselines else {}
    if args.per_config and "fa4" in baselines:
        for name in kernels:
            est = stats.relative_ratio({c: t["fa4"] for c, t in m.times.items()},
                                       {c: t[name] for c, t in m.times.items()}, flags=m.flags)
            print(f"{name} vs fa4 per config: " + ", ".join(
                f"{c} {r['ratio']:.3f}" for c, r in est.per_config.items()))
    for name, vs in versus.items():
        print(f"{name:14s} " + "  ".join(f"vs {b} {v['ratio']:.4f} [{v['ratio_ci'][0]:.4f}, {v['ratio_ci'][1]:.4f}]"
                                          for b, v in vs.items()))
    rows = {}
    for name in kernels:
        if name == "seed":
            continue
        est = stats.relative_ratio({c: t["seed"] for c, t in m.times.items()},
                                   {c: t[name] for c, t in m.times.items()}, flags=m.flags)
        rows[name] = {"knobs": variants[name], "ratio": est.ratio, "ratio_ci": [est.lo, est.hi],
                      "per_config": est.per_config}
        print(f"{name:14s} speed vs seed {est.format()}")
        if args.per_config:
            for config, r in est.per_config.items():
                print(f"    {config:26s} {r['ratio']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]")
    if args.out:
        Path(args.out).write_text(json.dumps({"suite": args.suite, "rounds": args.rounds, "variants": rows,
                                              "versus": versus, "telemetry": m.telemetry}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
