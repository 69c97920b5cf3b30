"""Timing on the GPU: medians of triton's do_bench (which flushes L2 before every run), taken in
interleaved rounds so that a candidate and its incumbent (and the baselines) see the same clocks,
temperature and neighbours; the spread across rounds is the noise a gain must exceed.

Baselines measured in the same process: FA4 (flash_attn.cute, extra `baselines`), cuDNN and FA2
(torch SDPA with the CUDNN_ATTENTION and FLASH_ATTENTION backends).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch

from avo.suites import ShapeConfig

__all__ = ["BASELINES", "DENSE_BF16_PEAK_TFLOPS", "baseline_fn", "peak_tflops", "time_interleaved"]

BASELINES = ("fa4", "cudnn", "fa2")

# Dense BF16/FP16 tensor-core peak by device name (vendor datasheets, without sparsity). A kernel
# that "beats" this is a timing bug or skipped work, never a win.
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "GH200": 989.4, "B200": 2250.0,
                          "B300": 2250.0}


def peak_tflops(device_name: str | None = None) -> float:
    name = device_name or torch.cuda.get_device_name()
    for key, value in DENSE_BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return 2250.0  # unknown chip: the largest known peak, so nothing honest is rejected


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 3, warmup_ms: int = 25,
                     rep_ms: int = 100) -> dict[str, dict]:
    """{name: {"ms": median over rounds of do_bench medians, "rounds": [...], "spread": (max-min)/ms}}.
    The order of the callables rotates every round."""
    from triton.testing import do_bench

    names = list(fns)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_round[name].append(float(do_bench(fns[name], warmup=warmup_ms, rep=rep_ms, return_mode="median")))
    out = {}
    for name, times in per_round.items():
        ms = statistics.median(times)
        out[name] = {"ms": ms, "rounds": times, "spread": (max(times) - min(times)) / ms if ms > 0 else math.inf}
    return out


def baseline_fn(name: str, config: ShapeConfig, q, k, v, softmax_scale: float):
    """A zero-argument callable running baseline `name` on (batch, seqlen, heads, head_dim) inputs,
    or None with the reason when that baseline is not available here."""
    if name == "fa4":
        try:
            from flash_attn.cute import flash_attn_func
        except Exception as exc:  # the extra is optional
            return None, f"FA4 not importable ({type(exc).__name__}: {exc}); pip install -e '.[baselines]'"

        def run_fa4():
            with torch.inference_mode():
                return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=config.causal)

        return run_fa4, ""
    if name in ("cudnn", "fa2"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.CUDNN_ATTENTION if name == "cudnn" else SDPBackend.FLASH_ATTENTION
        if config.causal and config.seqlen_q != config.seqlen_k:
            return None, "SDPA's is_causal aligns top-left; only sq == sk is comparable"
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        gqa = config.heads_q != config.heads_kv

        def run_sdpa():
            with sdpa_kernel(backend), torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=config.causal, scale=softmax_scale, enable_gqa=gqa)

        try:
            run_sdpa()
            torch.cuda.synchronize()
        except Exception as exc:
            return None, f"{name} backend refused this shape ({type(exc).__name__}: {str(exc)[:120]})"
        return run_sdpa, ""
    raise ValueError(f"unknown baseline {name!r}: use one of {', '.join(BASELINES)}")
