"""`python -m avo.evolve --config configs/evolve_mha_sm90.yaml`: the evolutionary search.

Each step an operator produces a candidate from the lineage (the agent: a tool-using model that
edits the kernel; knobs: a model-free search of the template's knob space), the cascade evaluates
it (avo.evaluate) and the lineage records it, committed or not. The supervisor watches the steps
and redirects the agent when it stalls or cycles.

Everything a run writes is crash-safe: the lineage is rewritten atomically after every node (a
node is written as `pending` before its evaluation starts), run state after every step. After a
crash, a kill or Ctrl-C, `python -m avo.evolve --resume runs/<name>` continues where it stopped.

The knob operator streams when measuring (Run.knobs_streaming): per GPU (of `evaluation.gpus`, or
of the Ray cluster), one proposal is judged while `evaluation.lookahead` more compile on the CPU;
compile-only screening goes in batches, one proposal per slot. With the agent operator and several
GPUs (`evaluation.gpus`, local backend), one step runs per GPU at once, each on its own candidate
file and GPU (avo.workbench); what they share, the lineage and the run state, is written under one
lock (`Run.lock`), and a commit is recorded only while the incumbent it was judged against is still
the incumbent (`Run.judge`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import signal
import sys
import threading
import time
from pathlib import Path

from avo import jit
from avo.atomic import atomic_write
from avo.cluster import RayBackend, evaluate_local
from avo.config import ConfigError, RunConfig, load_config, save_config
from avo.evaluate import Verdict, evaluate
from avo.lineage import Candidate, Lineage, LineageError
from avo.progress import Progress
from avo.suites import SuiteError, load_suite

__all__ = ["Run", "main"]


class Run:
    """One evolution run: its config, its directory, the shared lineage and the loop."""

    def __init__(self, config: RunConfig, evaluate_fn=evaluate, progress: Progress | None = None,
                 resume: bool = False, stop_after_s: float | None = None):
        self.config = config
        # this session's own time limit (a scheduler's or a device call's): past it nothing new is
        # proposed and the candidates in flight finish, so none is cut off and recorded `crashed`
        self.stop_after_s = stop_after_s
        self.dir = Path(config.run_dir)
        self.suite = load_suite(config.suite)
        self.lineage = Lineage.load(config.archive)
        self.evaluate_fn = _redacting(evaluate_fn)  # verdicts quote compiler and worker output
        self.lock = self.lineage.lock  # the lineage and the run state, as steps side by side write them
        self._in_flight = 0  # agent steps running in other threads, each about to spend a candidate
        self.rng = random.Random(config.random_seed)
        self.state = self._load_state() if resume else {"candidates": 0, "tokens": 0, "elapsed_s": 0.0, "steps": []}
        self.backend = RayBackend(config.evaluation.ray_address) if config.evaluation.backend == "ray" else None
        self.gpu_arch = self.backend.gpu_arch() if self.backend else jit.current_arch()
        self.compile_only = self.gpu_arch != config.arch
        self.progress = progress or Progress(self.dir / "events.jsonl", f"avo evolve: {config.name}")
        self._session_start = time.monotonic()  # reset by each save_state (elapsed_s accumulates)
        self._began = self._session_start  # this session's start, for stop_after_s
        (self.dir / "candidates").mkdir(parents=True, exist_ok=True)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _load_state(self) -> dict:
        path = self.dir / "state.json"
        if not path.exists():
            raise ConfigError(f"{self.dir} has no state.json: nothing to resume (start it with --config)")
        return json.loads(path.read_text())

    def save_state(self) -> None:
        with self.lock:
            self.state["elapsed_s"] = self.state.get("elapsed_s", 0.0) + time.monotonic() - self._session_start
            self._session_start = time.monotonic()
            atomic_write(self.dir / "state.json", json.dumps(self.state, indent=1))

    def incumbent(self) -> Candidate | None:
        if self.compile_only:  # nothing can be committed without a GPU: the newest screened node leads
            screened = [n for n in self.lineage.nodes("screened") if n.suite == self.config.suite]
            return self.lineage.best(self.config.suite, self.config.arch) or (screened[-1] if screened else None)
        return self.lineage.best(self.config.suite, self.config.arch)

    def slots(self) -> int:
        """Candidates evaluated at once: one per GPU of evaluation.gpus here (one in all when
        screening: each compile already uses the cores), or the Ray cluster's GPUs (CPUs to screen)."""
        if self.backend is not None:
            return self.backend.slots(self.compile_only)
        return 1 if self.compile_only else len(self.config.evaluation.gpus)

    def agent_slots(self) -> int:
        """Agent steps run at once: one per GPU of evaluation.gpus, each step on its own GPU; one
        when screening or on Ray (the agent's tools run on this host)."""
        return self.slots() if self.backend is None else 1

    def incumbent_source(self, node_id: str | None = None) -> Path | None:
        """The source of the incumbent (or of the committed node `node_id`)."""
        best = self.lineage.get(node_id) if node_id else self.lineage.best(self.config.suite, self.config.arch)
        return self.lineage.root / best.source_path if best else None

    def out_of_budget(self) -> str | None:
        budget, state = self.config.budget, self.state
        elapsed = state.get("elapsed_s", 0.0) + time.monotonic() - self._session_start
        if state["candidates"] + self._in_flight >= budget.candidates:
            return f"candidate budget reached ({budget.candidates})"
        if elapsed >= budget.wall_hours * 3600:
            return f"wall-time budget reached ({budget.wall_hours} h)"
        if state["tokens"] >= budget.tokens:
            return f"token budget reached ({budget.tokens})"
        if self._past_stop():
            return (f"this session's time limit reached (--stop-after {self.stop_after_s:g} s); "
                    f"--resume {self.config.run_dir} goes on")
        return None

    def recover_interrupted(self) -> list[str]:
        """Nodes of this run left `pending` by a crash or kill: recorded as crashed, never lost (the
        ones a session deferred on purpose wait for judge_deferred)."""
        recovered = []
        with self.lock:
            for node in self.lineage.nodes("pending"):
                if node.extra.get("run") == self.config.name and not node.extra.get("deferred"):
                    self.lineage.update(node.id, status="crashed",
                                        diagnosis="the run stopped (crash, kill or Ctrl-C) while this was evaluated")
                    recovered.append(node.id)
        return recovered

    # -- one candidate -------------------------------------------------------------------------
    def reserve(self, operator: str, parents: list[str], source_text: str, **fields) -> Candidate:
        """Write the candidate's source and a pending node before anything runs."""
        with self.lock:
            node_id = self.lineage.new_id()
            path = self.dir / "candidates" / f"{node_id}.py"
            atomic_write(path, source_text)
            node = Candidate(id=node_id, parents=parents, operator=operator, status="pending",
                             source_hash=jit.source_hash(source_text), source_path=str(path.resolve()),
                             arch=self.config.arch, suite=self.config.suite,
                             extra={"run": self.config.name}, **fields)
            return self.lineage.add(node)

    def judge(self, node: Candidate, source: Path | None = None, gpu: int | None = None,
              deferrable: bool = False) -> Verdict | None:
        """Evaluate a reserved node (on `gpu`, else on a free GPU of evaluation.gpus or of the Ray
        cluster) and record the verdict; returns it. It is judged against the incumbent with the
        lineage's commit bar for it (Lineage.commit_bar: the tolerance left between the incumbent
        and the best so far). A commit is recorded only while the incumbent it was judged against
        is still the incumbent: when a step on another GPU committed in the meantime, the candidate
        is judged again, on the same GPU (on Ray, wherever Ray places it), against the new
        incumbent and with its bar (event `rejudge`), until its verdict is no commit or its
        incumbent is still the latest. The check and the record hold the run's lock, so no commit
        can land between them. deferrable: a node whose GPU comes free only after this session's
        --stop-after time is not judged (None): it stays pending, marked deferred, and the next
        session judges it first (Run.judge_deferred)."""
        source = source or Path(node.source_path)
        earlier: list[str | None] = []  # incumbents it was judged against before this one
        while True:
            with self.lock:
                best, bar = self._incumbent_and_bar()
            verdict = self._evaluate([(node, source)], best, bar, gpus=None if gpu is None else (gpu,),
                                     may_start=(lambda: not self._past_stop()) if deferrable else None)[0]
            if verdict is None:
                self._defer(node)
                return None
            with self.lock:
                now = self.lineage.best(self.config.suite, self.config.arch)
                if verdict.status != "committed" or _id(now) == _id(best):
                    node.extra["judged_against"] = _id(best)
                    if earlier:
                        node.extra["rejudged"] = earlier
                        verdict.diagnosis = (f"{verdict.diagnosis} (judged again against {_id(best)}: another step "
                                             f"committed it while this was judged against {earlier[-1]})").strip()
                    self.record(node, verdict, source.read_text())
                    return verdict
            earlier.append(_id(best))
            self.progress.event("rejudge", id=node.id, judged_against=_id(best), incumbent=_id(now), gpu=gpu,
                                ratio=verdict.ratio)

    def judge_batch(self, items: list[tuple[Candidate, Path | None]]) -> list[Verdict]:
        """Evaluate reserved nodes at once, each against the same incumbent, then record them (here
        only: a Ray node never writes the lineage). Commits are recorded slowest first, so the
        latest commit (the next incumbent) is the fastest of the batch."""
        with self.lock:
            best, bar = self._incumbent_and_bar()
        verdicts = self._evaluate(items, best, bar)
        order = sorted(range(len(items)), key=lambda i: (verdicts[i].status == "committed", verdicts[i].ratio or 0.0))
        for i in order:
            node, source = items[i]
            node.extra["judged_against"] = _id(best)
            self.record(node, verdicts[i], (source or Path(node.source_path)).read_text())
        return verdicts

    def _past_stop(self) -> bool:
        """This session's --stop-after time has passed: nothing new is proposed, and no judge is
        started (it would run past the session's own limit: a judge takes up to evaluation.timeout_s)."""
        return self.stop_after_s is not None and time.monotonic() - self._began >= self.stop_after_s

    def _defer(self, node: Candidate) -> None:
        with self.lock:
            self.lineage.update(node.id, extra={**node.extra, "deferred": True},
                                diagnosis="not judged yet: this session's --stop-after time passed while it "
                                          "waited for a GPU; --resume judges it first")
        self.progress.event("deferred", id=node.id)

    def deferred(self) -> list[Candidate]:
        """This run's nodes left unjudged at a session's --stop-after time, oldest first."""
        return [n for n in self.lineage.nodes("pending")
                if n.extra.get("run") == self.config.name and n.extra.get("deferred")]

    def judge_deferred(self) -> None:
        """The nodes an earlier session deferred, judged side by side (one per GPU) before anything
        new is proposed, from the sources written when they were reserved. A source gone or
        changed since (its hash is on the node) is not judged: the node is recorded crashed, so a
        file edited between sessions can never be committed under a proposal it is not."""
        nodes = self.deferred()
        if not nodes:
            return
        self.progress.event("note", message=f"judging {len(nodes)} candidate(s) the last session deferred: "
                            + ", ".join(n.id for n in nodes))
        intact = []
        for node in nodes:
            node.extra.pop("deferred", None)
            path = Path(node.source_path)
            text = path.read_text() if path.is_file() else None
            if text is not None and jit.source_hash(text) == node.source_hash:
                intact.append(node)
                continue
            what = "is gone" if text is None else "changed"
            self.record(node, Verdict("crashed", "reserve", f"not judged: its source {what} after it was reserved "
                                      f"and deferred ({path})"), text or "")
        if intact:
            self.judge_batch([(node, None) for node in intact])

    def _incumbent_and_bar(self) -> tuple[Candidate | None, float]:
        """The incumbent of the run's suite and arch, and the lower bound a ratio to it must clear."""
        best = self.lineage.best(self.config.suite, self.config.arch)
        return best, self.lineage.commit_bar(best, self.config.suite, self.config.arch)

    def _evaluate(self, items: list[tuple[Candidate, Path | None]], best: Candidate | None, bar: float,
                  gpus: tuple[int, ...] | None = None, may_start=None) -> list[Verdict | None]:
        """The verdicts of reserved nodes against the committed node `best` (None: no incumbent) with
        the commit bar `bar`, on `gpus` (default evaluation.gpus) or on the Ray cluster."""
        cfg = self.config.evaluation
        incumbent = self.lineage.root / best.source_path if best else None
        archs = tuple(dict.fromkeys((self.config.arch, *self.config.compile_archs)))
        kwargs = dict(suite=self.config.suite, archs=archs, incumbent=incumbent,
                      compile_only=True if self.compile_only else None, timeout_s=cfg.timeout_s, seeds=cfg.seeds,
                      rounds=cfg.rounds, baselines=cfg.baselines if incumbent is None else (), commit_bar=bar)
        jobs = [(node.id, source or Path(node.source_path)) for node, source in items]
        if self.backend is None:  # this host: one isolated worker per GPU of evaluation.gpus
            return evaluate_local(self.evaluate_fn, jobs, kwargs,
                                  (None,) if self.compile_only else gpus or cfg.gpus, self.progress,
                                  compile_first=self.evaluate_fn.__wrapped__ is evaluate, may_start=may_start)
        # a Ray cluster: a task per candidate, on whichever GPU Ray finds free (compiled first by a
        # CPU task, on the node its GPU task is then placed on)
        return self.backend.map(self.evaluate_fn, jobs, kwargs, self.progress,
                                compile_first=self.evaluate_fn.__wrapped__ is evaluate, may_start=may_start)

    def record(self, node: Candidate, verdict: Verdict, source_text: str) -> Candidate:
        with self.lock:
            verdict.apply_to(node)
            self.lineage.add(node, source_text=source_text if node.status == "committed" else None)
            self.state["candidates"] += 1
            self.progress.event("candidate", id=node.id, operator=node.operator, status=node.status,
                                geomean=node.geomean, ratio=verdict.ratio, diagnosis=node.diagnosis,
                                tokens=node.cost.get("tokens"), cost_usd=node.cost.get("cost_usd"))
            if node.status == "committed":
                self.progress.event("incumbent", id=node.id, geomean=node.geomean)
                if verdict.baselines:
                    from avo.evaluate import geomean

                    self.progress.event("baselines", geomean={k: geomean(v.values())
                                                              for k, v in verdict.baselines.items()
                                                              if len(v) == len(verdict.scores)})
            self.save_state()
            return node

    # -- the loop ------------------------------------------------------------------------------
    def ensure_seed(self) -> Candidate | None:
        if self.incumbent() is not None:
            return self.incumbent()
        seed = self.config.seed
        if seed.node:
            text, parents, template, knobs = self.lineage.source(seed.node), [seed.node], None, {}
        else:
            # the template's seed table (per-spec choices: GQA packed, causal swizzled) under the config's overrides
            knobs_obj = jit.seed_knobs(seed.template, seed.knobs, spec=self.suite.specs[0])
            text = jit.render(seed.template, knobs_obj).read_text()
            parents, template, knobs = [], seed.template, dataclasses.asdict(knobs_obj)
        node = self.reserve("seed", parents, text, template=template, knobs=knobs, rationale="the seed")
        verdict = self.judge(node)
        if verdict.status not in ("committed", "screened"):
            raise RuntimeError(f"the seed failed: {verdict.status}: {verdict.diagnosis}")
        return self.lineage.get(node.id)

    def _reserve_proposal(self, operator, proposal) -> Candidate:
        """A knob proposal rendered and reserved as a pending node; the assignments the operator
        skipped on the way (can_implement's reasons) go to the events."""
        for skipped in proposal.skipped:
            self.progress.event("skipped", **_skip_reason(skipped))
        text = jit.render(operator.template, proposal.knobs).read_text()
        return self.reserve("knobs", proposal.parents, text, template=operator.template,
                            knobs=dataclasses.asdict(proposal.knobs), rationale=proposal.rationale)

    def step_knobs(self, operator) -> bool:
        """One proposal per slot (never past the candidate budget), evaluated side by side."""
        incumbent = self.incumbent()
        room = self.config.budget.candidates - self.state["candidates"]
        batch = max(1, min(self.slots(), room))
        nodes = []
        for _ in range(batch):
            proposal = operator.propose(self.lineage, incumbent.id if incumbent else None)
            if proposal is None:
                break
            nodes.append((self._reserve_proposal(operator, proposal), None))
        if not nodes:
            self.state["stop_reason"] = "knob space exhausted around the committed parents"
            return False
        self.judge_batch(nodes)
        return True

    def step_agent(self, redirect) -> None:
        from avo.workbench import run_step

        run_step(self, redirect)  # reserve a node, run the model's step, record it (avo.workbench)

    def agent_side_by_side(self) -> None:
        """Agent steps until the budget is spent, one per GPU at once: a thread per GPU of
        evaluation.gpus runs step after step on that GPU (run_step with its gpu), each step with its
        own candidate file and the supervisor's redirect from its thread's previous step. A step
        is started only while the candidates recorded plus the steps in flight leave room in the
        budget. An error in one thread lets the others finish their steps, then is raised here."""
        from avo.workbench import run_step

        stop = threading.Event()

        def steps_on(gpu: int) -> None:
            redirect = None
            while not stop.is_set():
                with self.lock:
                    if self.out_of_budget() is not None:
                        return
                    self._in_flight += 1
                try:
                    run_step(self, redirect, gpu=gpu)
                finally:
                    with self.lock:
                        self._in_flight -= 1
                redirect = self._supervise()

        self._side_by_side([(f"avo-agent-gpu{gpu}", lambda gpu=gpu: steps_on(gpu))
                            for gpu in self.config.evaluation.gpus], stop)

    def knobs_streaming(self, operator) -> str | None:
        """The knob operator without a barrier between batches: per GPU, 1 + evaluation.lookahead
        threads (pinned to it on this host's evaluation.gpus; on Ray, as many per GPU of the
        cluster, each task placed by Ray). Each proposes against the incumbent of the moment (under
        the run lock: no two threads propose the same knobs, since a reserved node counts as
        tried), compiles on the CPU (this host's pool, or a CPU task of Ray's) while the GPUs judge
        other threads' candidates, then holds a GPU for its own judge (Run.judge: commits
        serialized, a commit that raced another judged again). A GPU thus waits for a compile only
        when compiles are slower than judges. Returns the stop reason when the knob space ran out,
        None when a budget did; an error in one thread stops the others after their candidates and
        is raised."""
        stop, exhausted = threading.Event(), []

        def propose():
            """A reserved node, or None: out of budget, or no proposal while nothing is in flight."""
            while not stop.is_set():
                with self.lock:
                    if self.out_of_budget() is not None:
                        return None
                    incumbent = self.incumbent()
                    proposal = operator.propose(self.lineage, incumbent.id if incumbent else None)
                    if proposal is not None:
                        self._in_flight += 1
                        return self._reserve_proposal(operator, proposal)
                    if self._in_flight == 0:  # nothing can commit and open new space around the incumbent
                        exhausted.append("knob space exhausted around the committed parents")
                        stop.set()
                        return None
                stop.wait(0.5)  # a candidate in flight may commit: new space around the new incumbent
            return None

        def worker(gpu: int | None) -> None:
            while (node := propose()) is not None:
                try:
                    self.judge(node, gpu=gpu, deferrable=True)
                finally:
                    with self.lock:
                        self._in_flight -= 1

        per_gpu = 1 + self.config.evaluation.lookahead
        # on Ray, gpu None: Ray places each judge on a free GPU of the cluster
        gpus = [(f"gpu{gpu}", gpu) for gpu in self.config.evaluation.gpus] if self.backend is None else \
            [(f"ray{j}", None) for j in range(self.backend.slots(False))]
        self._side_by_side([(f"avo-knobs-{label}-{i}", lambda gpu=gpu: worker(gpu))
                            for i in range(per_gpu) for label, gpu in gpus], stop)
        return exhausted[0] if exhausted else None

    def _side_by_side(self, targets: list, stop: threading.Event) -> None:
        """Run each (thread name, function) of `targets` in a thread of its own until all return. The
        first error one raises sets `stop` (the others finish what they hold, then stop) and is
        raised here. Interrupted (Ctrl-C, SIGTERM): `stop` is set, no worker process or Ray task
        outlives the run, and the interrupt goes on."""
        from avo.worker import kill_live_workers

        errors: list[BaseException] = []

        def guarded(fn) -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the loop's thread
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=guarded, args=(fn,), name=name, daemon=True) for name, fn in targets]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        except BaseException:
            stop.set()
            kill_live_workers()
            if self.backend is not None:
                self.backend.cancel()
            raise
        if errors:
            raise errors[0]

    def loop(self) -> str:
        operator_name = self.config.resolved_operator()
        mode = "compile-only screening (no GPU of this arch here: nothing can be measured or committed)" \
            if self.compile_only else f"measuring on {self.gpu_arch}"
        self.progress.event("start", run=self.config.name, operator=operator_name, suite=self.config.suite,
                            arch=self.config.arch, mode=mode, archive=str(self.lineage.root))
        if operator_name == "knobs" and not self.config.endpoint.base_url:
            self.progress.event("note", message="no endpoint configured: the offline knob operator runs")
        for node_id in self.recover_interrupted():
            self.progress.event("recovered", id=node_id, status="crashed")
        if self.compile_only:
            archs = dict.fromkeys((self.config.arch, *self.config.compile_archs))
            self.progress.event("note", message=f"compile-only: each candidate compiles {len(self.suite.specs)} "
                                f"specs x {len(archs)} arch(s); the time per candidate is told after the first")
        started, done = time.monotonic(), self.state["candidates"]
        self.ensure_seed()
        self.judge_deferred()
        self._say_how_long(started, done)
        redirect = None
        knob_operator = None
        if operator_name == "knobs":
            from avo.operators import KnobOperator

            template = self.incumbent().template or self.config.seed.template
            knob_operator = KnobOperator(template, self.suite.specs, self.rng)
        if knob_operator is None and self.agent_slots() > 1:
            self.agent_side_by_side()
        # the knob operator streams when measuring (compiles overlap judges); when screening without
        # a GPU it goes in batches of one proposal per slot
        streams = knob_operator is not None and not self.compile_only
        reason = self.knobs_streaming(knob_operator) if streams else None
        while reason is None and (reason := self.out_of_budget()) is None:
            if knob_operator is not None:
                if not self.step_knobs(knob_operator):
                    reason = self.state["stop_reason"]
                    break
            else:
                self.step_agent(redirect)
                redirect = self._supervise()
            self._say_how_long(started, done)
        self.state["stop_reason"] = reason
        self.save_state()
        best = self.incumbent()
        self.progress.event("stop", reason=reason, best=best.id if best else None,
                            geomean=best.geomean if best else 0.0, candidates=self.state["candidates"])
        return reason

    def _say_how_long(self, started: float, done: int) -> None:
        """Once, after this session's first evaluated candidate of a compile-only run: seconds per
        candidate here and what the rest of the budget would take (a CPU run can last hours)."""
        count = self.state["candidates"] - done
        if not self.compile_only or count <= 0 or getattr(self, "_told", False):
            return
        self._told = True
        each = (time.monotonic() - started) / count
        left = self.config.budget.candidates - self.state["candidates"]
        hours = min(left * each / 3600, self.config.budget.wall_hours)
        self.progress.event("note", message=f"about {each:.0f} s per candidate here; the {left} left in "
                            f"budget.candidates take about {hours:.1f} h (--candidates N for fewer; Ctrl-C "
                            f"stops, --resume {self.config.run_dir} continues)")

    def _supervise(self):
        from avo.workbench import supervise

        return supervise(self)


