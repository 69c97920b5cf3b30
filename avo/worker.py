"""Process isolation for anything that runs a candidate on the GPU.

`run_isolated("module:function", args, timeout_s)` runs the function in a fresh Python process
(its own process group, pinned to one GPU when asked) and returns a `WorkerResult`: ok with the
function's JSON result, error (it raised), timeout (killed at the limit, with its whole process
group) or crashed (died by a signal or exited without a result: segfault, illegal address, a
corrupted CUDA context). Whatever happens, the caller's process and CUDA context are untouched.

The result (and progress: `progress(stage=...)` from the running function) comes back on a pipe
the parent created and the child inherited: there is no result file anyone else could write, and
a verdict that did not arrive on it does not exist. The child's environment is scrubbed of
secrets (API keys, tokens).

`python -m avo.worker TASK.json FD` is the child side.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WorkerPool", "WorkerResult", "kill_live_workers", "map_per_gpu", "progress", "run_isolated",
           "worker_environment"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class WorkerResult:
    status: str  # ok | error | timeout | crashed
    value: dict | None = None
    error: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    stderr_tail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        if self.ok:
            return "ok"
        return f"{self.status}: {self.error}".strip()


def run_isolated(function: str, args: dict | None = None, timeout_s: float = 600.0, gpu: int | None = None,
                 env: dict | None = None, wrap: list[str] | None = None) -> WorkerResult:
    """Run `function(**args)` in a fresh process; `wrap` prefixes the command (e.g. compute-sanitizer).
    The last `progress(...)` the function reported is in `extra["progress"]`, also after a crash."""
    with tempfile.TemporaryDirectory(prefix="avo-worker-") as tmp:
        task_path, stderr_path = Path(tmp, "task.json"), Path(tmp, "stderr")
        task_path.write_text(json.dumps({"function": function, "args": args or {}}))
        child_env = worker_environment(env)
        if gpu is not None:
            child_env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        read_fd, write_fd = os.pipe()
        channel = _Channel(read_fd)
        started = time.monotonic()
        with open(stderr_path, "w") as stderr:
            try:
                proc = subprocess.Popen([*(wrap or []), sys.executable, "-m", "avo.worker", str(task_path),
                                         str(write_fd)], cwd=REPO, env=child_env, stdout=stderr, stderr=stderr,
                                        start_new_session=True, pass_fds=(write_fd,))
            finally:
                os.close(write_fd)  # the child holds the only write end now
            with _live_lock:
                _live.add(proc)
            try:
                returncode = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                returncode, timed_out = proc.wait(), True
            except BaseException:  # Ctrl-C or SIGTERM of the caller: the candidate must not outlive it
                _kill_group(proc)
                proc.wait()
                raise
            finally:
                with _live_lock:
                    _live.discard(proc)
        channel.join()
        seconds = time.monotonic() - started
        tail = stderr_path.read_text(errors="replace")[-4000:]
        extra = {"progress": channel.progress}
        if timed_out:
            return WorkerResult("timeout", error=f"killed after {timeout_s:.0f} s", seconds=seconds,
                                returncode=returncode, stderr_tail=tail, extra=extra)
        result = channel.result
        if result is not None:
            if result.get("ok"):
                return WorkerResult("ok", value=result["value"], seconds=seconds, returncode=returncode,
                                    stderr_tail=tail, extra=extra)
            return WorkerResult("error", error=str(result.get("error", "")), seconds=seconds, returncode=returncode,
                                stderr_tail=str(result.get("traceback", ""))[-4000:], extra=extra)
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
        return WorkerResult("crashed", error=f"process died ({how}) {last[:300]}".strip(), seconds=seconds,
                            returncode=returncode, stderr_tail=tail, extra=extra)


# Never handed to a worker: anything that looks like a credential. (avo's own settings, such as
# AVO_CACHE_DIR, stay: a worker runs compiled artifacts and the harness, never a candidate's Python,
# which gets its own allow-listed environment in the compile sandbox.)
_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION)", re.IGNORECASE)


def worker_environment(env: dict | None = None) -> dict:
    """The caller's environment (or `env`) without secrets, the repo on PYTHONPATH."""
    base = dict(os.environ if env is None else env)
    clean = {k: v for k, v in base.items() if not _SECRET.search(k)}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    return clean


class _Channel:
    """Reads the worker's pipe in a thread: progress lines, then one result line."""

    def __init__(self, fd: int):
        self.progress: dict = {}
        self.result: dict | None = None
        self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "r", errors="replace") as stream:
            for line in stream:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("progress"), dict):
                    self.progress.update(message["progress"])
                elif isinstance(message, dict) and "ok" in message:
                    self.result = message

    def join(self) -> None:
        self._thread.join(timeout=30)


_channel_out = None  # the child's end of the result pipe


def progress(**facts) -> None:
    """From inside a worker: report how far the task got (the parent keeps the latest facts)."""
    if _channel_out is not None:
        _channel_out.write(json.dumps({"progress": facts}) + "\n")
        _channel_out.flush()


# Workers running now, so that an interrupted caller can kill them (they have their own sessions,
# which keeps a timeout's kill inside the candidate but also keeps Ctrl-C from reaching them).
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def kill_live_workers() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def map_per_gpu(task, items: list, gpus, on_result=None) -> list:
    """`task(item, gpu)` for every item, one thread per GPU, each taking the next item when its GPU
    is free, so two items never share a GPU; results in item order. The first exception a task
    raises is raised here once every thread has stopped. Interrupted (Ctrl-C, SIGTERM), it kills
    the workers the threads are waiting on, so that none outlives the caller."""
    results: list = [None] * len(items)
    errors: list[BaseException] = []
    todo: queue.Queue = queue.Queue()
    for index, item in enumerate(items):
        todo.put((index, item))

    def drain(gpu):
        while not errors:
            try:
                index, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[index] = task(item, gpu)
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)
                return
            if on_result:
                on_result(index, results[index])

    threads = [threading.Thread(target=drain, args=(gpu,), daemon=True) for gpu in list(gpus)[:max(1, len(items))]]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # the workers run in other threads: stop them before unwinding
        kill_live_workers()
        raise
    if errors:
        raise errors[0]
    return results


class WorkerPool:
    """One isolated worker at a time per GPU; tasks are taken in order by whichever GPU is free."""

    def __init__(self, gpus: list[int] | None = None, timeout_s: float = 600.0):
        self.gpus = gpus if gpus else [None]
        self.timeout_s = timeout_s

    def map(self, function: str, arg_list: list[dict], on_result=None) -> list[WorkerResult]:
        return map_per_gpu(lambda args, gpu: run_isolated(function, args, self.timeout_s, gpu=gpu),
                           arg_list, self.gpus, on_result)


def _die_with_parent() -> None:
    """Linux: be killed when the evaluating process dies, even by SIGKILL, so that a hung
    candidate never keeps the GPU after the run is gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _main(task_path: str, fd: str) -> int:
    global _channel_out
    _die_with_parent()
    _channel_out = os.fdopen(int(fd), "w")
    task = json.loads(Path(task_path).read_text())
    module_name, _, attr = task["function"].partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
        value = function(**task["args"])
        payload = {"ok": True, "value": value}
        line = json.dumps(payload)  # the result must cross the process boundary as JSON
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        line = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {first[:500]}",
                           "traceback": traceback.format_exc()})
    _channel_out.write(line + "\n")
    _channel_out.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:3]))
