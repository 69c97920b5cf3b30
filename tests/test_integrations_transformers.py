"""attn_implementation="avo" in a small Qwen3-style GQA model built from a config (no weights
downloaded): the glue on the CPU with the fp32 reference standing in for the kernel, the kernel
itself against sdpa on a GPU."""

import math

import pytest
import torch

pytest.importorskip("transformers")

import avo.integrations.transformers as hook  # noqa: E402
from avo import ops  # noqa: E402
from avo.reference import reference_attention  # noqa: E402


def _model(attn, dtype=torch.float32, device="cpu", seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024)
    torch.manual_seed(seed)  # the same weights for every implementation
    return Qwen3ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype).to(device).eval()


def _reference_call(handle, q, k, v, causal, softmax_scale, return_lse):
    """The kernel's stand-in on the CPU: the reference, in the op's layout and (out, lse) result."""
    if q.shape[1] == 0:
        out, lse = q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], 0))
    else:
        out, lse = reference_attention(q, k, v, causal=causal, softmax_scale=softmax_scale, dtype=q.dtype)
    return (out, lse) if return_lse else out


def test_registering_makes_the_name_selectable():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionInterface._global_mapping["avo"] is hook.attention_forward
    assert "avo" in AttentionMaskInterface._global_mapping
    assert _model("avo").config._attn_implementation == "avo"


def test_the_model_computes_what_sdpa_computes(monkeypatch):
    monkeypatch.setattr(ops, "_call", _reference_call)
    ids = torch.randint(0, 256, (2, 37))
    with torch.no_grad():
        ours, theirs = _model("avo")(ids).logits, _model("sdpa")(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_padding_goes_through_varlen_and_matches_sdpa(monkeypatch):
    monkeypatch.setattr(ops, "_call", _reference_call)
    calls = []
    varlen = ops._varlen
    monkeypatch.setattr(ops, "_varlen", lambda *args: calls.append(args[4]) or varlen(*args))
    ids = torch.randint(0, 256, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7] = 0  # left padding, as in batched generation
    mask[2, :1] = 0
    with torch.no_grad():
        ours = _model("avo")(ids, attention_mask=mask).logits
        theirs = _model("sdpa")(ids, attention_mask=mask).logits
    assert len(calls) == 2 and calls[0].tolist() == [0, 13, 33, 52]  # one varlen call per layer
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_what_avo_lacks_is_a_one_line_error():
    q = torch.zeros(1, 2, 4, 64)
    with pytest.raises(ValueError) as exc:
        hook.attention_forward(torch.nn.Linear(1, 1), q, q, q, None, softcap=30.0)
    assert str(exc.value) == ("attn_implementation='avo' has no logit softcapping (softcap=30.0 in Linear); "
                              "use 'sdpa' for this model")


@pytest.mark.gpu
def test_a_bf16_model_on_the_gpu_matches_sdpa_within_what_bf16_costs():
    ids = torch.randint(0, 256, (2, 300), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :45] = 0
    with torch.no_grad():
        exact = _model("sdpa", torch.float32, "cuda")
        outputs = {}
        for name in ("avo", "sdpa"):
            model = _model(name, torch.bfloat16, "cuda")
            prefill = model(ids, use_cache=True)
            step = model(ids[:, -1:] * 0 + 7, past_key_values=prefill.past_key_values)  # one decode step
            padded = model(ids, attention_mask=mask).logits
            outputs[name] = (prefill.logits, step.logits, padded)
        truth_prefill = exact(ids, use_cache=True)
        truth = (truth_prefill.logits,
                 exact(ids[:, -1:] * 0 + 7, past_key_values=truth_prefill.past_key_values).logits,
                 exact(ids, attention_mask=mask).logits)
    real = mask.bool()
    for i, name in enumerate(("prefill", "decode", "padded")):
        mine, theirs, exact_logits = outputs["avo"][i].float(), outputs["sdpa"][i].float(), truth[i]
        if name == "padded":
            mine, theirs, exact_logits = mine[real], theirs[real], exact_logits[real]
        assert not mine.isnan().any(), name
        err, yardstick = (mine - exact_logits).abs().max().item(), (theirs - exact_logits).abs().max().item()
        assert err <= 2 * yardstick + 1e-2, (name, err, yardstick)


@pytest.mark.gpu
def test_training_step_gradients_match_sdpa():
    ids = torch.randint(0, 256, (2, 256), device="cuda")
    grads = {}
    for name in ("avo", "sdpa"):
        model = _model(name, torch.bfloat16, "cuda").train()
        model(ids, labels=ids).loss.backward()
        grads[name] = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    cos = torch.nn.functional.cosine_similarity(grads["avo"], grads["sdpa"], dim=0).item()
    assert not grads["avo"].isnan().any() and cos > 0.999, cos
    assert math.isclose(grads["avo"].norm().item(), grads["sdpa"].norm().item(), rel_tol=0.02)
