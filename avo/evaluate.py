"""The evaluation cascade: what decides whether a candidate enters the lineage, and how.

    static -> compile (sandboxed, every requested arch) -> judge: correctness -> timing
           -> sanitizer (a commit-to-be only) -> the commit decision

Who runs what (README, "What the judge guarantees"):
- static checks run here, on the text: an allow-list, a fast first filter (avo.static_check);
- compiling executes the candidate's Python, so it happens in the sandbox (avo.sandbox via
  avo.jit): no network, a read-only filesystem but for its output, no GPU, a scrubbed environment;
  what comes back is an object file, checked (avo.hostobj) and linked here, and a cubin;
- the judge (avo.judge) is a fresh worker process that loads those artifacts only, never a kernel
  module; its verdict comes back on a pipe only it holds (avo.worker). A hang is a `timeout`, a
  segfault or CUDA error is `crashed`, and the next candidate runs normally;
- compute-sanitizer (racecheck, synccheck, memcheck, initcheck) watches one small call of each
  specialization of a candidate about to be committed, once per distinct compiled source.

Fitness follows AVO: TFLOPS per timed config (all zero on any failure), geomean as the scalar. The
commit decision is the paired estimator's (avo.stats): candidate and incumbent timed in
alternating samples, the geometric-mean speed ratio with a 95% confidence interval; commit when
its lower bound clears the commit bar and its upper bound reaches 1 (an interval wholly below 1
shows a loss, however small: rejected), a gain when the lower bound clears 1. The bar is a ratio to the
incumbent: 1 - COMMIT_TOLERANCE times how far the best so far is above the incumbent
(avo.lineage.Lineage.commit_bar). The tolerance lets a tie within noise commit; it does not add
up: a commit 0.4% below the best so far raises the next bar to ~0.999 against it, and no commit
is ever more than the tolerance below the best so far (each node's `speed` in the lineage says
where it stands). Against a fresh chain, or an incumbent that is the best, the bar is 1 - 0.5%.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avo.worker import run_isolated

__all__ = ["PATTERN_FLOOR", "SANITIZER_TOOLS", "Verdict", "apply_commit_rule", "evaluate", "geomean", "static_check"]

SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
_SANITIZER_TIMEOUT_S = 300.0
# The least speed a commit may show against the incumbent on any logit pattern (the judge times
# sink and rising-maximum inputs besides N(0, 1)): a kernel whose fast path holds only on the
# inputs the judge times for speed (a frozen softmax max paid 0.097x on rising logits, H100
# 2026-11-23) is rejected once its interval lies wholly below this. A floor, not a tie: the
# pattern rounds are few, and a kernel may trade a little there for a gain on the rest.
PATTERN_FLOOR = 0.90


@dataclass
class Verdict:
    status: str  # a lineage status: committed rejected failed_compile failed_correctness timeout crashed screened
    stage: str  # the last stage reached
    diagnosis: str = ""
    scores: dict = field(default_factory=dict)  # config -> TFLOPS
    geomean: float = 0.0
    incumbent_scores: dict = field(default_factory=dict)
    incumbent_geomean: float = 0.0
    ratio: float | None = None  # candidate speed / incumbent speed: paired geomean ratio, same run
    ratio_ci: list | None = None  # its 95% confidence interval [lo, hi]
    noise: float | None = None  # half-width of that interval
    gain: bool = False  # the interval's lower bound is above 1: a real improvement, not a tie
    commit_bar: float | None = None  # the lower bound the interval had to clear (see apply_commit_rule)
    estimate: dict = field(default_factory=dict)  # avo.stats.RatioEstimate.as_dict(): per config, pairs
    vs_baselines: dict = field(default_factory=dict)  # name -> {"ratio", "ratio_ci"}: candidate speed / baseline's
    # logit pattern (avo.verify.LOGIT_PATTERNS) -> {"ratio", "ratio_ci", "per_config"}: candidate speed
    # / incumbent's on those inputs, paired (one config per specialization)
    patterns: dict = field(default_factory=dict)
    measurement: dict = field(default_factory=dict)  # rounds, launches, checks, throttled rounds, telemetry
    sanitizer: dict = field(default_factory=dict)  # tool -> "clean" | what it found; seconds
    random_shapes: list = field(default_factory=list)  # correctness shapes drawn for this evaluation
    baselines: dict = field(default_factory=dict)  # name -> config -> TFLOPS, same run
    compile_reports: dict = field(default_factory=dict)  # arch -> spec key -> report
    correctness: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)  # seconds per stage
    compile_only: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def apply_to(self, node) -> None:
        """Write this verdict onto a lineage Candidate: status, scores, diagnosis, timings, and the
        rest of the evidence (ratio, noise, compile reports) under `extra`."""
        node.status, node.scores, node.geomean, node.diagnosis = self.status, self.scores, self.geomean, self.diagnosis
        node.timing = {**node.timing, **self.timing}
        if self.baselines:
            node.baselines = self.baselines
        node.extra.update(ratio=self.ratio, ratio_ci=self.ratio_ci, noise=self.noise, gain=self.gain,
                          commit_bar=self.commit_bar, stage=self.stage, compile_only=self.compile_only,
                          incumbent_scores=self.incumbent_scores,
                          compile_reports=self.compile_reports, pairs=self.estimate.get("pairs"),
                          excluded=self.estimate.get("excluded"), vs_baselines=self.vs_baselines,
                          # the paired ratio of each config: a commit's geomean can hide one config's loss
                          per_config=self.estimate.get("per_config"), patterns=self.patterns,
                          measurement=self.measurement, sanitizer=self.sanitizer,
                          random_shapes=self.random_shapes)

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        """A verdict from JSON: unknown keys are an error, never silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown verdict fields {sorted(unknown)}")
        return cls(**data)


