"""The agentic variation operator: one variation step is a tool-calling conversation with a model.

The model reads the lineage, knowledge/ and the reference sources, edits one candidate kernel file,
compiles, tests and benchmarks it through the `Workbench` (the harness), and ends the step by
calling `submit`; the harness, not the model, decides whether the candidate is committed. The step
also ends when its `StepBudget` (turns, tokens, seconds) runs out, when the endpoint fails, or when
the model gives up. Any OpenAI-compatible chat-completions server with tool calling works (OpenAI,
vLLM, SGLang, Ollama).

The API key is read from the environment variable named by `EndpointConfig.api_key_env` when the
client is made and is never stored in the result, the transcript or the log.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from avo.knowledge import (
    KNOWLEDGE_DIR,
    PathError,
    confined_path,
    knowledge_index,
    number_lines,
    read_text,
    reference_roots,
    source_index,
)

__all__ = ["AgentStepResult", "EndpointConfig", "StepBudget", "Workbench", "make_client", "run_agent_step"]

OUTCOMES = ("submitted", "budget_exhausted", "endpoint_error", "gave_up")
_TOOL_RESULT_CHARS = 20000  # what the model sees of one tool result
_TRANSCRIPT_CHARS = 4000  # what the transcript keeps of one message
_CONTEXT_CHARS = 360_000  # above this, old long tool results are elided from the conversation
_IDLE_REPLIES = 2  # consecutive replies without a tool call before the step counts as given up


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable holding the key, never the key
    temperature: float | None = 0.2  # None: not sent (some reasoning models accept only the default)
    request_timeout_s: float = 300.0
    max_retries: int = 3  # retries of transient errors (timeouts, connection, 429, 5xx)
    retry_backoff_s: float = 2.0  # first backoff; doubles each retry
    price_in_per_mtok: float | None = None  # USD per million prompt tokens, for the cost estimate
    price_out_per_mtok: float | None = None  # USD per million completion tokens

    def api_key(self) -> str:
        # local servers (vLLM, Ollama) accept any key; the client insists on a non-empty one
        return os.environ.get(self.api_key_env) or "not-set"


@dataclass(frozen=True)
class StepBudget:
    max_turns: int = 40  # model replies
    max_tokens: int = 400_000  # prompt + completion tokens, summed over the step
    max_seconds: float = 1800.0  # wall time of the whole step, tool calls included


class Workbench(Protocol):
    """The harness as the agent sees it (avo.workbench.HarnessWorkbench implements it). Every
    method returns a JSON-able dict, shown to the model as it is (truncated when long).

    compile(path)  -> {"ok": True, "report": ...} (registers, spills, shared memory per arch/spec)
                      or {"ok": False, "error": ...} (stage, message, line)
    test(path)     -> the correctness report on every shape of the suite
    benchmark(path)-> scores per config and geomean vs the incumbent, same run
    submit(path, rationale) -> {"status": committed|rejected|failed_*|..., "node_id", "geomean", ...}
    Exceptions are caught by the agent loop and shown to the model as a harness error.
    """

    def compile(self, path: Path) -> dict: ...

    def test(self, path: Path) -> dict: ...

    def benchmark(self, path: Path) -> dict: ...

    def submit(self, path: Path, rationale: str) -> dict: ...


@dataclass
class AgentStepResult:
    outcome: str  # one of OUTCOMES
    submit: dict | None  # the harness's answer to submit, if the agent submitted
    rationale: str
    transcript: list[dict]
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False  # the server reported no usage: counted as characters / 4
    cost_usd: float | None = None
    turns: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)  # edits/reads refused for their path
    tool_calls: dict = field(default_factory=dict)  # tool name -> times called
    diff: str = ""  # unified diff of the candidate, start of step -> end
    edit_hash: str = ""  # sha256[:16] of that diff ("" when unchanged): the supervisor's edit identity

    def as_dict(self) -> dict:
        return asdict(self)


def make_client(endpoint: EndpointConfig):
    """An openai client for the endpoint; its own retries are off (run_agent_step retries)."""
    import openai

    return openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key(),
                         timeout=endpoint.request_timeout_s, max_retries=0)


# ---------------------------------------------------------------------------------------------
# prompts

SYSTEM_PROMPT = """\
You are a GPU kernel engineer working as the variation operator of an evolutionary search over \
attention kernels written in CuTe DSL (Python) for NVIDIA Hopper (sm_90a).

