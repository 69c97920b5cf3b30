"""The harness side of an agent step, whoever the agent is.

`HarnessWorkbench` is the harness as the tools see it (avo.agent.Workbench): compile, test,
benchmark (whole suite or a subset of configs, FA4/cuDNN per config) and submit a candidate file,
each answered with a JSON-able report. Submit runs the full cascade and records the verdict on
the step's lineage node; the commit rule is the harness's, never the agent's.

`AgentStep` is one variation step's life in a run: a pending lineage node reserved from the parent
before anything runs, the candidate file, the transcript, and `finish`, which records how the step
ended. `run_step` drives it with the in-process model (avo.evolve's agent operator) and pauses the
run through an endpoint outage; `ExternalSession` drives it from tool calls that arrive one by
one (the MCP server, `python -m avo.tool`), so an outside coding agent's candidates land in the
lineage exactly like the in-process agent's.

Steps side by side (avo.evolve's Run.agent_side_by_side, one per GPU): a step fixes at its start
its parent and the incumbent its benchmark tool compares with (the snapshot), and takes a GPU:
its test, benchmark and profile tools and its submit run on that GPU only, holding it through
avo.cluster (a judge never shares its GPU, and every such run is in the per-GPU log). Its node,
candidate file and transcript are its own; writes to the lineage and run state hold the run's
lock. Submit judges against the incumbent of that moment, and Run.judge judges it again if
another step commits first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from avo import tools
from avo.atomic import atomic_write
from avo.progress import Progress

__all__ = ["AgentStep", "EndpointOutage", "ExternalSession", "HarnessWorkbench", "StderrProgress", "run_step",
           "supervise"]


class EndpointOutage(RuntimeError):
    """The model's endpoint stayed unreachable longer than agent.outage_wait_s."""


