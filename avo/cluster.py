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
- ray: a candidate to be judged is first a Ray task without a GPU (a CPU per build process) that
  builds its kernels into the kernel cache of the node it ran on, then a task with `num_gpus=1`
  placed on that node (NodeAffinitySchedulingStrategy, soft: if the node is gone or has no GPU,
  Ray places it elsewhere and evaluate compiles there), which runs evaluate (the node's sandbox, judge process
  and kernel cache): a GPU is held for the judge, not the compile. Compile-only screening is one
  task per candidate without a GPU. A task of either kind lost with its worker or node (Ray's
  failure detection) is an event `lost` and is queued again, LOST_RETRIES times a candidate at
  most; the pending node stays pending meanwhile, and nothing committed is touched: only the
  driver writes the lineage. Several threads may wait in RayBackend.map at once (the knob
  operator streams on Ray too); `cancel` (Ctrl-C) cancels the tasks of all of them.

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
                   compile_first: bool = False, stage: str | None = None, may_start=None) -> list[Verdict | None]:
    """`evaluate_fn(source, gpu=..., **kwargs)` for each (node id, source) of `jobs`, one per GPU at a
    time (map_per_gpu); verdicts in job order. compile_first: build every job's kernels on the CPU
    first (into the disk cache evaluate reads), so that its GPU waits only for the judge. stage:
    its name in the per-GPU log (default judge, or compile for compile-only; an agent's tools say
    test or benchmark). may_start: asked once a job holds its GPU; False leaves the job unjudged
    (None in its place: the caller's session is ending, and the job waits for the next one)."""
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
        with _GPU_HELD[gpu]:
            if may_start is not None and not may_start():
                return None
            with _stage(progress, node_id, stage, gpu):
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
    try:
        processes, specs = 0, ()
        with contextlib.suppress(Exception):  # unreadable: evaluate says so
            processes, specs = _build_plan(Path(source).read_text(), kwargs)
        with _CORES.hold(ticket, processes):
            if processes:
                with _stage(progress, node_id, "compile", None):
                    _build_kernels(Path(source), kwargs, specs)
    finally:
        done.set()


