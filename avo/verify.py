"""Correctness of a compiled attention kernel on the GPU, with the guards that keep search honest.

For every shape and seed:
- inputs are drawn from a seeded generator, and the candidate's buffers first hold other random
  data; the real inputs are copied in on torch's current stream right after a GPU sleep, so a
  kernel that runs on another stream reads the stale data and fails;
- outputs are poisoned (NaN) before the call; a NaN left anywhere fails;
- after the call the inputs are regenerated from the seed, out of the candidate's reach: the
  candidate's input buffers must still equal them, and the fp32 reference is computed from them;
- the error bound is relative to what PyTorch's own low-precision path gets wrong on the same
  inputs: max|out - ref| <= 2 * max|torch_lowp - ref| + 1e-5 (the FlashAttention tests' rule);
- LSE must match where finite, be -inf exactly where the reference is -inf, never +inf or NaN;
- inputs are not only N(0,1): each config is also checked with large logits (a softmax without the
  running max overflows), peaked rows (one key dominates a row), non-contiguous views (q, k, v
  and out as strided views of larger buffers, as a packed-QKV model passes them), and an attention
  sink (key 0 far above the rest, as trained models show).
Fresh seeds on every call of `check`, so a kernel that caches outputs fails the second time.
"""

from __future__ import annotations

import math
import random
import re

import torch

from avo.reference import reference_attention
from avo.suites import ShapeConfig

__all__ = ["INPUT_KINDS", "LOGIT_PATTERNS", "LSE_ATOL", "SINK_NATS", "check", "compare", "check_rows",
           "random_inputs", "reference", "scattered_rows", "shape_logits"]

LSE_ATOL = 2e-3
LSE_RTOL = 1e-5
# How inputs are drawn: "normal" N(0,1); "large" q and k scaled by 8 (logits of std 64: exp without
# max subtraction overflows fp32); "peaked" a quarter of the query rows copy a key scaled by 4, so
# one key dominates; "strided" normal values in non-contiguous views; "sink" key 0 of every sequence
# far above the rest (LOGIT_PATTERNS below), the pattern the judge also times: a kernel wrong only
# there fails here, whatever its speed.
INPUT_KINDS = ("normal", "large", "peaked", "strided", "sink")
_SLEEP_CYCLES = 2_000_000  # ~1 ms: long enough that a kernel on another stream runs first
_SMALL_ELEMENTS = 1 << 22  # q of at most 4M elements: cheap enough to check with every input kind, every row
_WINDOW = 512  # query rows per reference window on longer inputs
# Query rows drawn over the whole of a long sequence, on top of the windows: a kernel wrong on one
# 128-row tile of a 32k sequence (every head and batch) is seen with 86% probability per check,
# where one random window sees it 2-4% of the time (zoo: one_middle_tile_skipped_on_long_sequences).
_SCATTERED = 512


# Logits shaped like trained models' rather than N(0, 1) (shape_logits), timed by the judge and
# avo.bench --inputs; "sink" is also a correctness kind (INPUT_KINDS): "sink" key 0 of every
# sequence scores far above the rest (StreamingLLM's attention sink): by a strength drawn per KV
# head from SINK_NATS, along a direction drawn per call, so a kernel cannot recognise the judge's
# sink by its exact values and be fast only there; "rising" keys scaled from 4x at the first key
# down to 1x at the last, with q doubled, so a row's max keeps rising toward the first keys;
# "falling" the same toward the last keys. A kernel that visits a row's keys in either order meets
# its max late in one of the last two.
LOGIT_PATTERNS = ("sink", "rising", "falling")
SINK_NATS = (24.0, 40.0)  # at 24 nats the rest of a 4k-key row holds under 2e-7 of the softmax