class HarnessWorkbench:
    def __init__(self, run, node, deadline: float | None = None, gpu: int | None = None,
                 incumbent: str | None = None):
        self.run, self.node = run, node  # avo.evolve.Run and the step's reserved (pending) node
        self.deadline = deadline  # time.monotonic() at which the step's time is spent
        self.gpu = gpu  # the step's GPU (steps side by side), None: as evaluation.gpus has it
        self.incumbent = incumbent  # the committed node benchmark compares with; None: the current incumbent
        self.submitted = False

    def _timeout(self) -> float:
        timeout = self.run.config.evaluation.timeout_s
        if self.deadline is not None:
            timeout = min(timeout, max(1.0, self.deadline - time.monotonic()))
        return timeout

    def _evaluate(self, path: Path, suite: str | None = None, stage: str | None = None, **kwargs):
        cfg = self.run.config
        archs = tuple(dict.fromkeys((cfg.arch, *cfg.compile_archs)))
        kwargs = dict(suite=suite or cfg.suite, archs=archs, timeout_s=self._timeout(), seeds=cfg.evaluation.seeds,
                      rounds=cfg.evaluation.rounds, **kwargs)
        if self.gpu is None or kwargs.get("compile_only"):
            return self.run.evaluate_fn(path, **kwargs)
        from avo.cluster import evaluate_local

        return evaluate_local(self.run.evaluate_fn, [(self.node.id, path)], kwargs, (self.gpu,), self.run.progress,
                              stage=stage)[0]

    @contextlib.contextmanager
    def gpu_lease(self):
        """The step's GPU, held for a tool that runs kernels outside the cascade (profile); yields
        its index for CUDA_VISIBLE_DEVICES, or None where the step has no GPU of its own."""
        if self.gpu is None:
            yield None
            return
        from avo.cluster import hold_gpu

        with hold_gpu(self.gpu, self.run.progress, self.node.id, "profile"):
            yield self.gpu

    def incumbent_source(self) -> Path | None:
        return self.run.incumbent_source(self.incumbent) if self.incumbent else self.run.incumbent_source()

    def commit_bar(self) -> float:
        """The lower bound a ratio to the incumbent benchmark compares with must clear to commit."""
        run = self.run
        incumbent = self.incumbent or run.lineage.best(run.config.suite, run.config.arch)
        return run.lineage.commit_bar(incumbent, run.config.suite, run.config.arch)

    def subset_suite(self, configs: list[str]) -> str:
        """A suite file holding only `configs` of the run's suite (timed or correctness-only ones),
        under the run directory; its path is what the cascade is given."""
        from avo.suites import load_suite

        suite = load_suite(self.run.config.suite)
        known = {c.name: c for c in suite.timed + suite.correctness}
        missing = [c for c in configs if c not in known]
        if missing:
            raise tools.ToolError(f"no config(s) {missing} in suite {suite.name}; list_configs shows them")
        timed = {c.name for c in suite.timed}
        key = hashlib.sha256(json.dumps(sorted(configs)).encode()).hexdigest()[:10]
        folder = self.run.dir / "subsets" / key
        folder.mkdir(parents=True, exist_ok=True)
        parts = []
        for i, name in enumerate(sorted(configs)):
            c = known[name]
            part = {"dtype": c.dtype, "head_dim": c.head_dim, "causal": [c.causal], "heads": [[c.heads_q, c.heads_kv]]}
            if name in timed:
                part.update(tokens=c.batch * c.seqlen_q, seqlens=[c.seqlen_q])
            else:  # a correctness-only shape: checked, not timed
                part.update(tokens=c.seqlen_q, seqlens=[c.seqlen_q], heads=[], correctness=[
                    [c.batch, c.seqlen_q, c.seqlen_k, c.heads_q, c.heads_kv]])
            atomic_write(folder / f"part{i}.yaml", yaml.safe_dump(part))  # steps side by side share subsets/
            parts.append(f"part{i}")
        path = folder / "subset.yaml"
        atomic_write(path, yaml.safe_dump({"name": f"{suite.name}-subset", "include": parts}))
        return str(path)

    def compile(self, path: Path) -> dict:
        verdict = self._evaluate(path, compile_only=True)
        if verdict.status == "screened":
            return {"ok": True, "report": verdict.compile_reports}
        return {"ok": False, "status": verdict.status, "error": verdict.diagnosis, "report": verdict.compile_reports}

    def test(self, path: Path, configs: list[str] | None = None) -> dict:
        if self.run.compile_only:
            return {"ok": False, "error": f"no {self.run.config.arch} GPU here: correctness cannot be run; "
                                          "compile() is what this machine can check"}
        suite = self.subset_suite(configs) if configs else None
        verdict = self._evaluate(path, suite=suite, stage="test", stop_after="correctness")
        return {"ok": verdict.status == "screened", "status": verdict.status, "diagnosis": verdict.diagnosis,
                "configs": configs or "the whole suite", "correctness": verdict.correctness}

    def benchmark(self, path: Path, configs: list[str] | None = None) -> dict:
        if self.run.compile_only:
            return {"ok": False, "error": f"no {self.run.config.arch} GPU here: nothing can be timed"}
        suite = self.subset_suite(configs) if configs else None
        bar = self.commit_bar()
        verdict = self._evaluate(path, suite=suite, stage="benchmark", incumbent=self.incumbent_source(),
                                 baselines=tuple(self.run.config.evaluation.baselines), commit_bar=bar)
        per_config = {}
        paired = (getattr(verdict, "estimate", None) or {}).get("per_config", {})
        for name, tflops in verdict.scores.items():
            row = {"tflops": round(tflops, 1)}
            if name in verdict.incumbent_scores:
                row["incumbent"] = round(verdict.incumbent_scores[name], 1)
            if name in paired:  # the paired speed ratio to the incumbent on this config, with its 95% CI
                row["vs_incumbent"] = round(paired[name]["ratio"], 4)
                row["vs_incumbent_ci"] = [round(paired[name]["lo"], 4), round(paired[name]["hi"], 4)]
            for base, scores in (verdict.baselines or {}).items():
                if scores.get(name):
                    row[base] = round(scores[name], 1)
                    row[f"vs_{base}"] = round(tflops / scores[name], 3)
            per_config[name] = row
        return {"ok": verdict.status in ("committed", "rejected"), "status_if_submitted": verdict.status,
                "diagnosis": verdict.diagnosis, "configs": per_config, "geomean": verdict.geomean,
                "incumbent_geomean": verdict.incumbent_geomean, "ratio": verdict.ratio, "noise": verdict.noise,
                "commit_bar": round(bar, 4),
                **({"ratio_ci": verdict.ratio_ci} if getattr(verdict, "ratio_ci", None) is not None else {})}

    def submit(self, path: Path, rationale: str) -> dict:
        if self.submitted:
            return {"status": "refused", "reason": "this step already submitted"}
        self.submitted = True
        node = self.run.lineage.get(self.node.id)
        node.rationale = rationale
        verdict = self.run.judge(node, Path(path), gpu=self.gpu)
        return {"status": verdict.status, "node_id": node.id, "geomean": verdict.geomean, "ratio": verdict.ratio,
                "noise": verdict.noise, "diagnosis": verdict.diagnosis}


