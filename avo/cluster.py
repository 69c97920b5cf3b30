"""Candidates spread over GPUs: the GPUs of this host (`evaluation.backend: local`) or every GPU of a
Ray cluster (`ray`). Both run the same cascade, `avo.evaluate.evaluate` (sandboxed compile, a fresh
judge process per candidate), and hand the verdicts back to the driver, avo.evolve's Run, the only
writer of the lineage.

- local: `avo.worker.map_per_gpu` dispatches, a thread per GPU of `evaluation.gpus`, each taking the
  next candidate when its GPU is free: a candidate's judge (correctness, timing, the sanitizer)
  never shares its GPU with another candidate's. A commit is decided against an incumbent timed on
  the same GPU, in the same judge process, in alternating samples (avo.judge): never against a
  number from another GPU. A candidate compiles before it asks for its GPU, side by side with
  others on the CPU, bounded by the cores in one place (`_CORES`: one build process per two cores,
  avo.jit's own rule), so a GPU's slot is held for its judge only; the knob operator keeps
  `evaluation.lookahead` more candidates per GPU compiling while it judges (avo.evolve).
- ray: one Ray task per candidate with `num_gpus=1` (0 for compile-only screening). Ray places it
  on a free GPU of some node, where it runs evaluate there (the node's sandbox, judge process and
  kernel cache). A task lost with its worker or node (Ray's failure detection) is an event `lost`
  and is queued again, LOST_RETRIES times at most; the pending node stays pending meanwhile, and
  nothing committed is touched: only the driver writes the lineage.

Agent steps side by side (avo.evolve, one per GPU of `evaluation.gpus`) each keep to one GPU:
their test, benchmark, profile and submit runs go through evaluate_local or hold_gpu with that
GPU, so they are in the same log and never share a GPU with another step's.

The per-GPU log is in the run's events: `stage` when a candidate starts a stage (id, stage, gpu,
host), `stage_done` with its start and end (wall clock of the host that ran it). `gpu_overlaps`
reads it back: two candidates on one GPU at once would be listed there.
`python -m avo.cluster overlaps runs/<name>/events.jsonl` prints them (exit 1 when any).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from avo.evaluate import Verdict
from avo.worker import map_per_gpu

__all__ = ["LOST_RETRIES", "RayBackend", "evaluate_local", "gpu_overlaps", "hold_gpu", "read_intervals"]

LOST_RETRIES = 2  # a candidate lost with its worker or node is queued again this many times at most


# -- one host -----------------------------------------------------------------------------------


class _Cores:
    """Build processes the compiles of candidates may run at once (one per two cores), handed out
    in the order the compiles were asked for: a GPU takes its candidates in that order too."""

    def __init__(self, units: int):
        self.units, self.free = units, units
        self._cond = threading.Condition()
        self._issued = self._served = 0

    def ticket(self) -> int:
        with self._cond:
            self._issued += 1
            return self._issued - 1

    @contextlib.contextmanager
    def hold(self, ticket: int, n: int):
        """Wait for this ticket's turn and `n` free units (0: just the turn); every ticket must come here."""
        n = min(n, self.units)
        with self._cond:
            self._cond.wait_for(lambda: self._served == ticket and self.free >= n)
            self._served += 1
            self.free -= n
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.free += n
                self._cond.notify_all()