def _id(node: Candidate | None) -> str | None:
    return node.id if node is not None else None


def _redacting(evaluate_fn):
    """evaluate_fn whose verdicts carry no secrets (diagnoses quote compiler and worker output);
    the function it wraps is its __wrapped__."""
    if getattr(evaluate_fn, "redacts", False):
        return evaluate_fn

    def evaluate(*args, **kwargs):
        from avo import tools

        verdict = evaluate_fn(*args, **kwargs)
        secrets = tools.secret_values()
        verdict.diagnosis = tools.redact(verdict.diagnosis, secrets)
        if verdict.correctness:
            verdict.correctness = json.loads(tools.redact(json.dumps(verdict.correctness, default=str), secrets))
        return verdict

    evaluate.redacts, evaluate.__wrapped__ = True, evaluate_fn
    return evaluate


def _skip_reason(text: str) -> dict:
    """A knob assignment can_implement refused, as the operator reports it ("<knobs JSON>: why"):
    the reason for the log line, the knobs kept in events.jsonl only."""
    try:
        knobs, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return {"reason": text[:160]}
    return {"reason": text[end:].lstrip(": ")[:160], "knobs": knobs}


def _own_archive(config: RunConfig, overrides: list[str]) -> tuple[RunConfig, str | None]:
    """Without a GPU of the run's arch nothing is measured, only screened: such a run keeps its own
    archive under its run dir rather than adding screened nodes to the tracked archive/, unless
    the command line names an archive. Returns the config and what to tell the user."""
    gpu = RayBackend(config.evaluation.ray_address).gpu_arch() if config.evaluation.backend == "ray" \
        else jit.current_arch()
    if gpu == config.arch or any(o.strip().startswith("archive=") for o in overrides):
        return config, None
    if Path(config.archive).resolve() != (jit.REPO / "archive").resolve():
        return config, None
    own = str(Path(config.run_dir) / "archive")
    return dataclasses.replace(config, archive=own), (
        f"no {config.arch} GPU here ({gpu or 'no GPU'}): candidates are compiled only (screened), nothing is "
        f"measured or committed; the lineage goes to {own}, not the tracked archive/ (--set archive=DIR to choose)")


