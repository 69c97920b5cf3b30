"""The judge: the GPU stages of the cascade, run in a fresh worker process (avo.worker) that loads
compiled artifacts only. It never imports a kernel module: a candidate's Python ran earlier, in the
compile sandbox, and all that reached this process is the cache entry (an object file checked and
linked by avo.jit, loaded through tvm_ffi). Its verdict goes back on the worker's result pipe.

    correctness (avo.verify) -> timing (avo.timing, paired, adaptive) -> timing on shaped logits
    (attention sink, rising maxima: one config per specialization, against the incumbent; only for
    a candidate the commit rule would take)
    -> the commit decision (avo.evaluate.apply_commit_rule, avo.stats)

`sanitize` is the compute-sanitizer stage's payload: one small call per specialization.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

__all__ = ["PATTERN_ROUNDS", "judge", "pattern_configs", "sanitize"]

PATTERN_ROUNDS = 4  # paired rounds per logit pattern: the floor they test is 10% away, not 1%


def judge(entries: dict, incumbent: dict | None, suite: str, seeds: int, baselines: list, stop_after: str | None,
          sampling: dict) -> dict:
    """entries / incumbent: {spec key: cache entry dir} for this GPU's arch. sampling: min_rounds,
    max_rounds, and the commit_bar the sampling decides against (it stops once the interval is
    clear of it). Returns the verdict fields of the GPU stages (avo.evaluate.Verdict)."""

    from avo import stats, timing, verify
    from avo.suites import load_suite, random_configs
    from avo.telemetry import Telemetry
    from avo.worker import progress

    suite_obj = load_suite(suite)
    kernels = {"candidate": _load(entries, suite_obj)}
    if incumbent:
        kernels["incumbent"] = _load(incumbent, suite_obj)
    verdict: dict = {"timing": {}}
    zero = {c.name: 0.0 for c in suite_obj.timed}

    progress(stage="correctness")
    t0 = time.monotonic()
    drawn = random_configs(suite_obj.specs, random.SystemRandom())  # shapes no suite names
    verdict["random_shapes"] = [c.name for c in drawn]
    try:
        configs = list(suite_obj.correctness) + drawn + list(suite_obj.timed)
        result = _check_all(verify, kernels["candidate"], configs, seeds)
    except RuntimeError as exc:
        return _cuda_error(verdict, "correctness", exc, zero)
    verdict["timing"]["correctness"] = round(time.monotonic() - t0, 2)
    verdict["correctness"] = {"ok": result["ok"], "diagnosis": result["diagnosis"], "checked": result["checked"]}
    if not result["ok"]:
        return {**verdict, "status": "failed_correctness", "stage": "correctness", "diagnosis": result["diagnosis"],
                "scores": zero}
    if stop_after == "correctness":
        return {**verdict, "status": "screened", "stage": "correctness",
                "diagnosis": f"correct ({result['diagnosis']}); not timed"}

    progress(stage="benchmark")
    t0 = time.monotonic()
    telemetry = Telemetry()

    def needs_more(m) -> bool:
        if "incumbent" not in kernels:
            return False
        rounds = min(len(r) for r in m.flags.values())
        try:
            estimate = stats.paired_ratio(m.pairs(), flags=m.flags)
        except ValueError:  # too few usable pairs yet (throttled rounds): keep sampling
            return True
        return stats.needs_more(estimate, bar=sampling.get("commit_bar", stats.COMMIT_BAR), pairs_so_far=rounds,
                                cap=sampling.get("max_rounds", 128))

    try:
        m = timing.measure(list(suite_obj.timed), kernels, tuple(baselines), needs_more=needs_more,
                           min_rounds=sampling.get("min_rounds", 16), max_rounds=sampling.get("max_rounds", 128),
                           block=sampling.get("min_rounds", 16), telemetry=telemetry)
    except timing.TimedOutputError as exc:
        verdict["timing"]["benchmark"] = round(time.monotonic() - t0, 2)
        return {**verdict, "status": "failed_correctness", "stage": "benchmark", "diagnosis": str(exc), "scores": zero}
    except RuntimeError as exc:
        return _cuda_error(verdict, "benchmark", exc, zero)
    verdict["timing"]["benchmark"] = round(time.monotonic() - t0, 2)

    tflops = m.tflops(list(suite_obj.timed))
    over = timing.above_peak(tflops["candidate"])
    if over:
        return {**verdict, "status": "failed_correctness", "stage": "benchmark", "scores": zero, "diagnosis": over}
    measured = {"scores": tflops["candidate"], "incumbent_scores": tflops.get("incumbent", {}),
                "baselines": {b: tflops[b] for b in baselines if b in tflops}, "measurement": m.summary()}
    estimate = stats.paired_ratio(m.pairs(), flags=m.flags) if "incumbent" in kernels else None
    if estimate is not None:
        measured["estimate"] = estimate.as_dict()
    measured["vs_baselines"] = m.versus(baselines)
    bar = sampling.get("commit_bar") or stats.COMMIT_BAR
    # only a candidate the commit rule would take is timed on shaped logits: they can only reject it
    if estimate is not None and stats.decide(estimate, bar) == "commit":
        progress(stage="patterns")
        t0 = time.monotonic()
        try:
            measured["patterns"] = _time_patterns(timing, stats, pattern_configs(suite_obj.timed), kernels, telemetry)
        except timing.TimedOutputError as exc:
            verdict["timing"]["patterns"] = round(time.monotonic() - t0, 2)
            return {**verdict, "status": "failed_correctness", "stage": "patterns", "diagnosis": str(exc),
                    "scores": zero}
        except RuntimeError as exc:
            return _cuda_error(verdict, "patterns", exc, zero)
        verdict["timing"]["patterns"] = round(time.monotonic() - t0, 2)
    return {**verdict, **measured, "status": "measured", "stage": "benchmark"}


def pattern_configs(timed: list) -> list:
    """One timed config per specialization, the median by FLOPs (ties: the suite's order): the
    logit patterns are timed there."""
    by_spec: dict = {}
    for config in timed:
        by_spec.setdefault(config.spec, []).append(config)
    return [sorted(group, key=lambda c: c.flops)[len(group) // 2] for group in by_spec.values()]


def _time_patterns(timing, stats, configs: list, kernels: dict, telemetry) -> dict:
    """{pattern: {"ratio", "ratio_ci", "per_config"}}: the candidate's speed over the incumbent's,
    paired, on logits shaped by each of avo.verify.LOGIT_PATTERNS (its outputs checked there too)."""
    from avo.verify import LOGIT_PATTERNS

    out = {}
    for pattern in LOGIT_PATTERNS:
        m = timing.measure(configs, kernels, (), min_rounds=PATTERN_ROUNDS, max_rounds=PATTERN_ROUNDS,
                           block=PATTERN_ROUNDS, telemetry=telemetry, pattern=pattern)
        try:
            est = stats.paired_ratio(m.pairs(), flags=m.flags)
        except ValueError:  # throttled rounds left too few pairs: throttling slows both sides of a pair
            est = stats.paired_ratio(m.pairs())
        out[pattern] = {"ratio": est.ratio, "ratio_ci": [est.lo, est.hi], "per_config": est.per_config}
    return out


def sanitize(entries: dict, suite: str) -> dict:
    """One small call of each specialization, for compute-sanitizer to watch; then a sync so an
    error surfaces. Returns {"calls": n}."""
    import torch

    from avo.suites import ShapeConfig, load_suite
    from avo.verify import random_inputs

    suite_obj = load_suite(suite)
    kernels = _load(entries, suite_obj)
    calls = 0
    rng = random.SystemRandom()
    for spec, fn in kernels.items():
        group = spec.qhead_per_kvhead
        # ragged on purpose (a partial tile in both directions, seqlen_q != seqlen_k, two batches), and
        # drawn afresh, so that no kernel can recognise the sanitizer's shape
        seqlen_q, seqlen_k = rng.randint(129, 320), rng.randint(129, 400)
        config = ShapeConfig("sanitize", 2, seqlen_q, seqlen_k, 2 * group, 2, spec.head_dim, spec.causal, spec.dtype)
        q, k, v = random_inputs(config, 1234)
        o = torch.empty_like(q)
        lse = torch.empty(config.batch, config.heads_q, config.seqlen_q, device="cuda")
        fn(q, k, v, o, lse, 1.0 / math.sqrt(config.head_dim))
        torch.cuda.synchronize()
        calls += 1
    return {"calls": calls}


def _load(entries: dict, suite_obj) -> dict:
    from avo import jit

    kernels = {}
    for spec in suite_obj.specs:
        entry = entries.get(spec.key())
        if entry is None:
            raise KeyError(f"no compiled kernel for {spec.key()}")
        kernels[spec] = jit.load_callable(Path(entry))
    return kernels


def _check_all(verify, kernels, configs, seeds) -> dict:
    records = []
    for config in configs:
        result = verify.check(kernels[config.spec], [config], seeds=seeds)
        records += result["shapes"]
        if not result["ok"]:
            return {"ok": False, "diagnosis": result["diagnosis"], "checked": len(records)}
    worst = max(records, key=lambda r: r["err"] / max(r["bound"], 1e-12))
    return {"ok": True, "checked": len(records), "diagnosis": f"{len(records)} checks passed (worst {worst['name']}: "
                                                              f"err {worst['err']:.2e} <= bound {worst['bound']:.2e})"}


def _cuda_error(verdict: dict, stage: str, exc: RuntimeError, zero: dict) -> dict:
    """A CUDA error poisons this process's context: report it and end here."""
    if "CUDA" not in str(exc) and "cuda" not in str(exc):
        raise exc
    first = str(exc).strip().splitlines()[0][:300]
    return {**verdict, "status": "crashed", "stage": stage, "diagnosis": f"CUDA error during {stage}: {first}",
            "scores": zero}
