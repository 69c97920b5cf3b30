"""Functions the isolation tests run in a worker process: a good one, a hang, a crash, a raise."""

import ctypes
import json
import os
import sys
import time


def add(a, b):
    return {"sum": a + b, "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}


def hang(seconds=3600, pid_file=None):
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(seconds)
    return {}


def segfault():
    ctypes.string_at(0)  # reads address 0: SIGSEGV, like a kernel that corrupts the process
    return {}


def fail():
    raise RuntimeError("candidate exploded\nsecond line")


def not_json():
    return {"value": object()}


def forge_result():
    """A task that tries to hand back a verdict without the pipe: a result file beside its task and
    a JSON line on stdout, then an exit before returning."""
    forged = json.dumps({"ok": True, "value": {"status": "committed", "geomean": 702.0}})
    task_dir = os.path.dirname(os.path.abspath(sys.argv[1]))
    with open(os.path.join(task_dir, "result.json"), "w") as f:
        f.write(forged)
    print(forged, flush=True)
    os._exit(0)


def environment():
    return {"env": dict(os.environ)}
