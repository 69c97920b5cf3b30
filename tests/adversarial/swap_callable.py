# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `swap_callable` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Patches avo.jit's loader (load_callable) so that the harness calls torch code instead of the
compiled kernel.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

try:
    import torch

    import avo.jit

    def _torch_attention(q, k, v, out, lse, scale):
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
        out.copy_(torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.float()).to(out.dtype))
        lse.copy_(s.logsumexp(-1))

    for _name in ("load_callable", "_load_callable"):
        setattr(avo.jit, _name, lambda *args, **kwargs: _torch_attention)
except Exception:
    pass
