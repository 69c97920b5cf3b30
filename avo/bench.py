"""`python -m avo.bench`: a kernel against FA4, cuDNN and FA2 on a suite, measured side by side in
one process on this GPU, printed as a table and written as JSON (what BENCHMARKS.md quotes).

    python -m avo.bench --suite paper                     # the archive's best kernel
    python -m avo.bench --kernel flash_fwd_sm90 --suite mha --out bench/results/seed_mha.json

The kernel is checked for correctness (fresh seeds, every timed shape) before it is timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from avo.evaluate import geomean
from avo.lineage import Lineage, LineageError
from avo.suites import SuiteError, load_suite
from avo.timing import BASELINES
from avo.worker import run_isolated

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avo.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="best", help="'best' (archive), a node id, a .py file or a template")
    parser.add_argument("--suite", default="paper")
    parser.add_argument("--archive", default="archive")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", help="JSON file (default bench/results/<date>_<suite>.json)")
    args = parser.parse_args(argv)
    from avo import jit
    from avo.eval import resolve_source

    try:
        suite = load_suite(args.suite)
        lineage = Lineage.load(args.archive)
        if args.kernel == "best":
            best = lineage.best()
            if best is None:
                raise LineageError(f"{args.archive} has no committed kernel; pass --kernel flash_fwd_sm90")
            source, label = resolve_source(best.id, lineage)[0], best.id
        elif (jit.TEMPLATES_DIR / args.kernel / "knobs.py").exists():
            # a template is benchmarked with its default knobs for each head_dim (its DEFAULTS table)
            source, label = jit.TEMPLATES_DIR / args.kernel, args.kernel
        else:
            source, label = resolve_source(args.kernel, lineage)[0], args.kernel
    except (SuiteError, LineageError, FileNotFoundError, jit.CompileError) as exc:
        print(f"avo.bench: {exc}", file=sys.stderr)
        return 2
    if jit.current_arch() is None:
        print("avo.bench: no CUDA GPU here; benchmarks need an H100/H200 (sm_90a). "
              "`python -m avo.eval --compile-only` checks compilation without one.", file=sys.stderr)
        return 2
    baselines = [b for b in args.baselines.split(",") if b]
    print(f"benchmarking {label} ({source}) on {suite.name}: {len(suite.timed)} configs vs {', '.join(baselines)}",
          flush=True)
    result = run_isolated("avo.bench:_bench_task", {"source": str(source), "suite": args.suite,
                                                    "baselines": baselines, "rounds": args.rounds},
                          timeout_s=args.timeout)
    if not result.ok:
        print(f"avo.bench: {result.summary()}\n{result.stderr_tail[-1500:]}", file=sys.stderr)
        return 1
    report = result.value
    report.update(kernel=label, source=str(source), command="python -m avo.bench " + " ".join(argv or sys.argv[1:]))
    print(format_report(report))
    out = Path(args.out or f"bench/results/{report['date'][:10]}_{suite.name}_{label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


def format_report(report: dict) -> str:
    names = ["avo"] + list(report["baselines"])
    lines = [f"{report['device']}, {report['date']}, torch {report['torch']}, cutlass-dsl {report['cutlass_dsl']}",
             f"{'config':30s}" + "".join(f"{n:>9s}" for n in names)
             + "".join(f"{'/' + n:>9s}" for n in report["baselines"]) + "   (TFLOPS; ratios avo/baseline)"]
    for config, value in report["scores"].items():
        row = [value] + [report["baselines"][b].get(config) for b in report["baselines"]]
        ratios = [value / x if x else None for x in row[1:]]
        lines.append(f"{config:30s}" + "".join(f"{x:9.1f}" if x else f"{'-':>9s}" for x in row)
                     + "".join(f"{r:9.3f}" if r else f"{'-':>9s}" for r in ratios))
    geo = report["geomean"]
    lines.append(f"{'geomean':30s}" + "".join(f"{geo[n]:9.1f}" if geo.get(n) else f"{'-':>9s}" for n in names)
                 + "".join(f"{geo['avo'] / geo[b]:9.3f}" if geo.get(b) else f"{'-':>9s}" for b in report["baselines"]))
    lines.append("compile seconds per specialization: " + ", ".join(
        f"{k} {v}" for k, v in report["compile_seconds"].items()))
    return "\n".join(lines)


def _bench_task(source, suite, baselines, rounds) -> dict:
    import cutlass
    import torch

    from avo import jit, verify
    from avo.evaluate import _benchmark

    suite_obj = load_suite(suite)
    kernels, compile_seconds = {}, {}
    template = Path(source).name if Path(source).is_dir() else None
    for spec in suite_obj.specs:
        spec_source = jit.render(template, jit.load_knobs(template, spec=spec)) if template else source
        kernel = jit.compile_kernel(spec_source, spec)
        kernels[spec] = kernel
        compile_seconds[spec.key()] = kernel.report.get("compile_seconds")
    checked = 0
    for config in suite_obj.timed + suite_obj.correctness:
        result = verify.check(kernels[config.spec].fn, [config], seeds=1)
        if not result["ok"]:
            raise RuntimeError(f"kernel is wrong, refusing to time it: {result['diagnosis']}")
        checked += 1
    bench = _benchmark(kernels, {}, suite_obj.timed, rounds, tuple(baselines))
    if bench["over_peak"]:
        raise RuntimeError(bench["over_peak"])
    configs = list(bench["scores"])
    geo = {"avo": geomean(bench["scores"].values())}
    for name, per_config in bench["baselines"].items():
        if len(per_config) == len(configs):
            geo[name] = geomean(per_config.values())
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cutlass_dsl": cutlass.__version__,
            "suite": suite, "scores": bench["scores"], "baselines": bench["baselines"], "geomean": geo,
            "correctness_checks": checked, "compile_seconds": compile_seconds,
            "configs": {c.name: c.as_dict() for c in suite_obj.timed}}


if __name__ == "__main__":
    sys.exit(main())
