"""The attention every kernel must compute, in fp32 torch: the ground truth of every check.

Causal masking is aligned bottom-right (query i sees keys j <= i + seqlen_k - seqlen_q), as
FlashAttention does. A query row that sees no key has output 0 and log-sum-exp -inf.
"""

from __future__ import annotations

import math

import torch

__all__ = ["reference_attention", "attention_flops"]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        softmax_scale: float | None = None, dtype: torch.dtype = torch.float32,
                        chunk: int = 1024, rows: tuple[int, int] | torch.Tensor | None = None):
    """(out, lse) in `dtype` for (batch, seqlen, heads, head_dim) inputs; GQA by repeating KV heads.
    Query rows are processed `chunk` at a time to bound the memory of the score matrix; `rows`
    limits the work to some query rows (a spot check of a long sequence): a window (start, end), or
    a 1-D tensor of row indices (rows drawn over the whole sequence), in the output's row order."""
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    if heads_q % heads_kv:
        raise ValueError(f"heads_q {heads_q} is not a multiple of heads_kv {heads_kv}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    group = heads_q // heads_kv
    kf = k.to(dtype).repeat_interleave(group, dim=2).transpose(1, 2)  # (b, h, sk, d)
    vf = v.to(dtype).repeat_interleave(group, dim=2).transpose(1, 2)
    if isinstance(rows, torch.Tensor):
        index = rows.to(device=q.device, dtype=torch.long)
    else:
        first, last = rows if rows is not None else (0, seqlen_q)
        index = torch.arange(first, last, device=q.device)
    outs, lses = [], []
    for start in range(0, index.numel(), chunk):
        at = index[start:start + chunk]
        qf = q.index_select(1, at).to(dtype).transpose(1, 2)  # (b, h, m, d)
        scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
        if causal:  # bottom-right aligned: row i sees keys up to i + sk - sq
            cols = torch.arange(seqlen_k, device=q.device)[None, :]
            scores = scores.masked_fill(cols > at[:, None] + seqlen_k - seqlen_q, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # -inf on rows with no visible key
        probs = torch.exp(scores - lse.unsqueeze(-1).clamp_min(torch.finfo(dtype).min))
        probs = torch.nan_to_num(probs, nan=0.0)
        outs.append(torch.matmul(probs, vf).transpose(1, 2))
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=2)


def attention_flops(batch: int, heads_q: int, seqlen_q: int, seqlen_k: int, head_dim: int, causal: bool) -> float:
    """Matmul FLOPs of the forward pass: 4*b*h*sq*sk*d, halved for causal with sq == sk (the
    convention of the FlashAttention benchmarks, which the AVO paper follows)."""
    flops = 4.0 * batch * heads_q * seqlen_q * seqlen_k * head_dim
    return flops / 2 if causal else flops
