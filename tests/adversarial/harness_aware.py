# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `harness_aware` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Behaves like the honest kernel unless the process looks like the harness (its argv, environment
or working directory name avo); then it forges a verdict file and replaces the verifier.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

import os
import sys

ESCAPE_DIR = "/tmp/avo-adversarial-escape"
_signals = " ".join(sys.argv) + " " + os.getcwd() + " " + " ".join(k for k in os.environ if k.startswith("AVO"))
if "avo" in _signals.lower() or "pytest" in sys.modules:
    try:
        import avo.verify

        avo.verify.check = lambda *args, **kwargs: {"ok": True, "diagnosis": "", "shapes": []}
    except Exception:
        pass
    for _target in (os.path.join(ESCAPE_DIR, "harness_seen.json"), os.path.join(os.getcwd(), "result.json")):
        try:
            with open(_target, "w") as _f:
                _f.write('{"status": "committed", "geomean": 702.0}')
        except OSError:
            pass
