"""The evaluation cascade: what decides whether a candidate enters the lineage, and how.

    static -> compile (every requested arch) -> correctness -> benchmark -> correctness again

Static checks run here; everything that imports or runs the candidate runs in an isolated worker
process (avo.worker) with a time limit, so a hang, a crash or a corrupted CUDA context becomes a
`timeout` / `crashed` verdict and the next candidate is evaluated normally. The worker records
each stage as it finishes, so a crash still says where it happened.

Fitness follows AVO: a vector of TFLOPS per timed config (all zero on any correctness failure),
geomean as the scalar. The candidate and the incumbent are timed interleaved in the same process;
the commit rule is: correct, and not slower than the incumbent beyond the measured noise.
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avo.worker import run_isolated

__all__ = ["NOISE_CAP", "NOISE_FLOOR", "Verdict", "commit_decision", "evaluate", "geomean", "static_check"]

NOISE_FLOOR = 0.002  # do_bench medians of a 1 ms kernel repeat to ~0.2% at best
# A tie is forgiven up to the measured noise, but never beyond 1%: on an H200 a 2-round run measured
# 1.3% to 5.2% spread, and forgiving all of it let the incumbent drift down 1.4% in one commit.
NOISE_CAP = 0.01

# What a kernel module may import: the DSL, its CUDA bindings and plain Python helpers. Anything
# else (torch, the harness, threads, timers, ctypes, os) is a way to game the measurement.
_ALLOWED_IMPORTS = {"cutlass", "cuda", "math", "typing", "dataclasses", "functools", "operator", "enum",
                    "__future__", "collections", "itertools"}
_FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "globals", "open", "setattr", "delattr",
                    "breakpoint", "input"}


@dataclass
class Verdict:
    status: str  # a lineage status: committed rejected failed_compile failed_correctness timeout crashed screened
    stage: str  # the last stage reached
    diagnosis: str = ""
    scores: dict = field(default_factory=dict)  # config -> TFLOPS
    geomean: float = 0.0
    incumbent_scores: dict = field(default_factory=dict)
    incumbent_geomean: float = 0.0
    ratio: float | None = None  # candidate / incumbent geomean, same run
    noise: float | None = None
    gain: bool = False  # ratio exceeds 1 + noise: a real improvement, not a tie
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
        node.extra.update(ratio=self.ratio, noise=self.noise, gain=self.gain, stage=self.stage,
                          compile_only=self.compile_only, incumbent_scores=self.incumbent_scores,
                          compile_reports=self.compile_reports)


def geomean(values) -> float:
    values = list(values)
    if not values or any(v <= 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def commit_decision(ratio: float | None, noise: float) -> tuple[bool, bool]:
    """(commit, gain). No incumbent: commit. Otherwise commit when not slower beyond the noise
    (capped at NOISE_CAP); a gain is a ratio above 1 + noise."""
    if ratio is None:
        return True, False
    noise = max(noise, NOISE_FLOOR)
    return ratio >= 1.0 - min(noise, NOISE_CAP), ratio > 1.0 + noise


def static_check(text: str) -> tuple[bool, str]:
    """The candidate parses, defines KERNEL, and imports / calls nothing that could touch the
    harness, other streams, timers or the process."""
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        return False, f"syntax error at line {exc.lineno}: {exc.msg}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] not in _ALLOWED_IMPORTS:
                    return False, f"line {node.lineno}: import of {name!r} is not allowed in a kernel module"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            return False, f"line {node.lineno}: call to {node.func.id}() is not allowed in a kernel module"
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in (
                "__init__", "__call__", "__name__", "__class__"):
            return False, f"line {node.lineno}: access to {node.attr} is not allowed in a kernel module"
    has_entry = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "KERNEL" for t in n.targets)
                    for n in tree.body)
    if not has_entry:
        return False, "the module does not define KERNEL (the kernel class)"
    return True, ""


def evaluate(source: str | Path, suite: str = "quick", archs: tuple[str, ...] = ("sm_90a",),
             incumbent: str | Path | None = None, compile_only: bool | None = None, gpu: int | None = None,
             timeout_s: float = 900.0, seeds: int = 2, rounds: int = 3, baselines: tuple[str, ...] = (),
             stop_after: str | None = None) -> Verdict:
    """Run the cascade on the kernel module at `source`. compile_only=None: decide by the GPU.
    stop_after="correctness" ends a passing run there (status "screened": correct, not timed)."""
    source = Path(source).resolve()
    started = time.monotonic()
    try:
        text = source.read_text()
    except OSError as exc:
        return Verdict("failed_compile", "static", f"cannot read {source}: {exc}")
    ok, why = static_check(text)
    if not ok:
        return Verdict("failed_compile", "static", f"static check: {why}")
    progress_path = source.with_name(f".{source.stem}.progress.json")
    progress_path.unlink(missing_ok=True)
    args = {"source": str(source), "suite": suite, "archs": list(archs),
            "incumbent": str(Path(incumbent).resolve()) if incumbent else None, "compile_only": compile_only,
            "seeds": seeds, "rounds": rounds, "baselines": list(baselines), "progress": str(progress_path),
            "stop_after": stop_after}
    result = run_isolated("avo.evaluate:_cascade", args, timeout_s=timeout_s, gpu=gpu)
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {}
    progress_path.unlink(missing_ok=True)
    if result.ok:
        verdict = Verdict(**result.value)
    else:
        stage = progress.get("stage", "compile")
        status = {"timeout": "timeout", "crashed": "crashed"}.get(result.status, "crashed")
        detail = result.error if result.status != "error" else f"harness error: {result.error}"
        verdict = Verdict(status, stage, f"{result.status} during {stage}: {detail}",
                          compile_reports=progress.get("compile_reports", {}))
    verdict.timing["total"] = round(time.monotonic() - started, 2)
    return verdict


# ---------------------------------------------------------------------------------------------
# the worker side: everything below runs inside the isolated process


def _cascade(source, suite, archs, incumbent, compile_only, seeds, rounds, baselines, progress,
             stop_after=None) -> dict:
    from avo import jit
    from avo.suites import load_suite

    def mark(stage, **more):
        state.update(stage=stage, **more)
        Path(progress).write_text(json.dumps(state))

    state: dict = {}
    suite_obj = load_suite(suite)
    gpu_arch = jit.current_arch()
    if compile_only is None:
        compile_only = gpu_arch is None or gpu_arch not in archs
    timing: dict = {}
    verdict = {"status": "crashed", "stage": "compile", "compile_only": compile_only, "timing": timing}

    # -- compile: every spec of the suite for every arch; failures are deterministic and cached
    mark("compile")
    t0 = time.monotonic()
    reports: dict = {}
    kernels = {}
    for arch in archs:
        for spec in suite_obj.specs:
            run = (not compile_only) and arch == gpu_arch
            try:
                kernel = jit.compile_kernel(source, spec, arch=arch, run=run)
            except jit.CompileError as exc:
                timing["compile"] = round(time.monotonic() - t0, 2)
                verdict.update(status="failed_compile", diagnosis=f"[{arch} {spec.key()}] {exc}",
                               compile_reports=reports)
                return verdict
            reports.setdefault(arch, {})[spec.key()] = kernel.report
            if run:
                kernels[spec] = kernel
            mark("compile", compile_reports=reports)
    timing["compile"] = round(time.monotonic() - t0, 2)
    verdict["compile_reports"] = reports
    if compile_only:
        why = "asked for" if gpu_arch in archs else "no matching GPU"
        verdict.update(status="screened", stage="compile",
                       diagnosis=f"compile-only: compiled for {', '.join(archs)}; not run ({why})")
        return verdict

    try:
        return _run_stages(verdict, mark, kernels, suite_obj, incumbent, seeds, rounds, baselines, stop_after)
    except RuntimeError as exc:  # a CUDA error poisons this process's context: report it, end here
        if "CUDA" not in str(exc) and "cuda" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0][:300]
        verdict.update(status="crashed", stage=state.get("stage", "correctness"),
                       diagnosis=f"CUDA error during {state.get('stage')}: {first}",
                       scores={c.name: 0.0 for c in suite_obj.timed})
        return verdict


def _run_stages(verdict, mark, kernels, suite_obj, incumbent, seeds, rounds, baselines, stop_after) -> dict:
    from avo import jit, verify

    timing = verdict["timing"]
    # -- correctness: ragged shapes and the timed ones, fresh seeds
    mark("correctness")
    t0 = time.monotonic()
    configs = list(suite_obj.correctness) + list(suite_obj.timed)
    result = _check_all(verify, kernels, configs, seeds)
    timing["correctness"] = round(time.monotonic() - t0, 2)
    verdict["correctness"] = {"ok": result["ok"], "diagnosis": result["diagnosis"], "checked": len(result["shapes"])}
    if not result["ok"]:
        verdict.update(status="failed_correctness", stage="correctness", diagnosis=result["diagnosis"],
                       scores={c.name: 0.0 for c in suite_obj.timed})
        return verdict
    if stop_after == "correctness":
        verdict.update(status="screened", stage="correctness", diagnosis=f"correct ({result['diagnosis']}); not timed")
        return verdict

    # -- benchmark: interleaved with the incumbent (and baselines) in this process
    mark("benchmark")
    t0 = time.monotonic()
    inc_kernels = {}
    if incumbent:
        for spec in suite_obj.specs:
            inc_kernels[spec] = jit.compile_kernel(incumbent, spec)
    bench = _benchmark(kernels, inc_kernels, suite_obj.timed, rounds, baselines)
    timing["benchmark"] = round(time.monotonic() - t0, 2)
    verdict.update(scores=bench["scores"], baselines=bench["baselines"], incumbent_scores=bench["incumbent"])
    if bench["over_peak"]:
        verdict.update(status="failed_correctness", stage="benchmark", diagnosis=bench["over_peak"],
                       scores={c.name: 0.0 for c in suite_obj.timed})
        return verdict

    # -- correctness again, fresh seeds: catches state kept across calls (cached outputs)
    mark("recheck")
    t0 = time.monotonic()
    again = _check_all(verify, kernels, list(suite_obj.timed), 1)
    timing["recheck"] = round(time.monotonic() - t0, 2)
    if not again["ok"]:
        verdict.update(status="failed_correctness", stage="recheck",
                       diagnosis=f"after benchmarking: {again['diagnosis']}",
                       scores={c.name: 0.0 for c in suite_obj.timed})
        return verdict

    cand_geo = geomean(bench["scores"].values())
    inc_geo = geomean(bench["incumbent"].values()) if bench["incumbent"] else 0.0
    ratio = cand_geo / inc_geo if inc_geo > 0 else None
    noise = max(bench["noise"], NOISE_FLOOR)
    commit, gain = commit_decision(ratio, noise)
    vs = f"{ratio:.4f}x the incumbent (noise {noise:.2%})" if ratio is not None else "no incumbent"
    verdict.update(status="committed" if commit else "rejected", stage="done", geomean=cand_geo,
                   incumbent_geomean=inc_geo, ratio=ratio, noise=noise, gain=gain,
                   diagnosis=f"correct; geomean {cand_geo:.1f} TFLOPS, {vs}")
    return verdict


def _check_all(verify, kernels, configs, seeds) -> dict:
    shapes = []
    for config in configs:
        result = verify.check(kernels[config.spec].fn, [config], seeds=seeds)
        shapes += result["shapes"]
        if not result["ok"]:
            return {"ok": False, "diagnosis": result["diagnosis"], "shapes": shapes}
    return {"ok": True, "diagnosis": f"{len(shapes)} checks passed", "shapes": shapes}


def _benchmark(kernels, inc_kernels, configs, rounds, baselines) -> dict:
    from avo import timing

    peak = timing.peak_tflops()
    out = {"scores": {}, "incumbent": {}, "baselines": {b: {} for b in baselines}, "noise": 0.0,
           "over_peak": "", "spreads": {}}
    spreads = []
    for config in configs:
        times = _time_config(config, kernels[config.spec].fn,
                             inc_kernels[config.spec].fn if config.spec in inc_kernels else None, baselines, rounds)
        tflops = {n: config.flops / (t["ms"] * 1e-3) / 1e12 for n, t in times.items()}
        out["scores"][config.name] = tflops["candidate"]
        if "incumbent" in tflops:
            out["incumbent"][config.name] = tflops["incumbent"]
            spreads.append(max(times["candidate"]["spread"], times["incumbent"]["spread"]))
        for name in baselines:
            if name in tflops:
                out["baselines"][name][config.name] = tflops[name]
        if tflops["candidate"] > peak:
            out["over_peak"] = (f"{config.name}: {tflops['candidate']:.0f} TFLOPS is above the chip's dense "
                                f"BF16 peak {peak:.0f}: a timing bug or skipped work")
            break
    out["noise"] = sorted(spreads)[len(spreads) // 2] if spreads else 0.0
    return out


def _time_config(config, fn, incumbent_fn, baselines, rounds) -> dict:
    """Median times of the candidate, the incumbent and the baselines on one shape, interleaved,
    on fresh random inputs (never zeros: they run faster than real data)."""
    import torch

    from avo import timing
    from avo.verify import random_inputs

    q, k, v = random_inputs(config, int.from_bytes(os.urandom(4), "little"))
    o = torch.empty_like(q)
    lse = torch.empty(config.batch, config.heads_q, config.seqlen_q, device="cuda")
    scale = 1.0 / math.sqrt(config.head_dim)
    fns = {"candidate": lambda: fn(q, k, v, o, lse, scale)}
    if incumbent_fn is not None:
        fns["incumbent"] = lambda: incumbent_fn(q, k, v, o, lse, scale)
    for name in baselines:
        baseline, _why = timing.baseline_fn(name, config, q, k, v, scale)
        if baseline is not None:
            fns[name] = baseline
    return timing.time_interleaved(fns, rounds=rounds)