_CORES = _Cores(max(1, (os.cpu_count() or 2) // 2))
# One judge per GPU in this process, also across concurrent evaluate_local calls (map_per_gpu keeps
# the items of one call apart; two callers at once, e.g. steps of two agents, wait here).
_GPU_HELD: collections.defaultdict = collections.defaultdict(threading.Lock)


def evaluate_local(evaluate_fn, jobs: list[tuple[str, Path]], kwargs: dict, gpus, progress,
                   compile_first: bool = False, stage: str | None = None) -> list[Verdict]:
    """`evaluate_fn(source, gpu=..., **kwargs)` for each (node id, source) of `jobs`, one per GPU at a
    time (map_per_gpu); verdicts in job order. compile_first: build every job's kernels on the CPU
    first (into the disk cache evaluate reads), so that its GPU waits only for the judge. stage:
    its name in the per-GPU log (default judge, or compile for compile-only; an agent's tools say
    test or benchmark)."""
    stage = stage or ("compile" if kwargs.get("compile_only") else "judge")
    built = {}
    if compile_first and stage == "judge":
        for node_id, source in jobs:  # daemon threads: an interrupted run does not wait for them
            built[node_id] = threading.Event()
            threading.Thread(target=_compile, args=(node_id, source, kwargs, progress, _CORES.ticket(),
                                                    built[node_id]), daemon=True).start()

    def task(job, gpu):
        node_id, source = job
        if node_id in built:
            built[node_id].wait()
        with hold_gpu(gpu, progress, node_id, stage):
            return evaluate_fn(source, gpu=gpu, **kwargs)

    # free GPUs first: a one-candidate call (a step of one of several agents) takes an idle GPU, not gpus[0]
    return map_per_gpu(task, jobs, sorted(gpus, key=lambda gpu: _GPU_HELD[gpu].locked()))


@contextlib.contextmanager
def hold_gpu(gpu, progress, node_id: str, stage: str):
    """Hold `gpu` for one stage of `node_id` (waiting while another candidate of this process holds
    it), logged in the per-GPU log: every evaluate_local call, and an agent step's profile tool."""
    with _GPU_HELD[gpu], _stage(progress, node_id, stage, gpu):
        yield


def _compile(node_id: str, source: Path, kwargs: dict, progress, ticket: int, done: threading.Event) -> None:
    """What evaluate's compile stage does, ahead of it: static check, then the sandboxed build of
    every spec x arch. Failures are left for evaluate to meet again and report."""
    from avo import jit
    from avo.evaluate import static_check
    from avo.suites import load_suite

    try:
        processes, specs, archs = 0, (), kwargs["archs"]
        with contextlib.suppress(Exception):  # unreadable, refused or no suite: evaluate says so
            if static_check(Path(source).read_text())[0]:
                specs = load_suite(kwargs["suite"]).specs
                processes = min(len(specs) * len(archs), 8)  # what jit._build starts for a cold build
        with _CORES.hold(ticket, processes):
            if processes:
                with _stage(progress, node_id, "compile", None), contextlib.suppress(jit.CompileError):
                    jit.compile_many(source, specs, archs, run=False, timeout_s=kwargs.get("timeout_s", 900.0))
    finally:
        done.set()


@contextlib.contextmanager
def _stage(progress, node_id: str, stage: str, gpu, host: str | None = None):
    start = time.time()
    progress.event("stage", id=node_id, stage=stage, gpu=gpu, host=host)
    try:
        yield
    finally:
        progress.event("stage_done", id=node_id, stage=stage, gpu=gpu, host=host, start=start, end=time.time())


# -- many hosts: Ray ----------------------------------------------------------------------------


class RayBackend:
    """Candidates as Ray tasks on a cluster (`ray start` on each host); placement, scheduling and
    failure detection are Ray's. Connects on creation (or uses the connection already open)."""

    def __init__(self, address: str | None):
        import ray

        if not ray.is_initialized():
            # None: a Ray instance of this host's own; options for a new head are refused on a connect
            extra = {"include_dashboard": False} if address is None else {}
            try:
                ray.init(address=address, logging_level="WARNING", **extra)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                from avo.config import ConfigError

                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ConfigError(f"evaluation.ray_address {address!r}: no Ray cluster there ({first}); start one "
                                  "with `ray start --head`, or leave ray_address unset for one of this host's own") \
                    from None
        self._ray = ray
        self._task = ray.remote(max_retries=0)(_on_node)  # a lost task is requeued here, where it is logged
        self._board = None  # where running tasks say which GPU took them (ray.util.queue: an actor)

    def slots(self, compile_only: bool) -> int:
        """Candidates the cluster runs at once: its GPUs, or for screening its CPUs."""
        resources = self._ray.cluster_resources()
        return max(1, int(resources.get("CPU" if compile_only else "GPU", 0)))

    def gpu_arch(self) -> str | None:
        """The arch of the cluster's GPUs (asked of one of them), None without any."""
        if self._ray.cluster_resources().get("GPU", 0) < 1:
            return None
        probe = self._ray.remote(_node_arch).options(num_gpus=1, max_retries=1)
        return self._ray.get(probe.remote(), timeout=600)

    def map(self, evaluate_fn, jobs: list[tuple[str, Path]], kwargs: dict, progress) -> list[Verdict]:
        """The verdicts of `jobs` [(node id, source)], in job order; a GPU per task unless
        kwargs["compile_only"]. The sources travel as text: a node need not see the driver's disk."""
        ray = self._ray
        if self._board is None:
            from ray.util.queue import Queue

            self._board = Queue(actor_options={"num_cpus": 0})
        incumbent = kwargs.get("incumbent")
        incumbent_text = Path(incumbent).read_text() if incumbent else None
        rest = {k: v for k, v in kwargs.items() if k not in ("incumbent", "gpu")}
        task = self._task.options(num_gpus=0 if kwargs.get("compile_only") else 1, num_cpus=1)
        texts = [Path(source).read_text() for _, source in jobs]

        def submit(i: int):
            return task.remote(evaluate_fn, jobs[i][0], texts[i], incumbent_text, rest, self._board)

        pending = {submit(i): (i, 0) for i in range(len(jobs))}
        verdicts: list = [None] * len(jobs)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                self._read_board(progress)
                for ref in done:
                    i, attempt = pending.pop(ref)
                    node_id = jobs[i][0]
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if isinstance(exc, ray.exceptions.RayTaskError) and \
                                not isinstance(getattr(exc, "cause", None), ray.exceptions.RayError):
                            raise  # evaluate itself raised: the same as on one host
                        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                        again = attempt < LOST_RETRIES
                        progress.event("lost", id=node_id, attempt=attempt + 1, requeued=again,
                                       error=f"{type(exc).__name__}: {error}")
                        if again:
                            pending[submit(i)] = (i, attempt + 1)
                        else:
                            verdicts[i] = Verdict("crashed", "lost", f"lost {attempt + 1} times with its Ray "
                                                  f"worker or node; last: {type(exc).__name__}: {error}")
                        continue
                    self._read_board(progress)
                    progress.event("stage_done", id=node_id, stage=out["stage"], gpu=out["gpu"], host=out["host"],
                                   start=out["start"], end=out["end"])
                    verdicts[i] = Verdict.from_dict(out["verdict"])
        except BaseException:  # Ctrl-C, or evaluate raised: nothing of this batch keeps running
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return verdicts

    def _read_board(self, progress) -> None:
        with contextlib.suppress(Exception):  # progress only: never fails a batch
            for started in self._board.get_nowait_batch(self._board.qsize()):
                progress.event("stage", **started)


def _on_node(evaluate_fn, node_id: str, text: str, incumbent_text: str | None, kwargs: dict, board) -> dict:
    """A Ray task: evaluate one candidate on this node. Ray set CUDA_VISIBLE_DEVICES to the task's
    GPU, and the judge process inherits it (gpu=None: no other pinning)."""
    import ray

    ids = ray.get_gpu_ids()
    gpu = ids[0] if ids else None
    host = ray.util.get_node_ip_address()
    stage = "compile" if kwargs.get("compile_only") else "evaluate"
    start = time.time()
    with contextlib.suppress(Exception):
        board.put({"id": node_id, "stage": stage, "gpu": gpu, "host": host}, timeout=5)
    with tempfile.TemporaryDirectory(prefix="avo-ray-") as tmp:
        source = Path(tmp, f"{node_id}.py")
        source.write_text(text)
        incumbent = None
        if incumbent_text is not None:
            incumbent = Path(tmp, "incumbent.py")
            incumbent.write_text(incumbent_text)
        verdict = evaluate_fn(source, incumbent=incumbent, gpu=None, **kwargs)
    return {"verdict": verdict.as_dict(), "stage": stage, "gpu": gpu, "host": host, "start": start,
            "end": time.time()}


def _node_arch() -> str | None:
    from avo import jit

    return jit.current_arch()


# -- the per-GPU log ----------------------------------------------------------------------------


def read_intervals(events_path: str | Path) -> list[dict]:
    """The `stage_done` records of a run's events.jsonl."""
    records = []
    for line in Path(events_path).read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "stage_done":
                records.append(record)
    return records


def gpu_overlaps(intervals: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of stages of different candidates on one GPU of one host whose times overlap (none,
    when the dispatch is right). Stages without a GPU (compiles) are not counted."""
    by_gpu: dict = {}
    for record in intervals:
        if record.get("gpu") is not None:
            by_gpu.setdefault((record.get("host"), record["gpu"]), []).append(record)
    found = []
    for records in by_gpu.values():
        records.sort(key=lambda r: r["start"])
        for i, first in enumerate(records):
            for second in records[i + 1:]:
                if second["start"] >= first["end"]:
                    break
                if second["id"] != first["id"]:
                    found.append((first, second))
    return found


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "overlaps":
        print("usage: python -m avo.cluster overlaps runs/<name>/events.jsonl", file=sys.stderr)
        return 2
    intervals = read_intervals(argv[1])
    found = gpu_overlaps(intervals)
    gpus = sorted({(r.get("host") or "", r["gpu"]) for r in intervals if r.get("gpu") is not None})
    for first, second in found:
        print(f"overlap on {first.get('host') or 'this host'} gpu {first['gpu']}: {first['id']} {first['stage']} "
              f"[{first['start']:.3f}, {first['end']:.3f}] and {second['id']} {second['stage']} "
              f"[{second['start']:.3f}, {second['end']:.3f}]")
    print(f"{len(intervals)} stages, {sum(r.get('gpu') is not None for r in intervals)} on "
          f"{len(gpus)} GPU(s): {len(found)} overlap(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