def static_check(text: str) -> tuple[bool, str]:
    """The allow-list of avo.static_check: (True, "") or (False, "line N: why")."""
    from avo import static_check as checker

    return checker.check(text)


def evaluate(source: str | Path, suite: str = "quick", archs: tuple[str, ...] = ("sm_90a",),
             incumbent: str | Path | None = None, compile_only: bool | None = None, gpu: int | None = None,
             timeout_s: float = 900.0, seeds: int = 2, rounds: int = 128, baselines: tuple[str, ...] = (),
             stop_after: str | None = None, static: bool = True, sanitize: bool = True,
             min_rounds: int = 16, commit_bar: float | None = None) -> Verdict:
    """Run the cascade on the kernel module at `source`. compile_only=None: decide by the GPU.
    stop_after="correctness" ends a passing run there (status "screened": correct, not timed).
    rounds caps the timing rounds per config (adaptive from min_rounds while the decision is open).
    commit_bar: the lower bound the ratio to `incumbent` must clear, the lineage's
    Lineage.commit_bar(incumbent) (None: 1 - COMMIT_TOLERANCE, a fresh chain's); the sampling
    stops once the interval is clear of it. static=False skips the text check (tests of the layers
    behind it)."""
    from avo import jit
    from avo.suites import load_suite

    commit_bar = _checked_bar(commit_bar)
    source = Path(source).resolve()
    started = time.monotonic()

    def done(verdict: Verdict) -> Verdict:
        verdict.timing["total"] = round(time.monotonic() - started, 2)
        return verdict

    try:
        text = source.read_text()
    except OSError as exc:
        return done(Verdict("failed_compile", "static", f"cannot read {source}: {exc}"))
    if static:
        ok, why = static_check(text)
        if not ok:
            return done(Verdict("failed_compile", "static", f"static check: {why}"))
    suite_obj = load_suite(suite)
    gpu_arch = jit.current_arch()
    if compile_only is None:
        compile_only = gpu_arch is None or gpu_arch not in archs

    # -- compile: every spec for every arch, in the sandbox; failures are deterministic and cached
    t0 = time.monotonic()
    reports: dict = {}
    try:
        compiled = jit.compile_many(source, suite_obj.specs, archs, run=False, timeout_s=timeout_s)
    except jit.CompileError as exc:
        return done(Verdict("failed_compile", "compile", str(exc), compile_only=compile_only))
    for (spec, arch), kernel in compiled.items():
        if isinstance(kernel, jit.CompileError):
            return done(Verdict("failed_compile", "compile", f"[{arch} {spec.key()}] {kernel}", compile_reports=reports,
                                compile_only=compile_only, timing={"compile": round(time.monotonic() - t0, 2)}))
        reports.setdefault(arch, {})[spec.key()] = kernel.report
        problems = kernel.report.get("resource_problems") or []
        if problems:  # compiles, but would hang or fail to launch: the only check there is without the GPU
            return done(Verdict("failed_compile", "compile", f"[{arch} {spec.key()}] resources: {problems[0]}",
                                compile_reports=reports, compile_only=compile_only,
                                timing={"compile": round(time.monotonic() - t0, 2)}))
    timing = {"compile": round(time.monotonic() - t0, 2)}
    if compile_only:
        why = "asked for" if gpu_arch in archs else "no matching GPU"
        return done(Verdict("screened", "compile", f"compile-only: compiled for {', '.join(archs)}; not run ({why})",
                            compile_reports=reports, compile_only=True, timing=timing))

    entries = {spec.key(): str(compiled[(spec, gpu_arch)].artifact_dir) for spec in suite_obj.specs}
    inc_entries = None
    if incumbent:
        try:
            inc = jit.compile_many(incumbent, suite_obj.specs, (gpu_arch,), run=False, trusted=True)
        except jit.CompileError as exc:
            return done(Verdict("crashed", "benchmark", f"harness error: the incumbent does not compile: {exc}",
                                compile_reports=reports, timing=timing))
        bad = [k for k in inc.values() if isinstance(k, jit.CompileError)]
        if bad:
            return done(Verdict("crashed", "benchmark", f"harness error: the incumbent does not compile: {bad[0]}",
                                compile_reports=reports, timing=timing))
        inc_entries = {spec.key(): str(inc[(spec, gpu_arch)].artifact_dir) for spec in suite_obj.specs}

    # -- the judge: a fresh process that loads the artifacts, checks, times, and answers on its pipe
    left = max(30.0, timeout_s - (time.monotonic() - started))
    args = {"entries": entries, "incumbent": inc_entries, "suite": suite, "seeds": seeds, "baselines": list(baselines),
            "stop_after": stop_after, "sampling": {"min_rounds": min_rounds, "max_rounds": max(rounds, min_rounds),
                                                   "commit_bar": commit_bar}}
    result = run_isolated("avo.judge:judge", args, timeout_s=left, gpu=gpu)
    if not result.ok:
        stage = result.extra.get("progress", {}).get("stage", "correctness")
        status = "timeout" if result.status == "timeout" else "crashed"
        detail = result.error if result.status != "error" else f"harness error: {result.error}"
        return done(Verdict(status, stage, f"{result.status} during {stage}: {detail}", compile_reports=reports,
                            timing=timing, scores={c.name: 0.0 for c in suite_obj.timed}))
    try:
        verdict = Verdict.from_dict({**result.value, "timing": {**timing, **result.value.get("timing", {})},
                                     "compile_reports": reports})
    except (TypeError, ValueError) as exc:
        return done(Verdict("crashed", "benchmark", f"harness error: malformed verdict from the judge: {exc}",
                            compile_reports=reports, timing=timing))
    # the judge measures; only this process decides: a "committed" coming back is not a verdict
    allowed = {"measured", "failed_correctness", "crashed"} | ({"screened"} if stop_after == "correctness" else set())
    if verdict.status not in allowed or (verdict.status == "measured" and bool(inc_entries) != bool(verdict.estimate)):
        return done(Verdict("crashed", "benchmark", f"harness error: the judge answered {verdict.status!r} "
                                                    "without what that needs", compile_reports=reports, timing=timing))
    if verdict.status != "measured":
        return done(verdict)
    apply_commit_rule(verdict, commit_bar)
    if verdict.status == "committed" and sanitize:
        t0 = time.monotonic()
        found = sanitizer_stage(entries, suite, gpu)
        verdict.timing["sanitizer"] = round(time.monotonic() - t0, 2)
        verdict.sanitizer = found
        problems = {tool: what for tool, what in found.get("tools", {}).items() if what != "clean"}
        if problems:
            tool, what = next(iter(problems.items()))
            verdict.status, verdict.stage = "failed_sanitizer", "sanitizer"
            verdict.diagnosis = f"compute-sanitizer {tool}: {what}"
            verdict.scores = {c: 0.0 for c in verdict.scores}
            verdict.geomean = 0.0
    return done(verdict)


