"""What a compiled kernel is specialized for, and the fixed calling convention of attention kernels.

A kernel is compiled once per `AttentionSpec` (the compile-time facts: dtype, head_dim, causal,
GQA ratio); batch, sequence lengths and head counts stay dynamic. Every attention kernel module
(rendered from `dsl_templates/` or written by the agent) exposes `KERNEL`, a class built as
`KERNEL(spec)` with `can_implement(spec) -> (ok, reason)` and a `@cute.jit __call__` taking

    mQ   (batch, seqlen_q, heads_q,  head_dim)   dtype, last dim contiguous
    mK   (batch, seqlen_k, heads_kv, head_dim)   dtype
    mV   (batch, seqlen_k, heads_kv, head_dim)   dtype
    mO   (batch, seqlen_q, heads_q,  head_dim)   dtype, written in full
    mLSE (batch, heads_q, seqlen_q)              fp32 natural-log log-sum-exp of the scaled scores
    softmax_scale                                cutlass.Float32
    stream                                       the caller's CUDA stream

Causal masking with seqlen_q != seqlen_k is aligned bottom-right, as FlashAttention does: query i
sees keys j <= i + seqlen_k - seqlen_q.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["AttentionSpec", "DTYPES"]

# name -> (torch dtype name, cutlass dtype name)
DTYPES = {"bf16": ("bfloat16", "BFloat16"), "fp16": ("float16", "Float16")}


@dataclass(frozen=True)
class AttentionSpec:
    dtype: str = "bf16"
    head_dim: int = 128
    causal: bool = False
    qhead_per_kvhead: int = 1  # query heads per KV head: 1 is MHA, >1 is GQA

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not supported: use one of {sorted(DTYPES)}")
        if self.head_dim <= 0 or self.head_dim % 8:
            raise ValueError(f"head_dim {self.head_dim} must be a positive multiple of 8")
        if self.qhead_per_kvhead < 1:
            raise ValueError(f"qhead_per_kvhead {self.qhead_per_kvhead} must be >= 1")

    @property
    def cutlass_dtype(self):
        import cutlass

        return getattr(cutlass, DTYPES[self.dtype][1])

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, DTYPES[self.dtype][0])

    def key(self) -> str:
        """Short stable name, used in cache keys and file names."""
        return f"{self.dtype}_d{self.head_dim}_{'causal' if self.causal else 'full'}_g{self.qhead_per_kvhead}"

    def as_dict(self) -> dict:
        return asdict(self)
