"""Isolation: a hang is killed at its limit, a crash is recorded, and the next task still runs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avo.worker import WorkerPool, map_per_gpu, run_isolated


def test_ok_result_crosses_the_process_boundary():
    result = run_isolated("tests.worker_tasks:add", {"a": 2, "b": 3}, timeout_s=60)
    assert result.status == "ok" and result.value["sum"] == 5
    assert result.value["pid"] != os.getpid()


def test_hang_is_killed_at_its_limit_then_next_succeeds():
    hung = run_isolated("tests.worker_tasks:hang", {}, timeout_s=2)
    assert hung.status == "timeout" and "killed after 2 s" in hung.error
    assert hung.seconds < 30
    assert run_isolated("tests.worker_tasks:add", {"a": 1, "b": 1}, timeout_s=60).value["sum"] == 2


def test_segfault_is_recorded_as_crashed_then_next_succeeds():
    crashed = run_isolated("tests.worker_tasks:segfault", {}, timeout_s=60)
    assert crashed.status == "crashed" and "SIGSEGV" in crashed.error
    assert run_isolated("tests.worker_tasks:add", {"a": 4, "b": 4}, timeout_s=60).value["sum"] == 8


def test_exception_is_an_error_with_its_message():
    failed = run_isolated("tests.worker_tasks:fail", {}, timeout_s=60)
    assert failed.status == "error" and failed.error == "RuntimeError: candidate exploded"
    assert "Traceback" in failed.stderr_tail
    bad = run_isolated("tests.worker_tasks:not_json", {}, timeout_s=60)
    assert bad.status == "error" and "TypeError" in bad.error


def test_pool_pins_one_worker_per_gpu_and_keeps_order():
    pool = WorkerPool(gpus=[0, 1], timeout_s=60)
    seen = []
    results = pool.map("tests.worker_tasks:add", [{"a": i, "b": 0} for i in range(4)],
                       on_result=lambda i, r: seen.append(i))
    assert [r.value["sum"] for r in results] == [0, 1, 2, 3]
    assert {r.value["gpu"] for r in results} <= {"0", "1"} and sorted(seen) == [0, 1, 2, 3]


def test_map_per_gpu_never_runs_two_items_on_one_gpu_and_raises_a_task_error():
    busy, overlaps = set(), []

    def task(item, gpu):
        if gpu in busy:
            overlaps.append((item, gpu))
        busy.add(gpu)
        time.sleep(0.02)
        busy.discard(gpu)
        return item * 10

    assert map_per_gpu(task, list(range(7)), [0, 1]) == [0, 10, 20, 30, 40, 50, 60]
    assert overlaps == []

    def failing(item, gpu):
        if item == 2:
            raise RuntimeError("evaluator broke")
        return item

    with pytest.raises(RuntimeError, match="evaluator broke"):
        map_per_gpu(failing, [0, 1, 2, 3], [0, 1])


REPO = Path(__file__).resolve().parent.parent
_PARENT = textwrap.dedent("""
    import signal, sys
    from avo.evolve import _interrupt_on
    from avo.worker import run_isolated
    _interrupt_on(signal.SIGTERM)
    try:
        run_isolated("tests.worker_tasks:hang", {"pid_file": sys.argv[1]}, timeout_s=600)
    except KeyboardInterrupt:
        sys.exit(130)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; only its parent has not reaped it yet
        return f.read().split(") ")[1][0] != "Z"


def _wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_worker_never_outlives_the_process_that_runs_it(how, tmp_path):
    """SIGTERM reaches the evaluator as an interrupt that kills the worker's group; SIGKILL leaves
    no handler to run, so the worker dies with its parent (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(pid_file)], cwd=REPO)
    assert _wait_for(lambda: pid_file.exists() and pid_file.read_text()), "the worker never started"
    worker = int(pid_file.read_text())
    assert _alive(worker)
    parent.send_signal(how)
    assert parent.wait(timeout=30) == (130 if how == signal.SIGTERM else -signal.SIGKILL)
    assert _wait_for(lambda: not _alive(worker)), f"worker {worker} outlived its parent ({how.name})"


def test_a_result_arrives_only_on_the_pipe():
    forged = run_isolated("tests.worker_tasks:forge_result", {}, timeout_s=60)
    assert forged.status == "crashed" and forged.value is None  # files and stdout are not a channel


def test_the_worker_gets_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HF_TOKEN", "hf-test")
    monkeypatch.setenv("AVO_CACHE_DIR", "/tmp/avo-cache-test")
    env = run_isolated("tests.worker_tasks:environment", {}, timeout_s=60).value["env"]
    assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env
    assert env["AVO_CACHE_DIR"] == "/tmp/avo-cache-test"  # avo's own settings stay: no candidate runs here