def _checked_bar(commit_bar: float | None) -> float:
    """The bar to decide with: None is a fresh chain's, 1 - COMMIT_TOLERANCE; a lower one is refused
    (the tolerance is for a tie with the best so far, never for more)."""
    from avo.stats import COMMIT_BAR

    if commit_bar is None:
        return COMMIT_BAR
    if not math.isfinite(commit_bar) or commit_bar < COMMIT_BAR:
        raise ValueError(f"commit_bar {commit_bar} is below 1 - COMMIT_TOLERANCE = {COMMIT_BAR}: no candidate may "
                         "be judged more leniently than a tie with the best so far")
    return commit_bar


def apply_commit_rule(verdict: Verdict, commit_bar: float | None = None) -> None:
    """The commit rule on a measured verdict's paired estimate: commit when the interval's lower
    bound clears `commit_bar` (the lineage's Lineage.commit_bar for the incumbent it was timed
    against; None: 1 - COMMIT_TOLERANCE) and its upper bound reaches 1 (not shown slower), a gain
    when the lower bound clears 1. No incumbent: the first correct
    kernel commits. Sets status, stage, ratio, interval, gain, geomeans, the bar and the diagnosis,
    which names the bar where it is above the bare tolerance."""
    from avo import stats

    bar = _checked_bar(commit_bar)
    verdict.geomean = geomean(verdict.scores.values())
    verdict.incumbent_geomean = geomean(verdict.incumbent_scores.values()) if verdict.incumbent_scores else 0.0
    vs = "; ".join(f"{v['ratio']:.4f}x {name} [{v['ratio_ci'][0]:.4f}, {v['ratio_ci'][1]:.4f}]"
                   for name, v in verdict.vs_baselines.items())
    if not verdict.estimate:
        verdict.status, verdict.stage = "committed", "done"
        verdict.diagnosis = f"correct; geomean {verdict.geomean:.1f} TFLOPS; no incumbent" + (f"; {vs}" if vs else "")
        return
    est = stats.RatioEstimate(ratio=verdict.estimate["ratio"], lo=verdict.estimate["ratio_ci"][0],
                              hi=verdict.estimate["ratio_ci"][1], per_config=verdict.estimate.get("per_config", {}),
                              pairs=verdict.estimate["pairs"], excluded=verdict.estimate["excluded"])
    decision = stats.decide(est, bar)
    verdict.ratio, verdict.ratio_ci, verdict.noise = est.ratio, [est.lo, est.hi], est.half_width()
    verdict.gain, verdict.commit_bar = stats.is_gain(est), bar
    # an interval still open at the sampling cap is not a commit: "not slower" must be shown
    verdict.status = "committed" if decision == "commit" else "rejected"
    verdict.stage = "done"
    rule = f"tolerance {stats.COMMIT_TOLERANCE:.1%}"
    if est.lo >= bar and stats.shown_slower(est):
        rule = f"shown slower: the upper bound is below 1; {rule} is for ties"
    elif bar > stats.COMMIT_BAR:  # the incumbent is below the best so far: what is left of the tolerance
        rule = (f"{'clears' if decision == 'commit' else 'lower bound below'} the commit bar {bar:.4f}: "
                f"the incumbent is {stats.COMMIT_BAR / bar:.4f} of the best so far, {rule} of the best")
    said = "reject, still open at the sampling cap" if decision == "undecided" else decision
    verdict.diagnosis = (f"correct; geomean {verdict.geomean:.1f} TFLOPS; {est.format()} the incumbent "
                         f"({said}{', a gain' if verdict.gain else ''}; {rule})" + (f"; {vs}" if vs else ""))
    below = [(name, p) for name, p in verdict.patterns.items() if p["ratio_ci"][1] < PATTERN_FLOOR]
    if verdict.status == "committed" and below:
        name, p = min(below, key=lambda item: item[1]["ratio"])
        verdict.status, verdict.gain = "rejected", False
        verdict.diagnosis = (f"{name} logits: {p['ratio']:.4f}x [{p['ratio_ci'][0]:.4f}, {p['ratio_ci'][1]:.4f}] the "
                             f"incumbent, below the floor {PATTERN_FLOOR:.2f} (a slowdown N(0, 1) inputs do not "
                             f"show); on N(0, 1): {est.format()}")