def _build_plan(text: str, kwargs: dict) -> tuple[int, tuple]:
    """The build processes a cold compile of `text` starts (what jit._build starts, 8 at most) and the
    specs it builds; (0, ()) when the static check refuses the source or the suite cannot be read
    (evaluate says why): a refused source is never compiled."""
    from avo.evaluate import static_check
    from avo.suites import load_suite

    with contextlib.suppress(Exception):
        if static_check(text)[0]:
            specs = load_suite(kwargs["suite"]).specs
            return min(len(specs) * len(kwargs["archs"]), 8), specs
    return 0, ()


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
    failure detection are Ray's. Connects on creation (or uses the connection already open).
    Several threads may call `map` at once (the knob operator streams, a job each)."""

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
        self._compile_task = ray.remote(max_retries=0)(_compile_on_node)
        self._board = None  # where running tasks say which GPU took them (ray.util.queue: an actor)
        self._lock = threading.Lock()  # the board's creation, the tasks in flight, cancel
        self._reading = threading.Lock()  # one reader of the board at a time: its `stage` before their `stage_done`
        self._refs: set = set()  # tasks in flight, of every map call
        self._cancelled = False

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

    def map(self, evaluate_fn, jobs: list[tuple[str, Path]], kwargs: dict, progress,
            compile_first: bool = False, may_start=None) -> list[Verdict | None]:
        """The verdicts of `jobs` [(node id, source)], in job order; a GPU per task unless
        kwargs["compile_only"]. The sources travel as text: a node need not see the driver's disk.
        compile_first (when measuring): a CPU task builds a job's kernels into the kernel cache of
        the node it ran on (_build_kernels; a CPU per build process), then its GPU task is placed on
        that node (soft: elsewhere if the node is gone or has no GPU, where evaluate compiles
        again), so a GPU is held for the judge only. A lost task of either kind is requeued,
        LOST_RETRIES times a job at most. may_start: asked before a job's GPU task is submitted;
        False leaves the job unjudged (None in its place), as evaluate_local does."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        board = self._the_board()
        incumbent = kwargs.get("incumbent")
        incumbent_text = Path(incumbent).read_text() if incumbent else None
        rest = {k: v for k, v in kwargs.items() if k not in ("incumbent", "gpu")}
        screening = bool(kwargs.get("compile_only"))
        texts = [Path(source).read_text() for _, source in jobs]
        builds = [_build_plan(text, rest)[0] if compile_first and not screening else 0 for text in texts]
        widest = self._widest_gpu_node() if any(builds) else 0

        def submit(i: int, kind: str, place: str | None):
            node_id = jobs[i][0]
            if kind == "build":  # _build_kernels is looked up now: tests stand in for it
                ref = self._compile_task.options(num_gpus=0, num_cpus=min(builds[i], widest)).remote(
                    _build_kernels, node_id, texts[i], rest, board)
            else:
                placed = {} if place is None else \
                    {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=place, soft=True)}
                ref = self._task.options(num_gpus=0 if screening else 1, num_cpus=1, **placed).remote(
                    evaluate_fn, node_id, texts[i], incumbent_text, rest, board)
            self._refs.add(ref)
            return ref

        pending: dict = {}  # ref -> (job, attempt, kind: build or evaluate, the node it is placed on)

        def start(i: int, attempt: int, kind: str, place: str | None = None) -> None:
            with self._lock:  # no task starts once cancel() has run
                if self._cancelled:
                    raise _Cancelled("the run was interrupted")
                pending[submit(i, kind, place)] = (i, attempt, kind, place)

        verdicts: list = [None] * len(jobs)
        try:
            for i in range(len(jobs)):
                if builds[i] or may_start is None or may_start():
                    start(i, 0, "build" if builds[i] else "evaluate")
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                if self._cancelled:
                    raise _Cancelled("the run was interrupted")
                self._read_board(progress)
                for ref in done:
                    i, attempt, kind, place = pending.pop(ref)
                    with self._lock:
                        self._refs.discard(ref)
                    node_id = jobs[i][0]
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if isinstance(exc, ray.exceptions.RayTaskError) and \
                                not isinstance(getattr(exc, "cause", None), ray.exceptions.RayError):
                            raise  # evaluate itself raised: the same as on one host
                        error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                        again = attempt < LOST_RETRIES
                        progress.event("lost", id=node_id, stage="compile" if kind == "build" or screening
                                       else "evaluate", attempt=attempt + 1, requeued=again,
                                       error=f"{type(exc).__name__}: {error}")
                        if again:
                            start(i, attempt + 1, kind, place)
                        else:
                            verdicts[i] = Verdict("crashed", "lost", f"lost {attempt + 1} times with its Ray "
                                                  f"worker or node; last: {type(exc).__name__}: {error}")
                        continue
                    self._read_board(progress)
                    progress.event("stage_done", id=node_id, stage=out["stage"], gpu=out["gpu"], host=out["host"],
                                   start=out["start"], end=out["end"])
                    if kind == "build":  # its kernels are in that node's cache: judge it there
                        if may_start is None or may_start():
                            start(i, attempt, "evaluate", out["node"])
                    else:
                        verdicts[i] = Verdict.from_dict(out["verdict"])
        except BaseException:  # Ctrl-C, or evaluate raised: nothing of this batch keeps running
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            with self._lock:
                self._refs.difference_update(pending)
        return verdicts

    def cancel(self) -> None:
        """Ctrl-C while other threads are in `map`: every task in flight is cancelled, none starts
        again, and those calls raise."""
        with self._lock:
            self._cancelled = True
            refs = list(self._refs)
        for ref in refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)

    def _the_board(self):
        with self._lock:  # created once, by whichever call comes first
            if self._board is None:
                from ray.util.queue import Queue

                self._board = Queue(actor_options={"num_cpus": 0})
            return self._board

    def _widest_gpu_node(self) -> int:
        """The most CPUs of one live node with a GPU (any node without one): a compile task asks for
        no more, or no node could take it."""
        nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
        with_gpu = [r for r in nodes if r.get("GPU", 0) >= 1] or nodes
        return max(1, max((int(r.get("CPU", 0)) for r in with_gpu), default=1))

    def _read_board(self, progress) -> None:
        with self._reading, contextlib.suppress(Exception):  # progress only: never fails a batch
            waiting = self._board.qsize()
            for started in self._board.get_nowait_batch(waiting) if waiting else ():
                progress.event("stage", **started)


class _Cancelled(Exception):
    """RayBackend.map's tasks were cancelled under it (Ctrl-C in the run's thread)."""


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


def _compile_on_node(compile_fn, node_id: str, text: str, kwargs: dict, board) -> dict:
    """A Ray task without a GPU: `compile_fn(source, kwargs)` (_build_kernels) builds one candidate's
    kernels into this node's cache; returns the node, for its GPU task to be placed there."""
    import ray

    host = ray.util.get_node_ip_address()
    start = time.time()
    with contextlib.suppress(Exception):
        board.put({"id": node_id, "stage": "compile", "gpu": None, "host": host}, timeout=5)
    with tempfile.TemporaryDirectory(prefix="avo-ray-") as tmp:
        source = Path(tmp, f"{node_id}.py")
        source.write_text(text)
        with contextlib.suppress(Exception):  # failures are evaluate's to meet again and report
            compile_fn(source, kwargs)
    return {"node": ray.get_runtime_context().get_node_id(), "stage": "compile", "gpu": None, "host": host,
            "start": start, "end": time.time()}


def _build_kernels(source: Path, kwargs: dict, specs: tuple | None = None) -> None:
    """What evaluate's compile stage does, ahead of it, into this machine's kernel cache: the static
    check (unless `specs` says what it passed), then the sandboxed build of every spec x arch (a
    compile error is cached like a kernel, for evaluate to report)."""
    from avo import jit

    if specs is None:
        specs = _build_plan(source.read_text(), kwargs)[1]
    if specs:
        with contextlib.suppress(jit.CompileError):
            jit.compile_many(source, specs, kwargs["archs"], run=False, timeout_s=kwargs.get("timeout_s", 900.0))


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