def shape_logits(q: torch.Tensor, k: torch.Tensor, pattern: str,
                 generator: torch.Generator | None = None) -> None:
    """Reshape N(0, 1) q and k in place (sequence at dim -3, head_dim last; any leading dims) into
    `pattern` (LOGIT_PATTERNS, or "normal": unchanged), for the softmax scale 1/sqrt(head_dim).
    The sink's direction and strengths come from `generator` (on q's device; a fixed seed when
    None): the same generator state gives the same result, so inputs can be regenerated and
    checked unchanged."""
    if pattern == "normal":
        return
    if pattern not in LOGIT_PATTERNS:
        raise ValueError(f"unknown logit pattern {pattern!r}: use normal or one of {', '.join(LOGIT_PATTERNS)}")
    seqlen = k.shape[-3]
    if pattern == "sink":
        _plant_sink(q, k, generator)
        return
    j = torch.arange(seqlen, device=k.device, dtype=torch.float32) / max(1, seqlen - 1)
    ramp = 1.0 + 3.0 * ((1.0 - j) if pattern == "rising" else j)
    k.mul_(ramp.to(k.dtype).view(seqlen, 1, 1))
    q.mul_(2.0)


def _plant_sink(q: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> None:
    """Key 0 := strength * sqrt(d) * u for a random unit u and a strength per KV head drawn from
    SINK_NATS; every query's component along u := 1. Its logit is then the strength, in nats."""
    if generator is None:
        generator = torch.Generator(device=q.device).manual_seed(0)
    d, heads_kv = q.shape[-1], k.shape[-2]
    u = torch.randn(d, generator=generator, device=q.device, dtype=torch.float32)
    u = u / u.norm()
    low, high = SINK_NATS
    strength = low + (high - low) * torch.rand(heads_kv, generator=generator, device=q.device)
    wide = q.float()
    q.copy_(wide + (1.0 - (wide @ u).unsqueeze(-1)) * u)
    k.select(-3, 0).copy_((strength.unsqueeze(-1) * math.sqrt(d)) * u)


def scattered_rows(seqlen_q: int, seed: int, count: int = _SCATTERED) -> torch.Tensor:
    """`count` distinct query rows (all of them if fewer), drawn uniformly over the sequence from
    `seed`, ascending (the order the reference returns them in)."""
    rng = random.Random(seed * 7 + 1)
    picked = sorted(rng.sample(range(seqlen_q), min(count, seqlen_q)))
    return torch.tensor(picked, dtype=torch.long)


def random_inputs(config: ShapeConfig, seed: int, device="cuda", kind: str = "normal"):
    """q, k, v of `config` from a seeded generator (regenerable out of the kernel's reach)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = config.spec.torch_dtype
    b, sq, sk, hq, hkv, d = (config.batch, config.seqlen_q, config.seqlen_k, config.heads_q, config.heads_kv,
                             config.head_dim)
    q = torch.randn(b, sq, hq, d, generator=gen, device=device, dtype=torch.float32)
    k = torch.randn(b, sk, hkv, d, generator=gen, device=device, dtype=torch.float32)
    v = torch.randn(b, sk, hkv, d, generator=gen, device=device, dtype=torch.float32)
    if kind == "large":
        q, k = q * 8, k * 8
    elif kind == "peaked":
        rows = torch.randperm(sq, generator=gen, device=device)[:max(1, sq // 4)]
        keys = torch.randint(0, sk, (rows.numel(),), generator=gen, device=device)
        group = hq // hkv
        q[:, rows] = 4 * k[:, keys].repeat_interleave(group, dim=2)
    elif kind == "sink":
        shape_logits(q, k, "sink", gen)
    elif kind not in ("normal", "strided"):
        raise ValueError(f"unknown input kind {kind!r}: use one of {INPUT_KINDS}")
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if kind == "strided":
        q, k, v = (_strided_copy(t) for t in (q, k, v))
    return q, k, v


def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous (batch, seqlen, heads, head_dim) view: heads-major storage
    with a padded row, last dim contiguous and 16-byte aligned, as the kernel contract allows."""
    b, s, h, d = t.shape
    storage = torch.empty(b, h, s + 3, d + 8, device=t.device, dtype=t.dtype)
    view = storage[:, :, 1:s + 1, :d].transpose(1, 2)
    view.copy_(t)
    return view


def check(fn, configs: list[ShapeConfig], seeds: int = 2, softmax_scale: float | None = None,
          base_seed: int | None = None) -> dict:
    """Run `fn(q, k, v, out, lse, scale)` on each config: `seeds` checks per config, their input
    kinds rotating through INPUT_KINDS (small configs get every kind). Returns {"ok", "diagnosis",
    "shapes": [per-check records]}; stops at the first failure."""
    base_seed = random.SystemRandom().randrange(1 << 30) if base_seed is None else base_seed
    records = []
    stream = torch.cuda.Stream()
    for index, config in enumerate(configs):
        small = config.batch * config.seqlen_q * config.heads_q * config.head_dim <= _SMALL_ELEMENTS
        count = max(seeds, len(INPUT_KINDS)) if small else seeds
        for s in range(count):
            seed = base_seed + 1000 * index + s
            kind = INPUT_KINDS[s % len(INPUT_KINDS)] if small else INPUT_KINDS[(index + s) % len(INPUT_KINDS)]
            record = _check_one(fn, config, seed, softmax_scale, stream, kind)
            records.append(record)
            if not record["ok"]:
                return {"ok": False, "diagnosis": f"{config.name} ({kind} inputs, seed {seed}): {record['diagnosis']}",
                        "shapes": records}
    worst = max(records, key=lambda r: r["err"] / max(r["bound"], 1e-12)) if records else None
    summary = f"worst {worst['name']}: err {worst['err']:.2e} <= bound {worst['bound']:.2e}" if worst else ""
    return {"ok": True, "diagnosis": summary, "shapes": records}


def reference(q, k, v, causal: bool, scale: float, rows=None) -> tuple:
    """(fp32 out, fp32 lse, error bound), for the query rows `rows` only if given (a window (start,
    end) or a tensor of row indices, as reference_attention takes): the
    bound is twice what torch's own low-precision attention gets wrong on these inputs, plus 1e-5."""
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, softmax_scale=scale, rows=rows)
    lowp_out, _ = reference_attention(q, k, v, causal=causal, softmax_scale=scale, dtype=q.dtype, rows=rows)
    torch_err = (lowp_out.float() - ref_out).abs().max().item() if ref_out.numel() else 0.0
    return ref_out, ref_lse, 2 * torch_err + 1e-5


