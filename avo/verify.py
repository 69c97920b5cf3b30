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
- LSE must match where finite, and be -inf exactly where the reference is.
Fresh seeds on every call of `check`, so a kernel that caches outputs fails the second time.
"""

from __future__ import annotations

import math
import random

import torch

from avo.reference import reference_attention
from avo.suites import ShapeConfig

__all__ = ["LSE_ATOL", "check", "random_inputs"]

LSE_ATOL = 2e-3
_SLEEP_CYCLES = 2_000_000  # ~1 ms: long enough that a kernel on another stream runs first


def random_inputs(config: ShapeConfig, seed: int, device="cuda"):
    """q, k, v of `config`, standard normal, from a seeded generator (regenerable out of reach)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = config.spec.torch_dtype
    q = torch.randn(config.batch, config.seqlen_q, config.heads_q, config.head_dim, generator=gen, device=device,
                    dtype=dtype)
    k = torch.randn(config.batch, config.seqlen_k, config.heads_kv, config.head_dim, generator=gen, device=device,
                    dtype=dtype)
    v = torch.randn(config.batch, config.seqlen_k, config.heads_kv, config.head_dim, generator=gen, device=device,
                    dtype=dtype)
    return q, k, v


def check(fn, configs: list[ShapeConfig], seeds: int = 2, softmax_scale: float | None = None,
          base_seed: int | None = None) -> dict:
    """Run `fn(q, k, v, out, lse, scale)` on each config with `seeds` fresh seeds.
    Returns {"ok", "diagnosis", "shapes": [per-shape records]}; stops at the first failure."""
    base_seed = random.SystemRandom().randrange(1 << 30) if base_seed is None else base_seed
    records = []
    stream = torch.cuda.Stream()
    for index, config in enumerate(configs):
        for s in range(seeds):
            seed = base_seed + 1000 * index + s
            record = _check_one(fn, config, seed, softmax_scale, stream)
            records.append(record)
            if not record["ok"]:
                return {"ok": False, "diagnosis": f"{config.name} (seed {seed}): {record['diagnosis']}",
                        "shapes": records}
    worst = max(records, key=lambda r: r["err"] / max(r["bound"], 1e-12)) if records else None
    summary = f"worst {worst['name']}: err {worst['err']:.2e} <= bound {worst['bound']:.2e}" if worst else ""
    return {"ok": True, "diagnosis": summary, "shapes": records}


def _check_one(fn, config: ShapeConfig, seed: int, softmax_scale, stream) -> dict:
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.head_dim)
    record = {"name": config.name, "seed": seed, "ok": False, "err": float("nan"), "bound": 0.0, "diagnosis": ""}
    with torch.cuda.stream(stream):
        q, k, v = random_inputs(config, seed)
        stale = random_inputs(config, seed + 7919)  # what the buffers hold until the current stream writes
        bq, bk, bv = (t.clone() for t in stale)
        out = torch.full_like(q, float("nan"))
        lse = torch.full((config.batch, config.heads_q, config.seqlen_q), float("nan"), device="cuda")
        torch.cuda.synchronize()
        torch.cuda._sleep(_SLEEP_CYCLES)
        bq.copy_(q)
        bk.copy_(k)
        bv.copy_(v)
        del q, k, v
        fn(bq, bk, bv, out, lse, scale)
    torch.cuda.synchronize()  # a CUDA error of the candidate surfaces here

    q, k, v = random_inputs(config, seed)  # regenerated: the candidate never saw these tensors
    if not (torch.equal(bq, q) and torch.equal(bk, k) and torch.equal(bv, v)):
        record["diagnosis"] = "the kernel modified its inputs q, k or v"
        return record
    poisoned = int(out.isnan().sum())
    if poisoned:
        record["diagnosis"] = (f"{poisoned} of {out.numel()} output elements are NaN: never written "
                               f"(the poison) or NaN arithmetic")
        return record
    ref_out, ref_lse = reference_attention(q, k, v, causal=config.causal, softmax_scale=scale)
    lowp_out, _ = reference_attention(q, k, v, causal=config.causal, softmax_scale=scale, dtype=q.dtype)
    err = (out.float() - ref_out).abs().max().item()
    torch_err = (lowp_out.float() - ref_out).abs().max().item()
    bound = 2 * torch_err + 1e-5
    record.update(err=err, bound=bound, torch_err=torch_err)
    if not err <= bound:
        where = (out.float() - ref_out).abs().flatten().argmax().item()
        row = (where // (config.heads_q * config.head_dim)) % config.seqlen_q
        record["diagnosis"] = (f"output error {err:.3e} > bound {bound:.3e} (2 x torch {q.dtype} error "
                               f"{torch_err:.3e}); worst at query row {row} of {config.seqlen_q}")
        return record
    finite = ref_lse.isfinite()
    if not torch.equal(lse.isfinite(), finite):
        record["diagnosis"] = "LSE is finite where the reference is -inf (or the reverse), or LSE holds NaN"
        return record
    lse_err = (lse[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
    record["lse_err"] = lse_err
    if not lse_err <= LSE_ATOL:
        record["diagnosis"] = f"LSE error {lse_err:.3e} > {LSE_ATOL:.0e}"
        return record
    record["ok"] = True
    return record
