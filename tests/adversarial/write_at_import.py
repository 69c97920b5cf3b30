# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `write_at_import` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Writes files at import: an outside directory, /tmp, the home directory, the repository.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

import os

ESCAPE_DIR = "/tmp/avo-adversarial-escape"
for _target in (os.path.join(ESCAPE_DIR, "escaped.txt"), "/tmp/avo-adversarial-escaped.txt",
                os.path.join(os.path.expanduser("~"), "avo-adversarial-escaped.txt"),
                os.path.join(os.getcwd(), "avo-adversarial-escaped.txt")):
    try:
        with open(_target, "w") as _f:
            _f.write("written from a candidate kernel module at import\n")
    except OSError:
        pass
