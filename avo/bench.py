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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from avo.evaluate import geomean
from avo.lineage import Lineage, LineageError
from avo.suites import SuiteError, load_suite
from avo.timing import BASELINES
from avo.verify import LOGIT_PATTERNS
from avo.worker import run_isolated

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avo.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="best", help="'best' (the archive's newest committed node of the "
                        "suite, else of any suite), a node id, a .py file or a template")
    parser.add_argument("--suite", default="paper")
    parser.add_argument("--archive", default="archive")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--compare", help="a second kernel (same forms as --kernel) timed interleaved with the "
                        "first in the same process, e.g. the seed: --kernel best --compare v0000")
    parser.add_argument("--rounds", type=int, default=32,
                        help="timing rounds per config (each a sample of every kernel, in random order)")
    parser.add_argument("--inputs", default="normal", choices=("normal", *LOGIT_PATTERNS),
                        help="the timed inputs: N(0, 1), or logits shaped like trained models' (avo.verify."
                        "shape_logits: an attention sink, maxima rising toward the first or the last keys); a "
                        "kernel whose speed depends on the values shows it here")
    parser.add_argument("--crossover", action="store_true",
                        help="with --compare: the two kernels trade input and output buffers every other round "
                        "(an A/A check of where buffers sit; the judge does not)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", help="JSON file (default bench/results/<date>_<suite>.json)")
    args = parser.parse_args(argv)
    from avo import jit

    try:
        suite = load_suite(args.suite)
        lineage = Lineage.load(args.archive)
        source, label = _resolve(args.kernel, lineage, args.suite)
        compare, compare_label = _resolve(args.compare, lineage, args.suite) if args.compare else (None, None)
    except (SuiteError, LineageError, FileNotFoundError, jit.CompileError) as exc:
        print(f"avo.bench: {exc}", file=sys.stderr)
        return 2
    if args.crossover and not compare:
        print("avo.bench: --crossover trades buffers between two kernels: it needs --compare", file=sys.stderr)
        return 2
    if jit.current_arch() is None:
        print("avo.bench: no CUDA GPU here; benchmarks need an H100/H200 (sm_90a). "
              "`python -m avo.eval --compile-only` checks compilation without one.", file=sys.stderr)
        return 2
    baselines = [b for b in args.baselines.split(",") if b]
    versus = ", ".join(([compare_label] if compare_label else []) + baselines)
    shaped = "" if args.inputs == "normal" else f", {args.inputs} logits"
    print(f"benchmarking {label} ({source}) on {suite.name}{shaped}: {len(suite.timed)} configs vs {versus}",
          flush=True)
    result = run_isolated("avo.bench:_bench_task", {"source": str(source), "suite": args.suite,
                                                    "baselines": baselines, "rounds": args.rounds,
                                                    "compare": str(compare) if compare else None,
                                                    "inputs": args.inputs, "crossover": args.crossover},
                          timeout_s=args.timeout)
    if not result.ok:
        print(f"avo.bench: {result.summary()}\n{result.stderr_tail[-1500:]}", file=sys.stderr)
        return 1
    report = result.value
    report.update(kernel=label, source=str(source), command="python -m avo.bench " + " ".join(argv or sys.argv[1:]))
    if compare_label:
        report["compare"]["kernel"] = compare_label
    print(format_report(report))
    tail = "" if args.inputs == "normal" else f"_{args.inputs}"
    out = Path(args.out or f"bench/results/{report['date'][:10]}_{suite.name}_{label}{tail}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


def _resolve(what: str, lineage: Lineage, suite: str | None = None) -> tuple[Path, str]:
    """(source, label) for 'best', a node id, a .py file or a template name (a template directory:
    benchmarked with its seed table's knobs for each spec). 'best' is the newest committed node of
    `suite` where it has one (nodes committed on other suites were judged on other shapes: the
    hdim256 best may carry the d128 kernels of an older node), else the archive's newest."""
    from avo import jit
    from avo.eval import resolve_source

    if what == "best":
        best = lineage.best(suite) or lineage.best()
        if best is None:
            raise LineageError(f"{lineage.root} has no committed kernel; pass --kernel flash_fwd_sm90")
        return resolve_source(best.id, lineage)[0], best.id
    if (jit.TEMPLATES_DIR / what / "knobs.py").exists():
        return jit.TEMPLATES_DIR / what, what
    return resolve_source(what, lineage)[0], what


def format_report(report: dict) -> str:
    compare = report.get("compare")
    names = ["avo"] + (["compare"] if compare else []) + list(report["baselines"])
    inputs = report.get("inputs", "normal")
    lines = [f"{report['device']}, {report['date']}, torch {report['torch']}, cutlass-dsl {report['cutlass_dsl']}"
             + ("" if inputs == "normal" else f", {inputs} logits")
             + (", buffers crossed over every other round" if report.get("crossover") else ""),
             f"{'config':30s}" + "".join(f"{n:>9s}" for n in names)
             + "".join(f"{'/' + n:>9s}" for n in names[1:]) + "   (TFLOPS; ratios avo/other)"]
    for config, value in report["scores"].items():
        row = [value] + [report["baselines"][b].get(config) for b in report["baselines"]]
        if compare:
            row.insert(1, compare["scores"].get(config))
        ratios = [value / x if x else None for x in row[1:]]
        lines.append(f"{config:30s}" + "".join(f"{x:9.1f}" if x else f"{'-':>9s}" for x in row)
                     + "".join(f"{r:9.3f}" if r else f"{'-':>9s}" for r in ratios))
    geo = report["geomean"]
    lines.append(f"{'geomean':30s}" + "".join(f"{geo[n]:9.1f}" if geo.get(n) else f"{'-':>9s}" for n in names)
                 + "".join(f"{geo['avo'] / geo[b]:9.3f}" if geo.get(b) else f"{'-':>9s}" for b in names[1:]))
    if compare:
        lo, hi = compare["ratio_ci"]
        lines.append(f"{report['kernel']} / {compare['kernel']} in the same run (paired, speed): "
                     f"{compare['ratio']:.4f}x [{lo:.4f}, {hi:.4f}] 95% CI, {compare['pairs']} pairs, "
                     f"{compare['excluded']} excluded")
    for name, vs in report.get("vs_baselines", {}).items():
        lines.append(f"{report['kernel']} / {name} (paired, speed): {vs['ratio']:.4f}x "
                     f"[{vs['ratio_ci'][0]:.4f}, {vs['ratio_ci'][1]:.4f}]")
    if report.get("measurement"):
        m = report["measurement"]
        lines.append(f"rounds per config {m['rounds']}, timed outputs checked {m['checks']}, throttled rounds "
                     f"excluded {m['excluded_rounds']}, power-capped rounds {m['power_capped_rounds']}; "
                     f"telemetry {json.dumps(m['telemetry'])}")
    lines.append("compile seconds per specialization: " + ", ".join(
        f"{k} {v}" for k, v in report["compile_seconds"].items()))
    return "\n".join(lines)


def _bench_task(source, suite, baselines, rounds, compare=None, inputs="normal", crossover=False) -> dict:
    import cutlass
    import torch

    from avo import jit, stats, timing, verify
    from avo.telemetry import Telemetry

    suite_obj = load_suite(suite)

    def compiled(path):
        template = Path(path).name if Path(path).is_dir() else None
        if template:  # a source per spec (its default knobs): compiled side by side
            def one(spec):
                return jit.compile_kernel(jit.render(template, jit.load_knobs(template, spec=spec)), spec, trusted=True)

            with ThreadPoolExecutor(max_workers=min(8, len(suite_obj.specs))) as pool:
                kernels = dict(zip(suite_obj.specs, pool.map(one, suite_obj.specs), strict=True))
        else:
            built = jit.compile_many(path, suite_obj.specs, (jit.current_arch(),), run=True, trusted=True)
            for result in built.values():
                if isinstance(result, jit.CompileError):
                    raise result
            kernels = {spec: kernel for (spec, _arch), kernel in built.items()}
        for config in suite_obj.timed + suite_obj.correctness:
            result = verify.check(kernels[config.spec].fn, [config], seeds=1)
            if not result["ok"]:
                raise RuntimeError(f"{path} is wrong, refusing to time it: {result['diagnosis']}")
        return kernels

    kernels = compiled(source)
    compile_seconds = {spec.key(): k.report.get("compile_seconds") for spec, k in kernels.items()}
    checked = len(suite_obj.timed) + len(suite_obj.correctness)
    contenders = {"candidate": {s: k.fn for s, k in kernels.items()}}
    if compare:
        contenders["incumbent"] = {s: k.fn for s, k in compiled(compare).items()}
    m = timing.measure(list(suite_obj.timed), contenders, tuple(baselines), min_rounds=rounds, block=rounds,
                       telemetry=Telemetry(), pattern=inputs, crossover="incumbent" if crossover else None)
    tflops = m.tflops(list(suite_obj.timed))
    over = timing.above_peak(tflops["candidate"])
    if over:
        raise RuntimeError(over)
    configs = [c.name for c in suite_obj.timed]
    complete = [b for b in baselines if len(tflops.get(b, {})) == len(configs)]
    geo = {"avo": geomean(tflops["candidate"].values()), **{b: geomean(tflops[b].values()) for b in complete}}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cutlass_dsl": cutlass.__version__,
              "suite": suite, "inputs": inputs, "crossover": bool(crossover and compare), "scores": tflops["candidate"],
              "baselines": {b: tflops.get(b, {}) for b in baselines},
              "geomean": geo, "vs_baselines": m.versus(baselines), "correctness_checks": checked,
              "compile_seconds": compile_seconds, "configs": {c.name: c.as_dict() for c in suite_obj.timed},
              "measurement": m.summary(),
              "times_ms": m.times, "compare": None}
    if compare:
        est = stats.paired_ratio(m.pairs(), flags=m.flags)
        geo["compare"] = geomean(tflops["incumbent"].values())
        report["compare"] = {"scores": tflops["incumbent"], "geomean": geo["compare"], "ratio": est.ratio,
                             "ratio_ci": [est.lo, est.hi], "pairs": est.pairs, "excluded": est.excluded,
                             "per_config": est.per_config}
    return report


if __name__ == "__main__":
    sys.exit(main())
