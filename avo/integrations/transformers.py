"""`attn_implementation="avo"` for Hugging Face transformers models.

    import avo.integrations.transformers  # registers "avo" once, on import
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="avo", dtype=torch.bfloat16)

Registers `attention_forward` in transformers' AttentionInterface, and FlashAttention's mask
function in its AttentionMaskInterface, so the model hands over either no mask (every token real)
or a 2-D padding mask, never a dense 4-D one. Without padding, a layer is one `avo.attention`
call on transposed views (no copies; GQA as is). With padding, each row's real tokens go through
`avo.attention_varlen` (gathered, one launch per row: correct, not fast). Causal masks are aligned
bottom-right, which is what a decoder with a KV cache needs.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

import avo

__all__ = ["NAME", "attention_forward", "register"]

NAME = "avo"


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, sliding_window: int | None = None,
                      softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (batch, heads, seqlen_q, head_dim), key and value
    (batch, heads_kv, seqlen_k, head_dim); returns ((batch, seqlen_q, heads, head_dim), None)."""
    for name, value_, what in (("dropout", dropout, "attention dropout"), ("softcap", softcap, "logit softcapping"),
                               ("sliding_window", sliding_window, "sliding-window attention"),
                               ("s_aux", kwargs.get("s_aux"), "attention sinks")):
        if value_:
            raise ValueError(f"attn_implementation='avo' has no {what} ({name}={value_!r} in "
                             f"{type(module).__name__}); use 'sdpa' for this model")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (batch, seqlen, heads, d)
    if attention_mask is None:
        return avo.attention(q, k, v, causal=causal, softmax_scale=scaling), None
    if attention_mask.dim() != 2:
        raise ValueError(f"attn_implementation='avo' takes a 2-D padding mask, got shape {tuple(attention_mask.shape)}")
    return _padded(q, k, v, attention_mask.bool(), causal, scaling), None


def _padded(q, k, v, mask, causal, scale):
    """Attention of each row's real tokens only: the mask covers the keys (batch, seqlen_k), the
    queries are its last seqlen_q columns (left padding in generation, right padding in training)."""
    batch, seqlen_q = q.shape[:2]
    keep_k, keep_q = mask[:, -k.shape[1]:], mask[:, -seqlen_q:]
    lens_q, lens_k = keep_q.sum(1), keep_k.sum(1)
    zero = lens_q.new_zeros(1)
    cu_q, cu_k = torch.cat([zero, lens_q.cumsum(0)]), torch.cat([zero, lens_k.cumsum(0)])
    # boolean indexing packs the real tokens row after row, as cu_seqlens describes them
    out_packed = avo.attention_varlen(q[keep_q], k[keep_k], v[keep_k], cu_q, cu_k, causal=causal,
                                      softmax_scale=scale)
    out = q.new_zeros(q.shape)
    out[keep_q] = out_packed
    return out


def register(name: str = NAME) -> None:
    """Make `attn_implementation=name` select avo (done for "avo" on import)."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)


register()