class StderrProgress(Progress):
    """The run's event log, with its lines on stderr: stdout carries tool results (the CLI) or
    the protocol (MCP over stdio)."""

    def __init__(self, events_path, title: str):
        super().__init__(events_path, title, live=False)

    def event(self, kind: str, **data) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            super().event(kind, **data)


class AgentStep:
    """One agent variation step of a run: the pending node, the candidate, the transcript."""

    def __init__(self, run, parent: str, directions: str = "", via: str = "agent", node=None,
                 started: float | None = None, gpu: int | None = None):
        self.run, self.parent, self.directions, self.via, self.gpu = run, parent, directions, via, gpu
        with run.lock:  # the snapshot: the parent's source and the incumbent of this moment
            if node is None:
                parent_node = run.lineage.get(parent)
                node = run.reserve("agent", [parent], run.lineage.source(parent), template=parent_node.template,
                                   knobs=parent_node.knobs)
            best = run.lineage.best(run.config.suite, run.config.arch)
            self.incumbent = best.id if best else None
            self.start_text = run.lineage.source(parent)  # what the candidate was when the step began
        self.node = node
        self.started = time.time() if started is None else started  # wall clock: steps can span processes
        left = run.config.agent.max_seconds_per_step - (time.time() - self.started)
        self.deadline = time.monotonic() + left
        self.workbench = HarnessWorkbench(run, node, self.deadline, gpu=gpu, incumbent=self.incumbent)
        self.candidate = Path(node.source_path)
        self.transcript = run.dir / "transcripts" / f"{node.id}.jsonl"
        self.transcript.parent.mkdir(parents=True, exist_ok=True)
        self.machine = (f"This machine has no {run.config.arch} GPU: compile() is the only check here (test, "
                        "benchmark and profile say so), and submit screens the candidate by compiling it."
                        if run.compile_only else "")

    @classmethod
    def open(cls, run, redirect=None, via: str = "agent", gpu: int | None = None) -> AgentStep:
        with run.lock:
            parent = (redirect.fork_from if redirect and redirect.fork_from else None) or run.incumbent().id
            return cls(run, parent, redirect.directions if redirect else "", via, gpu=gpu)

    def context(self, secrets: tuple[str, ...] = ()) -> tools.Context:
        from avo.knowledge import reference_roots

        cfg = self.run.config
        return tools.Context(candidate=self.candidate.resolve(), workbench=self.workbench, lineage=self.run.lineage,
                             parent_id=self.parent, node_id=self.node.id, ref_roots=reference_roots(),
                             project_roots=tools.project_roots(), notes_dir=self.run.dir / "notes",
                             run_dir=self.run.dir, suite=cfg.suite, arch=cfg.arch, deadline=self.deadline,
                             secrets=tools.secret_values(secrets))

    def brief(self) -> str:
        from avo.agent import first_message

        notes = tools.previous_notes(self.run.dir / "notes", exclude=self.node.id)
        return first_message(self.run.lineage, self.parent, self.candidate, None, self.directions, notes,
                             self.machine, self.run.config.suite, self.run.config.arch)

    def discard(self) -> None:
        """Forget a step that never reached the model: no node, no candidate file, no transcript."""
        lineage = self.run.lineage
        with lineage.lock:
            if self.node.id in lineage and lineage.get(self.node.id).status == "pending":
                lineage.graph.remove_node(self.node.id)
                lineage.save()
        for path in (self.candidate, self.transcript):
            path.unlink(missing_ok=True)

    def finish(self, result) -> None:
        """Record how the step ended (an avo.agent.AgentStepResult): costs, outcome, diff, errors
        on the node; a step that never submitted becomes a rejected node saying why."""
        with self.run.lock:
            self._finish(result)

    def _finish(self, result) -> None:
        from avo.supervisor import record_from_step

        run = self.run
        secrets = tools.secret_values()
        tokens = result.tokens_in + result.tokens_out
        run.state["tokens"] += tokens
        final = run.lineage.get(self.node.id)
        cost = {"tokens": tokens, "tokens_in": result.tokens_in, "tokens_out": result.tokens_out,
                "cost_usd": result.cost_usd, "turns": result.turns, "seconds": round(result.seconds, 1)}
        errors = [tools.redact(e, secrets) for e in result.errors]
        fields = {"cost": cost, "rationale": tools.redact(result.rationale, secrets),
                  "extra": {**final.extra, "transcript": str(self.transcript), "outcome": result.outcome,
                            "via": self.via, "edit_hash": result.edit_hash, "diff": result.diff[-20000:],
                            "errors": errors, "refused": result.refused, "tool_calls": result.tool_calls,
                            "step": {"gpu": self.gpu, "incumbent": self.incumbent, "start": self.started,
                                     "end": time.time()}}}
        if final.status == "pending":  # never submitted: recorded with why (its reason, else the last error)
            why = fields["rationale"] if result.outcome == "gave_up" and fields["rationale"] else \
                (errors[-1] if errors else "")
            fields.update(status="rejected",
                          diagnosis=f"not submitted: {result.outcome}" + (f" ({why[:200]})" if why else ""))
            run.state["candidates"] += 1
            run.progress.event("candidate", id=self.node.id, operator="agent", status="rejected", geomean=0.0,
                               diagnosis=fields["diagnosis"], tokens=tokens, cost_usd=result.cost_usd)
        run.lineage.update(self.node.id, **fields)
        record = record_from_step(len(run.state["steps"]), result, self.parent)
        run.state["steps"].append(dataclasses.asdict(record))
        run.save_state()


