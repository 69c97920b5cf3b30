"""Functions the isolation tests run in a worker process: a good one, a hang, a crash, a raise."""

import ctypes
import os
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