Your job in this step: make the candidate attention kernel FASTER while keeping it CORRECT on every \
shape of the suite (head_dim, causal or not, MHA and GQA, every sequence length). You work on one \
file, the candidate; it starts as a copy of its parent version.

The commit rule, applied by the harness after you call submit, not by you: the candidate is \
compiled, checked against an fp32 reference on fresh random inputs for every config of the suite, \
and benchmarked interleaved with the incumbent in the same run; it is committed only if it is \
correct everywhere and its geomean TFLOPS is not below the incumbent's beyond the measured noise \
(and never more than 1% below). \
A wrong result on any shape rejects it. A kernel module may import only the DSL (cutlass, cuda) and \
plain Python helpers (math, typing, dataclasses, functools, ...). The harness rejects tricks: \
skipped work, cached or stale outputs, side streams, lower precision, timer games. Do not try \
them; read knowledge/harness.md.

The kernel contract: the module defines KERNEL, a class built as KERNEL(spec) with \
can_implement(spec) -> (ok, reason) and a @cute.jit __call__(mQ, mK, mV, mO, mLSE, softmax_scale, \
stream); mQ/mO are (batch, seqlen_q, heads_q, head_dim), mK/mV (batch, seqlen_k, heads_kv, \
head_dim), mLSE (batch, heads_q, seqlen_q) fp32 natural-log LSE; causal is aligned bottom-right.

How to work:
1. Orient: list_lineage, then read knowledge (start with read_knowledge("tried.md") and \
search_knowledge) so you do not repeat what failed. Look at diffs of committed versions.
2. Read the candidate (read_candidate) and form ONE concrete hypothesis about what limits it \
(registers/spills, shared memory, exp2 throughput, pipeline depth, tile shape, scheduling).
3. Edit with edit_candidate (exact, unique string replacement) or write_candidate.
4. compile() and read the report (registers, spills, shared memory); fix errors; then test(), then \
benchmark(). Iterate while your budget lasts.
5. submit(rationale) when you have a correct candidate you believe is faster; the rationale says \
what you changed, why, and what you measured. If nothing works, call give_up(reason) with what \
you learned, so the next step does not repeat it.

