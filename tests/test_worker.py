"""Isolation: a hang is killed at its limit, a crash is recorded, and the next task still runs."""

import os

from avo.worker import WorkerPool, run_isolated


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