def sanitizer_stage(entries: dict, suite: str, gpu: int | None) -> dict:
    """compute-sanitizer's four tools over one small call of each specialization. Cached by the
    compiled kernels' identity: a source sanitized once is not sanitized again."""
    from avo import jit

    binary = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if Path(p).exists()), None)
    if binary is None:
        return {"skipped": "compute-sanitizer not found (CUDA toolkit's bin/ not on PATH)"}
    key = hashlib.sha256(json.dumps(sorted(Path(e).name for e in entries.values())).encode()).hexdigest()[:24]
    record = jit.cache_dir() / "sanitized" / f"{key}.json"
    if record.exists():
        return {**json.loads(record.read_text()), "cached": True}
    found: dict = {"tools": {}, "seconds": {}}

    def run_tool(tool: str) -> None:  # the four tools side by side: each run is mostly host-side work
        t0 = time.monotonic()
        wrap = [binary, "--tool", tool, "--error-exitcode", "86", "--print-limit", "5"]
        if tool == "racecheck":
            wrap += ["--racecheck-report", "hazard"]
        result = run_isolated("avo.judge:sanitize", {"entries": entries, "suite": suite},
                              timeout_s=_SANITIZER_TIMEOUT_S, gpu=gpu, wrap=wrap)
        found["seconds"][tool] = round(time.monotonic() - t0, 2)
        if result.ok and result.returncode == 0:
            found["tools"][tool] = "clean"
            return
        lines = [ln.strip() for ln in result.stderr_tail.splitlines() if ln.strip().startswith("=========")]
        errors = [ln for ln in lines if "ERROR SUMMARY" not in ln and ("rror" in ln or "azard" in ln)]
        found["tools"][tool] = (errors[0][10:][:300] if errors else result.summary()[:300]) or "failed"

    with ThreadPoolExecutor(max_workers=len(SANITIZER_TOOLS)) as pool:
        list(pool.map(run_tool, SANITIZER_TOOLS))
    found["tools"] = {tool: found["tools"][tool] for tool in SANITIZER_TOOLS}
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(found))
    return found


def geomean(values) -> float:
    values = list(values)
    if not values or any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))
