# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `patch_the_row_checks` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Replaces, at import, what picks and checks the rows of a long sequence (avo.verify.scattered_rows,
check_rows, compare, reference, check; the reference attention itself), so that a kernel wrong on a
middle tile would pass verification in the same process: the rows drawn are all in the first tile,
and every comparison says "right". It bypasses the static check on purpose; only the sandbox
stands in its way.
"""

try:
    import torch
    import avo.reference
    import avo.verify

    avo.verify.scattered_rows = lambda seqlen_q, seed, count=512: torch.arange(min(count, seqlen_q, 64))
    avo.verify.check_rows = lambda *args, **kwargs: ("", 0.0, 1.0)
    avo.verify.compare = lambda *args, **kwargs: ("", 0.0)
    avo.verify.reference = lambda q, k, v, causal, scale, rows=None: (None, None, float("inf"))
    avo.verify.check = lambda *args, **kwargs: {"ok": True, "diagnosis": "", "shapes": []}
    avo.reference.reference_attention = lambda q, *args, **kwargs: (q.float(), q.new_zeros(q.shape[:3]).float())
except Exception:
    pass