def compare(out, lse, ref_out, ref_lse, bound: float) -> tuple[str, float]:
    """("", max error) when out and lse match the reference, else (one-line diagnosis, error).
    NaN never passes; LSE is -inf exactly where the reference's is, never +inf."""
    poisoned = int(out.isnan().sum())
    if poisoned:
        return (f"{poisoned} of {out.numel()} output elements are NaN: never written (the poison) or NaN "
                f"arithmetic"), float("nan")
    diff = (out.float() - ref_out).abs()
    err = diff.max().item() if diff.numel() else 0.0
    if not err <= bound:
        sq, hq, d = out.shape[1], out.shape[2], out.shape[3]
        row = (diff.flatten().argmax().item() // (hq * d)) % sq
        return f"output error {err:.3e} > bound {bound:.3e}; worst at query row {row} of {sq}", err
    bad = int(lse.isnan().sum()) + int((lse == float("inf")).sum())
    if bad:
        return f"LSE holds {bad} NaN or +inf values", err
    ref_masked = ref_lse == float("-inf")
    if not torch.equal(lse == float("-inf"), ref_masked):
        return ("LSE is -inf where the reference is finite, or finite where the reference is -inf "
                "(rows that see no key)"), err
    finite = ~ref_masked
    # fp32 rounding of a large log-sum-exp (logits of hundreds) is ~1e-5 of it: the bound grows with it
    excess = ((lse[finite] - ref_lse[finite]).abs() - LSE_RTOL * ref_lse[finite].abs()).max().item() \
        if finite.any() else 0.0
    if not excess <= LSE_ATOL:
        return f"LSE error {excess:.3e} > {LSE_ATOL:.0e} (+{LSE_RTOL:.0e} relative)", err
    return "", err


def _check_one(fn, config: ShapeConfig, seed: int, softmax_scale, stream, kind: str = "normal") -> dict:
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.head_dim)
    record = {"name": config.name, "seed": seed, "kind": kind, "ok": False, "err": float("nan"), "bound": 0.0,
              "diagnosis": ""}
    strided = kind == "strided"
    with torch.cuda.stream(stream):
        q, k, v = random_inputs(config, seed, kind=kind)
        stale = random_inputs(config, seed + 7919, kind=kind)  # what the buffers hold until the current stream writes
        bq, bk, bv = (_strided_copy(t) if strided else t.clone() for t in stale)
        out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
        out = _strided_copy(out) if strided else out
        lse = torch.full((config.batch, config.heads_q, config.seqlen_q), float("nan"), device="cuda")
        torch.cuda.synchronize()
        torch.cuda._sleep(_SLEEP_CYCLES)
        bq.copy_(q)
        bk.copy_(k)
        bv.copy_(v)
        del q, k, v
        fn(bq, bk, bv, out, lse, scale)
    torch.cuda.synchronize()  # a CUDA error of the candidate surfaces here

    q, k, v = random_inputs(config, seed, kind=kind)  # regenerated: the candidate never saw these tensors
    if not (torch.equal(bq, q) and torch.equal(bk, k) and torch.equal(bv, v)):
        record["diagnosis"] = "the kernel modified its inputs q, k or v"
        return record
    if q.numel() <= _SMALL_ELEMENTS:
        ref_out, ref_lse, bound = reference(q, k, v, config.causal, scale)
        diagnosis, err = compare(out, lse, ref_out, ref_lse, bound)
        record.update(err=err, bound=bound, ok=not diagnosis, diagnosis=diagnosis)
        return record
    # a long sequence: NaN checked everywhere, values on the first and last query rows (the edge
    # tiles, where masking and bounds go wrong), on a window drawn at random, and on rows scattered
    # over the whole sequence (a wrong tile anywhere)
    poisoned = int(out.isnan().sum()) + int(lse.isnan().sum())
    if poisoned:
        record["diagnosis"] = f"{poisoned} output/LSE elements are NaN: never written (the poison) or NaN arithmetic"
        return record
    sq = config.seqlen_q
    start = random.Random(seed).randrange(max(1, sq - _WINDOW + 1))
    windows = [(first, min(sq, first + _WINDOW)) for first in sorted({0, start, max(0, sq - _WINDOW)})]
    picked = scattered_rows(sq, seed)
    row_sets = [(f"query rows {a}-{b}", torch.arange(a, b)) for a, b in windows]
    row_sets.append((f"{picked.numel()} query rows drawn over the sequence", picked))
    for label, rows in row_sets:
        diagnosis, err, bound = check_rows(out, lse, q, k, v, config.causal, scale, rows)
        if record["bound"] == 0.0 or err / bound > record["err"] / max(record["bound"], 1e-12):
            record.update(err=err, bound=bound)
        if diagnosis:
            record["diagnosis"] = f"{label}: {diagnosis}"
            return record
    record["ok"] = True
    return record


def check_rows(out, lse, q, k, v, causal: bool, scale: float, rows: torch.Tensor) -> tuple[str, float, float]:
    """(diagnosis or "", max error, bound) of `out`/`lse` on the query rows `rows` (ascending indices),
    against the fp32 reference of those rows only; a diagnosis names its worst row in the sequence."""
    sq = q.shape[1]
    rows = rows.to(out.device)
    ref_out, ref_lse, bound = reference(q, k, v, causal, scale, rows=rows)
    diagnosis, err = compare(out.index_select(1, rows), lse.index_select(2, rows), ref_out, ref_lse, bound)
    if diagnosis:  # compare names a row of the gathered rows: name it in the sequence instead
        diagnosis = re.sub(r"query row (\d+) of \d+",
                           lambda m: f"query row {int(rows[int(m.group(1))])} of {sq}", diagnosis)
    return diagnosis, err, bound