def supervise(run):
    """The supervisor's Redirect after the latest step (None on a healthy trajectory); the model
    reviews too when the run has an endpoint."""
    from avo.agent import EndpointConfig
    from avo.supervisor import StepRecord, SupervisorConfig, review

    cfg = run.config.supervisor
    with run.lock:
        records = [StepRecord(**r) for r in run.state["steps"]]
    endpoint = EndpointConfig(**dataclasses.asdict(run.config.endpoint)) if run.config.endpoint.base_url else None
    redirect = review(records, run.lineage.nodes(), SupervisorConfig(cfg.stall_steps, cfg.repeat_limit,
                                                                     cfg.fork_within), endpoint=endpoint)
    if redirect is not None:
        run.progress.event("supervisor", by=redirect.by, fork_from=redirect.fork_from,
                           findings=[f.kind for f in redirect.findings], directions=redirect.directions[:500])
    return redirect


def run_step(run, redirect, gpu: int | None = None) -> None:
    """One in-process agent step (avo.evolve's agent operator), on `gpu` when steps run side by
    side. A step whose every request failed before reaching the model is not a candidate: its node
    is discarded and the run pauses (10 s, doubling to 5 min) until the endpoint answers, for at
    most agent.outage_wait_s in all; then EndpointOutage stops the run, which --resume continues."""
    from avo.agent import EndpointConfig, StepBudget, run_agent_step

    cfg = run.config
    endpoint = EndpointConfig(**dataclasses.asdict(cfg.endpoint))
    budget = StepBudget(cfg.agent.max_turns, cfg.agent.max_tokens_per_step, cfg.agent.max_seconds_per_step)
    waited, pause = 0.0, 10.0
    while True:
        step = AgentStep.open(run, redirect, gpu=gpu)
        if gpu is not None:
            run.progress.event("step", id=step.node.id, parent=step.parent, incumbent=step.incumbent, gpu=gpu)
        result = run_agent_step(endpoint, run.lineage, step.workbench, step.candidate, budget,
                                directions=step.directions, parent_id=step.parent, log_path=step.transcript,
                                node_id=step.node.id, run_dir=run.dir, suite=cfg.suite, arch=cfg.arch,
                                machine=step.machine)
        if not (result.outcome == "endpoint_error" and result.turns == 0):
            step.finish(result)
            return
        step.discard()
        reason = result.errors[-1][:300] if result.errors else "no answer"
        left = cfg.agent.outage_wait_s - waited
        if left <= 0:
            run.progress.event("outage", waited_s=round(waited), error=reason)
            raise EndpointOutage(f"the endpoint {cfg.endpoint.base_url} did not answer for {waited:.0f} s ({reason}); "
                                 f"no candidate was spent. Resume when it is back: python -m avo.evolve --resume "
                                 f"{cfg.run_dir}")
        wait = min(pause, left)
        run.progress.event("paused", seconds=round(wait, 1), error=reason)
        time.sleep(wait)
        waited += wait
        pause = min(pause * 2, 300.0)


