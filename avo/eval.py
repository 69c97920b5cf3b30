"""`python -m avo.eval <kernel file | lineage node | template> [options]`: run the evaluation
cascade on one candidate, print the verdict and a per-config table, optionally record it.

    python -m avo.eval generated/flash_fwd_sm90_ab12.py --suite quick
    python -m avo.eval v0003 --archive archive --compile-only --arch sm_90a,sm_100a
    python -m avo.eval my_kernel.py --submit          # commit rule vs the incumbent, recorded

This is the command an external coding agent (or a person) uses to evolve by hand.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

from avo import jit, stats
from avo.evaluate import Verdict, evaluate
from avo.lineage import Candidate, Lineage, LineageError
from avo.stats import COMMIT_BAR
from avo.suites import SuiteError, load_suite

__all__ = ["main", "resolve_source"]


def resolve_source(what: str, lineage: Lineage) -> tuple[Path, str | None]:
    """(kernel file, node id or None) for a file path, a lineage node id or a template name."""
    path = Path(what)
    if path.suffix == ".py" and path.exists():
        return path, None
    if what in lineage:
        node = lineage.get(what)
        source = Path(node.source_path)
        source = source if source.is_absolute() else lineage.root / source
        if not source.exists():
            raise LineageError(f"node {what} has no stored source (status {node.status}); only committed "
                               "nodes keep theirs")
        return source, what
    if (jit.TEMPLATES_DIR / what / "knobs.py").exists():
        return jit.render(what), None
    raise FileNotFoundError(f"{what!r} is neither a kernel file, a node of {lineage.root}, nor a template")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avo.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", help="kernel .py file, lineage node id, or template name")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--arch", default="sm_90a", help="comma-separated: sm_90a,sm_100a")
    parser.add_argument("--compile-only", action="store_true", help="compile and report; run nothing")
    parser.add_argument("--archive", default="archive")
    parser.add_argument("--incumbent", default="best", help="'best' (the archive's newest commit on the suite, "
                        "else on any suite), 'none', a node or a file")
    parser.add_argument("--baselines", default="", help="comma-separated: fa4,cudnn,fa2")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole cascade")
    parser.add_argument("--submit", action="store_true", help="record the verdict in the archive's lineage")
    parser.add_argument("--json", help="write the verdict here")
    parser.add_argument("--parent", help="the node this kernel was edited from (default: the incumbent)")
    parser.add_argument("--author", default="",
                        help="who made the edit (a person, or an agent by name): on the node, operator 'manual'")
    parser.add_argument("--rationale", default="", help="what the edit means to try, recorded on the node")
    parser.add_argument("--record", metavar="VERDICT_JSON",
                        help="run nothing: record the verdict a --json run wrote elsewhere (e.g. on a GPU machine) "
                             "as this kernel's node, with --incumbent naming what it was judged against")
    args = parser.parse_args(argv)
    archs = tuple(a.strip() for a in args.arch.split(",") if a.strip())
    arch = archs[0] if archs else ""  # the first arch is the one measured and recorded
    try:
        lineage = Lineage.load(args.archive)
        load_suite(args.suite)
        source, node_id = resolve_source(args.kernel, lineage)
        incumbent, incumbent_id = _incumbent(args.incumbent, lineage, arch, args.suite)
        if args.parent:
            lineage.get(args.parent)  # an unknown id fails here, before anything runs
        _check_recordable(args, lineage, incumbent_id, arch)
    except (LineageError, SuiteError, FileNotFoundError, jit.CompileError) as exc:
        print(f"avo.eval: {exc}", file=sys.stderr)
        return 2
    # what a candidate must clear against this incumbent: more than the tolerance where it is below the best
    bar = lineage.commit_bar(incumbent_id, args.suite, arch)
    if args.record:
        return _record_elsewhere(args, lineage, source, incumbent_id, arch, bar)
    print(f"evaluating {source} on suite {args.suite} for {', '.join(archs)}"
          f"{' (compile-only)' if args.compile_only else ''}; incumbent: {incumbent_id or incumbent or 'none'}"
          + (f" (commit bar {bar:.4f}: it is {COMMIT_BAR / bar:.4f} of the best so far)" if bar > COMMIT_BAR else ""),
          flush=True)
    verdict = evaluate(source, suite=args.suite, archs=archs, incumbent=incumbent,
                       compile_only=True if args.compile_only else None, timeout_s=args.timeout,
                       seeds=args.seeds, baselines=tuple(b for b in args.baselines.split(",") if b), commit_bar=bar)
    print(format_verdict(verdict))
    if args.json:
        Path(args.json).write_text(json.dumps(verdict.as_dict(), indent=1))
    if args.submit:
        node = _record(lineage, source, verdict, parent=args.parent or incumbent_id, incumbent=incumbent_id,
                       author=args.author, rationale=args.rationale, suite=args.suite, arch=arch)
        print(f"recorded {node.id} as {node.status} in {lineage.root}")
    return 0 if verdict.status in ("committed", "screened") else 1


def _record_elsewhere(args, lineage: Lineage, source: Path, incumbent_id: str | None, arch: str, bar: float) -> int:
    """Record a verdict produced by `--json` on another machine. The source must be the one that was
    judged: the verdict carries no copy of it, so the node says where the verdict came from. A commit
    is decided again on its interval against this lineage's commit bar for the incumbent (`bar`)."""
    try:
        verdict = Verdict(**json.loads(Path(args.record).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        print(f"avo.eval: --record {args.record}: not a verdict written by --json ({exc})", file=sys.stderr)
        return 2
    names = {c.name for c in load_suite(args.suite).timed}
    if set(verdict.scores) - names:
        print(f"avo.eval: --record {args.record}: its configs are not suite {args.suite!r}'s; name the suite it "
              f"was judged on with --suite", file=sys.stderr)
        return 2
    _redecide(verdict, bar, incumbent_id)
    node = _record(lineage, source, verdict, parent=args.parent or incumbent_id, incumbent=incumbent_id,
                   author=args.author, rationale=args.rationale, extra={"recorded_from": Path(args.record).name},
                   suite=args.suite, arch=arch)
    print(f"recorded {node.id} as {node.status} in {lineage.root} (verdict from {args.record})")
    return 0


def _redecide(verdict: Verdict, bar: float, incumbent_id: str | None) -> None:
    """A commit measured elsewhere that this lineage's rule refuses (its lower bound below `bar` here, as
    the machine that measured it may have decided on the bare tolerance, or its interval wholly below
    1) becomes a rejection, with why. Never the other way:
    only a commit went through the sanitizer."""
    if verdict.status != "committed" or not verdict.ratio_ci:
        return
    lo, hi = verdict.ratio_ci
    verdict.commit_bar = max(bar, verdict.commit_bar or bar)
    interval = stats.RatioEstimate(ratio=verdict.ratio or lo, lo=lo, hi=hi, per_config={}, pairs=0, excluded=0)
    if stats.decide(interval, bar) == "commit":
        return
    verdict.status = "rejected"
    why = (f"its lower bound {lo:.4f} is below the commit bar {bar:.4f} (the incumbent {incumbent_id} is "
           f"{COMMIT_BAR / bar:.4f} of the best so far)" if lo < bar else
           f"its upper bound {hi:.4f} is below 1: shown slower than {incumbent_id}")
    verdict.diagnosis = f"{verdict.diagnosis}; recorded rejected: {why}"


def _check_recordable(args, lineage: Lineage, incumbent_id: str | None, arch: str) -> None:
    """A recorded commit becomes an incumbent, so it must have been judged against a node of this
    lineage: against a file or nothing it would start a chain of its own at speed 1.0 and step round
    the commit bar. Only the first commit of an arch may be judged against nothing."""
    committed = lineage.best(arch=arch)
    if (args.submit or args.record) and incumbent_id is None and committed is not None:
        raise LineageError(f"--{'submit' if args.submit else 'record'} judges against a node of the lineage "
                           f"({committed.id} is the newest commit for {arch}): use --incumbent best or a node id, "
                           f"not {args.incumbent!r}")


def _incumbent(choice: str, lineage: Lineage, arch: str, suite: str | None = None) -> tuple[str | None, str | None]:
    if choice == "none":
        return None, None
    if choice == "best":
        # the newest commit measured on this arch (an sm_90a node is no incumbent on a B200) and on
        # this suite where there is one: a node committed on another suite may carry this suite's
        # specs as an older node left them (the hdim256 best's d128 kernels)
        best = lineage.best(suite, arch) or lineage.best(arch=arch)
        return (str(resolve_source(best.id, lineage)[0]), best.id) if best else (None, None)
    source, node_id = resolve_source(choice, lineage)
    return str(source), node_id


def _record(lineage: Lineage, source: Path, verdict, parent: str | None, incumbent: str | None = None,
            author: str = "", rationale: str = "", extra: dict | None = None, suite: str = "",
            arch: str = "") -> Candidate:
    """Record a submitted kernel. Its family (the template it came from) is part of its identity: it
    descends from `parent` (the incumbent unless named) only when that is of its family, else from its
    family's newest committed node, else it starts a root of its own; what it was timed against and
    who made the edit stay in extra."""
    text = source.read_text()
    family = _family(source, text)
    incumbent = incumbent if incumbent is not None else parent
    if parent and lineage.get(parent).template != family:
        same = [c for c in lineage.nodes("committed") if family and c.template == family]
        parent = same[-1].id if same else None
    node = Candidate(id=lineage.new_id(), parents=[parent] if parent else [], operator="manual",
                     template=family, source_hash=jit.source_hash(text), source_path=str(source),
                     knobs=_rendered_knobs(family, text), suite=suite, arch=arch)
    verdict.apply_to(node)
    if rationale:
        node.rationale = rationale
    if author:
        node.extra["author"] = author
    node.extra.update(extra or {})
    if incumbent and incumbent != parent:
        node.extra["timed_against"] = incumbent
    # what its ratio is to: its speed in the lineage is that node's times the ratio (Lineage.speed)
    node.extra["judged_against"] = incumbent if getattr(verdict, "ratio", None) is not None else None
    return lineage.add(node, source_text=text if verdict.status == "committed" else None)


def _rendered_knobs(family: str | None, text: str) -> dict:
    """The knob table a source spells in its KNOBS / KNOBS_BY_SPEC literals, when the source is exactly
    its template rendered with that table (the knob operator may then re-render it with other
    knobs); {} for anything else: a hand edit must not be re-rendered from the template."""
    if family is None:
        return {}
    try:
        values = {}
        for stmt in ast.parse(text).body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                if stmt.targets[0].id == "KNOBS":
                    values["default"] = _dict_call(stmt.value)
                elif stmt.targets[0].id == "KNOBS_BY_SPEC":
                    values["rows"] = [[_dict_call(row.elts[0]), _dict_call(row.elts[1])] for row in stmt.value.elts]
        if set(values) != {"default", "rows"}:
            return {}
        table = jit.load_table(family, values)
        if jit.render(family, table).read_text() != text:
            return {}
        return table.as_dict() if hasattr(table, "as_dict") else values
    except (SyntaxError, ValueError, AttributeError, IndexError, TypeError):
        return {}


def _dict_call(node: ast.AST) -> dict:
    """`dict(a=1, b=(2, 3))` with literal values -> {"a": 1, "b": (2, 3)}; anything else raises."""
    is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    if not (is_call and node.func.id == "dict" and not node.args):
        raise ValueError("not a dict(...) of literals")
    return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}


def _family(source: Path, text: str) -> str | None:
    """The template a kernel was rendered from: the header every template writes ("Rendered from
    dsl_templates/<family>"), kept by hand edits, else generated/<family>_<sha12>.py's name."""
    match = re.search(r"Rendered from dsl_templates/(\w+)", text)
    name = match.group(1) if match else re.sub(r"_[0-9a-f]{12}$", "", source.stem)
    return name if (jit.TEMPLATES_DIR / name / "knobs.py").exists() else None


def format_verdict(verdict) -> str:
    lines = [f"verdict: {verdict.status.upper()} at stage {verdict.stage}", f"  {verdict.diagnosis}"]
    for arch, per_spec in verdict.compile_reports.items():
        for spec_key, r in per_spec.items():
            smem = r.get("dynamic_smem_bytes")
            mma = f"tcgen05.mma {r.get('ptx_tcgen05_mma')}" if arch == "sm_100a" else f"wgmma {r.get('ptx_wgmma')}"
            problems = "; ".join(r.get("resource_problems") or []) or "resources ok"
            lines.append(f"  compile {arch} {spec_key}: {r.get('registers')} regs, "
                         f"stack {r.get('stack_frame_bytes')} B, smem {f'{smem} B' if smem else '-'}, "
                         f"{r.get('threads_per_block')} threads, {mma}, {problems}, {r.get('compile_seconds')} s")
    if verdict.scores:
        names = ["candidate"] + (["incumbent"] if verdict.incumbent_scores else []) + list(verdict.baselines)
        paired = verdict.estimate.get("per_config", {}) if verdict.estimate else {}
        lines.append("  " + f"{'config':34s}" + "".join(f"{n:>11s}" for n in names) + "   (TFLOPS)"
                     + ("   paired vs incumbent [95% CI]" if paired else ""))
        for config, value in verdict.scores.items():
            row = [value, verdict.incumbent_scores.get(config)] if verdict.incumbent_scores else [value]
            row += [verdict.baselines[b].get(config) for b in verdict.baselines]
            p = paired.get(config)
            lines.append("  " + f"{config:34s}" + "".join(f"{x:11.1f}" if x else f"{'-':>11s}" for x in row)
                         + (f"   {p['ratio']:.4f} [{p['lo']:.4f}, {p['hi']:.4f}]" if p else ""))
    if verdict.ratio is not None:
        lo, hi = verdict.ratio_ci
        lines.append(f"  speed vs incumbent (paired): {verdict.ratio:.4f}x [{lo:.4f}, {hi:.4f}] 95% CI, "
                     f"{verdict.estimate.get('pairs')} pairs, {verdict.estimate.get('excluded')} excluded; "
                     f"gain: {verdict.gain}")
    for name, vs in verdict.vs_baselines.items():
        lo, hi = vs["ratio_ci"]
        lines.append(f"  speed vs {name} (paired): {vs['ratio']:.4f}x [{lo:.4f}, {hi:.4f}]")
    if verdict.patterns:
        lines.append("  speed vs incumbent on shaped logits (paired): " + ", ".join(
            f"{name} {p['ratio']:.4f}x [{p['ratio_ci'][0]:.4f}, {p['ratio_ci'][1]:.4f}]"
            for name, p in verdict.patterns.items()))
    if verdict.measurement:
        m = verdict.measurement
        lines.append(f"  timing: rounds {m.get('rounds')}, timed outputs checked {m.get('checks')}, throttled rounds "
                     f"excluded {m.get('excluded_rounds')}, telemetry {json.dumps(m.get('telemetry'))}")
    if verdict.sanitizer:
        lines.append(f"  compute-sanitizer: {json.dumps(verdict.sanitizer)}")
    lines.append(f"  seconds: {json.dumps(verdict.timing)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