def _interrupt_on(*signals) -> None:
    """Ctrl-C and SIGTERM (`timeout`, `kill`, a scheduler) both stop the run cleanly: set
    explicitly because a shell starts background jobs with SIGINT ignored, which Python inherits."""
    def stop(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in signals:
        signal.signal(signum, stop)


def main(argv=None, evaluate_fn=evaluate) -> int:
    parser = argparse.ArgumentParser(prog="python -m avo.evolve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="run config YAML (configs/evolve_*.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set budget.candidates=30")
    parser.add_argument("--operator", choices=["agent", "knobs", "auto"])
    parser.add_argument("--candidates", type=int, help="shorthand for --set budget.candidates=N")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="this session proposes and starts judging nothing new after SECONDS: the judge "
                             "running finishes, candidates waiting for a GPU are deferred to the next session "
                             "(fits a job's time limit; --resume judges them first and goes on); the run's "
                             "budget.wall_hours still counts all sessions")
    args = parser.parse_args(argv)
    if args.stop_after is not None and not args.stop_after > 0:
        print(f"avo.evolve: --stop-after must be a positive number of seconds, not {args.stop_after}",
              file=sys.stderr)
        return 2
    overrides = list(args.set)
    if args.operator:
        overrides.append(f"operator={args.operator}")
    if args.candidates:
        overrides.append(f"budget.candidates={args.candidates}")
    try:
        if args.resume:
            config_path = Path(args.resume) / "config.yaml"
            if not config_path.exists():
                raise ConfigError(f"{args.resume} is not a run directory (no config.yaml)")
            config = load_config(config_path, overrides)
        elif args.config:
            config, note = _own_archive(load_config(args.config, overrides), overrides)
            if note:
                print(f"avo.evolve: {note}", flush=True)
            if (Path(config.run_dir) / "state.json").exists():
                raise ConfigError(f"{config.run_dir} already holds a run: --resume {config.run_dir}, or "
                                  "--set run_dir=... for a new one")
        else:
            raise ConfigError("give --config FILE for a new run or --resume RUN_DIR")
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, Path(config.run_dir) / "config.yaml")
        run = Run(config, evaluate_fn=evaluate_fn, resume=bool(args.resume), stop_after_s=args.stop_after)
    except (ConfigError, SuiteError, LineageError, jit.CompileError, ValueError) as exc:
        print(f"avo.evolve: {exc}", file=sys.stderr)
        return 2
    _interrupt_on(signal.SIGINT, signal.SIGTERM)
    try:
        reason = run.loop()
    except KeyboardInterrupt:
        run.recover_interrupted()  # the candidate being evaluated is recorded, not left pending
        run.save_state()
        run.progress.close()
        print(f"\navo.evolve: interrupted; nothing committed is lost. Resume: python -m avo.evolve --resume "
              f"{config.run_dir}", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        run.progress.close()
        print(f"avo.evolve: {exc}", file=sys.stderr)
        return 1
    run.progress.close()
    print(f"avo.evolve: stopped: {reason}. Lineage: {config.archive}/lineage.json; "
          f"events: {config.run_dir}/events.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