The reference sources (read_reference/search_reference) are the installed CuTe DSL (cutlass/...), \
FlashAttention-4 (flash_attn/cute/...) and quack (quack/...): learn from them, do not paste them \
wholesale. Paths are relative; the only file you may change is the candidate."""


def _first_message(lineage, parent_id: str | None, candidate: Path, budget: StepBudget, directions: str) -> str:
    parts = [f"Candidate file: {candidate.name} (parent: {parent_id or 'none'})."]
    if lineage is not None and len(lineage):
        best = lineage.best()
        if best is not None:
            parts.append(f"Incumbent: {best.id}, geomean {best.geomean:.1f} TFLOPS.")
        if parent_id and parent_id in lineage:
            node = lineage.get(parent_id)
            parts.append(f"Parent {parent_id}: status {node.status}, geomean {node.geomean:.1f} TFLOPS.")
        recent = [n for n in lineage.nodes() if n.operator != "seed" and n.status != "pending"][-6:]
        if recent:
            parts.append("Most recent attempts:\n" + "\n".join(
                f"- {n.id} ({n.operator}, {n.status}, {n.geomean:.1f}): {(n.rationale or n.diagnosis)[:160]}"
                for n in recent))
    parts.append(f"Budget for this step: {budget.max_turns} replies, {budget.max_tokens} tokens, "
                 f"{budget.max_seconds:.0f} s.")
    if directions.strip():
        parts.append("Directions from the supervisor (act on them):\n" + directions.strip())
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# tools


def _fn(name: str, description: str, properties: dict | None = None, required: tuple = ()) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties or {}, "required": list(required)}}}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_PATH = {"type": "string", "description": "leave out: the only allowed value is the candidate file itself"}

TOOLS = [
    _fn("list_lineage", "Every version so far: id, parents, operator, status, geomean TFLOPS, diagnosis."),
    _fn("show_version", "Source of a version in the lineage, with line numbers (250 lines at a time).",
        {"node_id": _STR, "start_line": _INT, "max_lines": _INT}, ("node_id",)),
    _fn("diff_to_parent", "Unified diff of a version against its first parent. node_id 'candidate' diffs "
        "the candidate against its parent.", {"node_id": _STR}, ("node_id",)),
    _fn("search_knowledge", "Ranked search over knowledge/ (hardware facts, DSL idioms, the algorithm, "
        "harness, what was tried).", {"query": _STR}, ("query",)),
    _fn("read_knowledge", "Read a knowledge/ file, e.g. 'hopper.md' ('' lists the files).",
        {"path": _STR, "start_line": _INT}, ("path",)),
    _fn("search_reference", "Ranked search over the installed CuTe DSL, FA4 and quack sources. `under` "
        "narrows it, e.g. 'flash_attn/cute'.", {"query": _STR, "under": _STR}, ("query",)),
    _fn("read_reference", "Read a reference source, e.g. 'flash_attn/cute/softmax.py', 200 lines at a time "
        "(a directory lists it).",
        {"path": _STR, "start_line": _INT, "max_lines": _INT}, ("path",)),
    _fn("read_candidate", "The candidate kernel source with line numbers (250 lines at a time).",
        {"start_line": _INT, "max_lines": _INT, "path": _PATH}),
    _fn("edit_candidate", "Replace the exact string `old` (must occur exactly once) with `new` in the candidate.",
        {"old": _STR, "new": _STR, "path": _PATH}, ("old", "new")),
    _fn("write_candidate", "Replace the whole candidate with `text`.", {"text": _STR, "path": _PATH}, ("text",)),
    _fn("compile", "Compile the candidate for the target arch: errors (stage, message, line) or the resource "
        "report (registers, spills, shared memory, wgmma count)."),
    _fn("test", "Run the harness's correctness check of the candidate on the suite's shapes."),
    _fn("benchmark", "Benchmark the candidate: TFLOPS per config and geomean vs the incumbent."),
    _fn("submit", "End the step: hand the candidate to the harness, which applies the commit rule.",
        {"rationale": {"type": "string", "description": "what changed, why, what you measured"}}, ("rationale",)),
    _fn("give_up", "End the step without submitting; say what you tried and learned.", {"reason": _STR}, ("reason",)),
]
_TOOL_NAMES = {t["function"]["name"] for t in TOOLS}


class _ToolError(Exception):
    pass


class _Session:
    """The state of one step: what the tools act on and what they record."""

    def __init__(self, lineage, workbench, candidate: Path, parent_id: str | None, knowledge_dir: Path,
                 ref_roots: dict[str, Path], result: AgentStepResult):
        self.lineage, self.workbench, self.candidate = lineage, workbench, candidate
        self.parent_id, self.knowledge_dir, self.ref_roots, self.result = parent_id, knowledge_dir, ref_roots, result
        self.ended: str | None = None  # "submitted" | "gave_up"

    def call(self, name: str, args: dict) -> Any:
        if name not in _TOOL_NAMES:
            raise _ToolError(f"unknown tool {name!r}; tools: {', '.join(sorted(_TOOL_NAMES))}")
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
        missing = [r for r in schema["required"] if r not in args]
        if missing:
            raise _ToolError(f"{name} needs argument(s) {missing}")
        unknown = set(args) - set(schema["properties"])
        if unknown:
            raise _ToolError(f"{name} takes no argument(s) {sorted(unknown)}; it takes {sorted(schema['properties'])}")
        return getattr(self, f"t_{name}")(**args)

    # -- lineage ----------------------------------------------------------------------------
    def _need_lineage(self):
        if self.lineage is None:
            raise _ToolError("no lineage in this run")
        return self.lineage

    def t_list_lineage(self):
        lineage = self._need_lineage()
        best = lineage.best()
        rows = [{"id": n.id, "parents": n.parents, "operator": n.operator, "status": n.status,
                 "geomean": round(n.geomean, 2), "diagnosis": n.diagnosis[:200], "rationale": n.rationale[:200]}
                for n in lineage.nodes()]
        return {"incumbent": best.id if best else None, "count": len(rows), "nodes": rows[-80:]}

    def _source(self, node_id: str) -> str:
        lineage = self._need_lineage()
        try:
            return lineage.source(node_id)
        except Exception as exc:
            raise _ToolError(str(exc)) from None

    def t_show_version(self, node_id: str, start_line: int = 1, max_lines: int = 250):
        return number_lines(self._source(str(node_id)), start_line, min(int(max_lines), 400))

    def t_diff_to_parent(self, node_id: str):
        if node_id == "candidate":
            if not self.parent_id:
                raise _ToolError("the candidate has no parent in the lineage")
            old, new, a, b = self._source(self.parent_id), self.candidate.read_text(), self.parent_id, "candidate"
        else:
            node = self._need_lineage().get(node_id) if node_id in self._need_lineage() else None
            if node is None:
                raise _ToolError(f"no node {node_id!r} in the lineage")
            if not node.parents:
                raise _ToolError(f"{node_id} has no parent (it is a seed)")
            old, new, a, b = self._source(node.parents[0]), self._source(node_id), node.parents[0], node_id
        return _diff(old, new, a, b) or "(identical)"

    # -- reading ----------------------------------------------------------------------------
    def t_search_knowledge(self, query: str):
        hits = knowledge_index(self.knowledge_dir).search(str(query), k=6)
        return [h.as_dict() for h in hits] or "no match; try other words or read_knowledge('')"

    def t_read_knowledge(self, path: str, start_line: int = 1):
        if not str(path).strip():
            return sorted(str(p.relative_to(self.knowledge_dir)) for p in self.knowledge_dir.rglob("*.md"))
        return read_text(self._confined({"": self.knowledge_dir}, path, "read_knowledge"), start_line, 400)

    def t_search_reference(self, query: str, under: str = ""):
        if not self.ref_roots:
            raise _ToolError("no reference sources are installed here")
        hits = source_index(self.ref_roots).search(str(query), k=8, under=str(under or ""))
        return [h.as_dict() for h in hits] or "no match"

    def t_read_reference(self, path: str, start_line: int = 1, max_lines: int = 200):
        return read_text(self._confined(self.ref_roots, path, "read_reference"), start_line, min(int(max_lines), 400))

    def _confined(self, roots: dict, path: str, tool: str) -> Path:
        try:
            return confined_path(roots, str(path))
        except PathError as exc:
            self.result.refused.append({"tool": tool, "path": str(path), "reason": str(exc)})
            raise _ToolError(f"refused: {exc}") from None

    # -- the candidate ----------------------------------------------------------------------
    def _check_candidate_path(self, path: str | None, tool: str) -> None:
        if path is None or path == "":
            return
        target = Path(path) if os.path.isabs(path) else self.candidate.parent / path
        same = target.resolve() == self.candidate.resolve() or path == self.candidate.name
        if not same or ".." in Path(path).parts:
            reason = f"{tool} may only change the candidate file {self.candidate.name}, not {path!r}"
            self.result.refused.append({"tool": tool, "path": str(path), "reason": reason})
            raise _ToolError(f"refused: {reason}")

    def t_read_candidate(self, start_line: int = 1, max_lines: int = 250, path: str | None = None):
        self._check_candidate_path(path, "read_candidate")
        return read_text(self.candidate, start_line, min(int(max_lines), 400))

    def t_edit_candidate(self, old: str, new: str, path: str | None = None):
        self._check_candidate_path(path, "edit_candidate")
        text = self.candidate.read_text()
        count = text.count(old) if old else 0
        if count != 1:
            raise _ToolError(f"`old` occurs {count} times in the candidate; it must occur exactly once "
                             "(include more surrounding lines, or read_candidate again)")
        self.candidate.write_text(text.replace(old, new, 1))
        line = text[:text.index(old)].count("\n") + 1
        return f"edited at line {line}: -{old.count(chr(10)) + 1} +{new.count(chr(10)) + 1} lines"

    def t_write_candidate(self, text: str, path: str | None = None):
        self._check_candidate_path(path, "write_candidate")
        self.candidate.write_text(str(text))
        return f"wrote {len(str(text).splitlines())} lines"

    # -- the harness ------------------------------------------------------------------------
    def _harness(self, name: str, *args) -> dict:
        try:
            return getattr(self.workbench, name)(self.candidate, *args)
        except Exception as exc:  # a harness bug must not kill the step; the model sees it
            message = f"{type(exc).__name__}: {exc}"
            self.result.errors.append(f"workbench.{name}: {message}"[:500])
            return {"ok": False, "error": {"stage": "harness", "message": message[:2000]}}

    def t_compile(self):
        return self._harness("compile")

    def t_test(self):
        return self._harness("test")

    def t_benchmark(self):
        return self._harness("benchmark")

    def t_submit(self, rationale: str):
        self.result.rationale = str(rationale)
        report = self._harness("submit", str(rationale))
        if not isinstance(report, dict):
            report = {"status": "crashed", "error": f"workbench.submit returned {type(report).__name__}"}
        elif "status" not in report:  # the harness itself failed (see _harness)
            report = {"status": "crashed", **report}
        self.result.submit = report
        self.ended = "submitted"
        return report

    def t_give_up(self, reason: str):
        self.result.rationale = str(reason)
        self.ended = "gave_up"
        return "step ended without a submission"


def _diff(old: str, new: str, a: str, b: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=a, tofile=b))


# ---------------------------------------------------------------------------------------------
# the loop


def run_agent_step(endpoint: EndpointConfig, lineage, workbench: Workbench, candidate_path: str | Path,
                   budget: StepBudget | None = None, directions: str = "", parent_id: str | None = None, *,
                   knowledge_dir: str | Path = KNOWLEDGE_DIR, ref_roots: dict[str, Path] | None = None,
                   client=None, log_path: str | Path | None = None) -> AgentStepResult:
    """One variation step. Never raises for endpoint, tool or harness failures: they are recorded.

    candidate_path: the file the agent edits; when it does not exist and parent_id is given it is
    created from the parent's source. lineage: an avo.lineage.Lineage (or None). log_path: a JSONL
    file that gets every transcript entry as it happens."""
    import openai

    started = time.monotonic()
    budget = budget or StepBudget()
    candidate = Path(candidate_path).resolve()
    start_text: str | None = None
    result = AgentStepResult(outcome="budget_exhausted", submit=None, rationale="", transcript=[])
    secret = os.environ.get(endpoint.api_key_env) or ""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a") if log_path else None  # closed in the finally below

    def record(entry: dict) -> None:
        entry = _redact(entry, secret)
        result.transcript.append(entry)
        if log:
            log.write(json.dumps(entry, default=str) + "\n")
            log.flush()

    try:
        if not candidate.exists():
            if not (parent_id and lineage is not None):
                raise FileNotFoundError(f"candidate {candidate} does not exist and there is no parent to copy")
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.write_text(lineage.source(parent_id))
        start_text = candidate.read_text()
        session = _Session(lineage, workbench, candidate, parent_id, Path(knowledge_dir).resolve(),
                           reference_roots() if ref_roots is None else ref_roots, result)
        client = client or make_client(endpoint)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": _first_message(lineage, parent_id, candidate, budget, directions)}]
        record({"role": "system", "content": SYSTEM_PROMPT[:600] + " [...]"})
        record({"role": "user", "content": messages[1]["content"]})
        idle = 0
        while True:
            elapsed = time.monotonic() - started
            if result.turns >= budget.max_turns:
                result.errors.append(f"turn budget spent ({budget.max_turns})")
                break
            if result.tokens_in + result.tokens_out >= budget.max_tokens:
                result.errors.append(f"token budget spent ({result.tokens_in + result.tokens_out} tokens)")
                break
            if elapsed >= budget.max_seconds:
                result.errors.append(f"time budget spent ({elapsed:.0f} s)")
                break
            _elide_old_results(messages)
            try:
                response = _complete(client, endpoint, messages, budget.max_seconds - elapsed, openai)
            except Exception as exc:  # endpoint failure after retries: the step ends, the caller goes on
                message = _redact_text(f"{type(exc).__name__}: {exc}", secret)[:1000]
                result.outcome = "endpoint_error"
                result.errors.append(message)
                record({"role": "event", "kind": "endpoint_error", "content": message})
                break
            result.turns += 1
            _count_tokens(result, response, messages)
            if not response.choices:
                result.errors.append("endpoint returned no choices")
                record({"role": "event", "kind": "empty_reply", "content": "no choices"})
                continue
            msg = response.choices[0].message
            calls = list(msg.tool_calls or [])
            assistant = {"role": "assistant", "content": msg.content}
            if calls:
                assistant["tool_calls"] = [
                    {"id": c.id or f"call_{result.turns}_{i}", "type": "function",
                     "function": {"name": c.function.name, "arguments": c.function.arguments or ""}}
                    for i, c in enumerate(calls)]
            messages.append(assistant)
            record(_truncate_entry(assistant))
            if not calls:
                idle += 1
                if idle >= _IDLE_REPLIES:
                    result.outcome = "gave_up"
                    result.rationale = result.rationale or (msg.content or "")[:2000]
                    result.errors.append("the model stopped calling tools without submitting")
                    break
                messages.append({"role": "user", "content": "Continue with the tools. End the step with "
                                 "submit(rationale) or give_up(reason)."})
                continue
            idle = 0
            for call in assistant["tool_calls"]:
                name, raw = call["function"]["name"], call["function"]["arguments"]
                result.tool_calls[name] = result.tool_calls.get(name, 0) + 1
                content = _dispatch(session, name, raw, result)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
                record(_truncate_entry({"role": "tool", "tool_call_id": call["id"], "name": name,
                                        "content": content}))
                if session.ended:
                    break
            if session.ended:
                result.outcome = session.ended
                break
    except Exception as exc:  # a bug or a missing file: recorded, never raised into the evolve loop
        message = _redact_text(f"{type(exc).__name__}: {exc}", secret)[:1000]
        result.errors.append(message)
        result.outcome = "endpoint_error" if _is_endpoint_error(exc) else "gave_up"
        record({"role": "event", "kind": "error", "content": message})
    finally:
        if start_text is not None and candidate.exists():
            result.diff = _diff(start_text, candidate.read_text(), "start", "end")
            result.edit_hash = hashlib.sha256(result.diff.encode()).hexdigest()[:16] if result.diff else ""
        result.seconds = round(time.monotonic() - started, 3)
        result.cost_usd = _cost(endpoint, result)
        record({"role": "event", "kind": "end", "content": f"outcome {result.outcome} after {result.turns} "
                f"replies, {result.tokens_in}+{result.tokens_out} tokens, {result.seconds:.1f} s"})
        if log:
            log.close()
    return result


def _dispatch(session: _Session, name: str, raw: str, result: AgentStepResult) -> str:
    """Run one tool call; every failure becomes an error result the model can read."""
    try:
        args = json.loads(raw) if raw and raw.strip() else {}
        if not isinstance(args, dict):
            raise _ToolError("arguments must be a JSON object")
    except json.JSONDecodeError as exc:
        result.errors.append(f"{name}: bad JSON arguments ({exc})")
        return json.dumps({"error": f"arguments are not valid JSON ({exc}); send a JSON object"})
    except _ToolError as exc:
        result.errors.append(f"{name}: {exc}")
        return json.dumps({"error": str(exc)})
    try:
        out = session.call(name, args)
    except _ToolError as exc:
        result.errors.append(f"{name}: {exc}"[:500])
        return json.dumps({"error": str(exc)})
    except Exception as exc:
        result.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]})
    text = out if isinstance(out, str) else json.dumps(out, default=str, indent=1)
    if len(text) > _TOOL_RESULT_CHARS:
        cut = len(text) - _TOOL_RESULT_CHARS
        text = text[:_TOOL_RESULT_CHARS] + f"\n[... truncated {cut} chars; read less at once]"
    return text


def _is_endpoint_error(exc: BaseException) -> bool:
    try:
        import openai

        return isinstance(exc, openai.OpenAIError)
    except ImportError:
        return False


def _complete(client, endpoint: EndpointConfig, messages: list, seconds_left: float, openai):
    """One chat completion with bounded retries of transient failures (timeouts, connection errors,
    429 and 5xx), doubling the backoff; other errors (400, 401, 404) are raised at once."""
    transient = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                 openai.InternalServerError)
    # tool_choice is left to its default ("auto" when tools are given): vLLM refuses an explicit
    # "auto" unless started with --enable-auto-tool-choice
    extra = {} if endpoint.temperature is None else {"temperature": endpoint.temperature}
    attempt = 0
    while True:
        try:
            return client.chat.completions.create(
                model=endpoint.model, messages=messages, tools=TOOLS,
                timeout=max(1.0, min(endpoint.request_timeout_s, seconds_left)), **extra)
        except transient:
            delay = endpoint.retry_backoff_s * 2 ** attempt
            if attempt >= endpoint.max_retries or delay >= seconds_left:
                raise
            time.sleep(delay)
            attempt += 1


def _count_tokens(result: AgentStepResult, response, messages: list) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
        result.tokens_in += int(usage.prompt_tokens or 0)
        result.tokens_out += int(usage.completion_tokens or 0)
        return
    result.tokens_estimated = True
    result.tokens_in += sum(len(json.dumps(m, default=str)) for m in messages) // 4
    if response.choices:
        m = response.choices[0].message
        args = sum(len(c.function.arguments or "") for c in m.tool_calls or [])
        result.tokens_out += (len(m.content or "") + args) // 4


def _cost(endpoint: EndpointConfig, result: AgentStepResult) -> float | None:
    if endpoint.price_in_per_mtok is None and endpoint.price_out_per_mtok is None:
        return None
    return round((result.tokens_in * (endpoint.price_in_per_mtok or 0.0)
                  + result.tokens_out * (endpoint.price_out_per_mtok or 0.0)) / 1e6, 6)


def _elide_old_results(messages: list) -> None:
    """Keep the conversation under _CONTEXT_CHARS by shortening the oldest long tool results
    (the model can call the tool again)."""
    total = sum(len(m.get("content") or "") for m in messages)
    for m in messages[2:]:
        if total <= _CONTEXT_CHARS:
            return
        content = m.get("content") or ""
        if m["role"] == "tool" and len(content) > 1000:
            m["content"] = content[:600] + "\n[... elided to save context; call the tool again if needed]"
            total -= len(content) - len(m["content"])


def _truncate_entry(entry: dict) -> dict:
    out = dict(entry)
    content = out.get("content")
    if isinstance(content, str) and len(content) > _TRANSCRIPT_CHARS:
        out["content"] = content[:_TRANSCRIPT_CHARS] + f" [... {len(content) - _TRANSCRIPT_CHARS} chars]"
    if "tool_calls" in out:
        out["tool_calls"] = [{"id": c["id"], "name": c["function"]["name"],
                              "arguments": _clip(c["function"]["arguments"], _TRANSCRIPT_CHARS)}
                             for c in out["tool_calls"]]
    return out


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + f" [... {len(text) - n} chars]"


def _redact_text(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret and len(secret) >= 4 else text


def _redact(entry: dict, secret: str) -> dict:
    if not secret or len(secret) < 4:
        return entry
    return json.loads(_redact_text(json.dumps(entry, default=str), json.dumps(secret)[1:-1]))
