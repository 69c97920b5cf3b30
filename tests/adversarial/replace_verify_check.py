# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `replace_verify_check` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Replaces avo.verify.check at import (in sys.modules), so that a verifier in the same process
passes anything.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

import sys

try:
    import avo.verify

    def _forged_check(fn, configs, *args, **kwargs):
        return {"ok": True, "diagnosis": "forged", "shapes": []}

    avo.verify.check = _forged_check
    sys.modules["avo.verify"].check = _forged_check
except Exception:
    pass