class ExternalSession:
    """Steps driven by tool calls from outside (MCP, the CLI). The open step lives in
    <run>/external_step.json, so a step can span processes; it opens on the first call that needs
    one and finishes on submit or give_up (or when its time runs out), and the supervisor's
    directions for the next step are kept there too."""

    def __init__(self, run, via: str = "mcp"):
        self.run, self.via = run, via
        self.path = run.dir / "external_step.json"

    def _load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _save(self, state: dict) -> None:
        atomic_write(self.path, json.dumps(state, indent=1))

    def budget_left(self) -> str | None:
        return self.run.out_of_budget()

    def step(self) -> AgentStep:
        """The open step, or a new one from the incumbent (or the supervisor's fork)."""
        state = self._load()
        node_id = state.get("node_id")
        lineage = self.run.lineage
        if node_id and node_id in lineage and lineage.get(node_id).status == "pending":
            return AgentStep(self.run, state["parent"], state.get("directions", ""), self.via,
                             node=lineage.get(node_id), started=state["started"])
        reason = self.run.out_of_budget()
        if reason:
            raise tools.ToolError(f"the run's budget is spent: {reason}")
        self.run.ensure_seed()
        directions, fork = state.get("next_directions", ""), state.get("next_fork")
        parent = fork if fork and fork in lineage else self.run.incumbent().id
        step = AgentStep(self.run, parent, directions, self.via)
        self._save({"node_id": step.node.id, "parent": parent, "directions": directions, "started": step.started,
                    "tool_calls": {}, "errors": [], "refused": []})
        self.run.progress.event("step", id=step.node.id, parent=parent, via=self.via)
        return step

    def call(self, name: str, args) -> tools.ToolResult:
        """One tool call on the open step; a call that ends the step records it in the lineage."""
        try:
            step = self.step()
        except tools.ToolError as exc:
            return tools.ToolResult(json.dumps({"error": str(exc)}), ok=False)
        state = self._load()
        ctx = step.context()
        out = tools.call(ctx, name, args)
        state["tool_calls"][name] = state["tool_calls"].get(name, 0) + 1
        state["errors"] += ctx.errors
        state["refused"] += ctx.refused
        entry = {"role": "tool", "via": self.via, "name": name,
                 "arguments": tools.redact(args if isinstance(args, str) else json.dumps(args), ctx.secrets),
                 "content": out.text[:4000], "time": round(time.time(), 3)}
        with open(step.transcript, "a") as log:
            log.write(json.dumps(entry) + "\n")
        if ctx.ended is None and ctx.seconds_left() <= 0:
            ctx.ended = "budget_exhausted"
            state["errors"].append("the step's time limit was spent")
        if ctx.ended:
            self._finish(step, ctx, state)
        else:
            self._save(state)
        return out

    def _finish(self, step: AgentStep, ctx: tools.Context, state: dict) -> None:
        from avo.agent import AgentStepResult

        diff = tools._diff(step.start_text, step.candidate.read_text(), "start", "end")
        result = AgentStepResult(outcome=ctx.ended, submit=ctx.submit, rationale=ctx.rationale, transcript=[],
                                 turns=sum(state["tool_calls"].values()), seconds=time.time() - step.started,
                                 errors=state["errors"], refused=state["refused"], tool_calls=state["tool_calls"],
                                 diff=diff, edit_hash=hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else "")
        step.finish(result)
        redirect = supervise(self.run)
        self._save({"next_directions": redirect.directions if redirect else "",
                    "next_fork": redirect.fork_from if redirect else None, "last": step.node.id})
