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

import email.utils
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from avo import tools
from avo.knowledge import KNOWLEDGE_DIR, reference_roots

__all__ = ["AgentStepResult", "EndpointConfig", "StepBudget", "Workbench", "make_client", "parse_text_tool_calls",
           "run_agent_step"]

OUTCOMES = ("submitted", "budget_exhausted", "endpoint_error", "gave_up", "stuck")
_TRANSCRIPT_CHARS = 4000  # what the transcript keeps of one message
_DEFAULT_WINDOW = 100_000  # tokens assumed when the model's context window is not configured
_IDLE_REPLIES = 2  # consecutive replies without a tool call before the step counts as given up
_SAME_INVALID = 3  # the same invalid call this many times in a step stops the step
_RETRY_AFTER_CAP_S = 300.0  # the longest Retry-After honoured
_SHRINKS = 3  # context-length errors answered by shrinking the conversation, per request
_DROPPED = "[earlier messages were dropped to fit the context window; call tools again for what you need]"


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
    max_tokens: int = 4096  # completion tokens per reply, sent on every request
    context_window: int | None = None  # the model's context in tokens; None: assume 100k

    def api_key(self) -> str:
        """The key, taken out of the environment on first use: no process the run starts (compile
        and evaluation workers, ncu, cuobjdump) inherits it. Local servers (vLLM, Ollama,
        llama.cpp) accept any key; the client insists on a non-empty one."""
        value = os.environ.pop(self.api_key_env, None)
        if value:
            tools.KEPT_SECRETS[self.api_key_env] = value
        return tools.KEPT_SECRETS.get(self.api_key_env) or "not-set"

    def secret(self) -> str:
        key = self.api_key()
        return "" if key == "not-set" else key


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

    def test(self, path: Path, configs: list[str] | None = None) -> dict: ...

    def benchmark(self, path: Path, configs: list[str] | None = None) -> dict: ...

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
correct everywhere and its speed is not below the best so far beyond the measured noise \
(never more than 0.5% below it: benchmark reports the commit bar its ratio to the incumbent must clear; \
an interval wholly below 1 is a loss and is rejected). \
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
benchmark() (both take `configs` to run a subset, list_configs names them). Where a GPU is present, \
profile() shows what limits the kernel and sass()/instruction_mix() what the compiler made of your \
edit. reset_to_parent() throws the step's edits away. Keep notes with write_notes: the next step \
reads them. Iterate while your budget lasts.
5. submit(rationale) when you have a correct candidate you believe is faster; the rationale says \
what you changed, why, and what you measured. If nothing works, call give_up(reason) with what \
you learned, so the next step does not repeat it.

The reference sources (read_reference/search_reference) are the installed CuTe DSL (cutlass/...), \
FlashAttention-4 (flash_attn/cute/...) and quack (quack/...): learn from them, do not paste them \
wholesale. read_project reads this project's templates and harness files. Paths are relative; the \
only file you may change is the candidate.

Call tools through the API's tool calls. If you cannot, write exactly one JSON object per call, \
{"name": "<tool>", "arguments": {...}}, inside a ```json block."""


def first_message(lineage, parent_id: str | None, candidate: Path, budget: StepBudget | None, directions: str,
                  notes: list[tuple[str, str]] = (), machine: str = "", suite: str | None = None,
                  arch: str | None = None) -> str:
    """The step's opening brief: candidate, incumbent (the suite's, where it has one), recent
    attempts, budget, the earlier steps' notes and the supervisor's directions (the MCP server
    serves the same text as a resource)."""
    parts = [f"Candidate file: {candidate.name} (parent: {parent_id or 'none'})."]
    if lineage is not None and len(lineage):
        best = lineage.best(suite, arch) or lineage.best()
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
    if machine:
        parts.append(machine)
    if budget is not None:
        parts.append(f"Budget for this step: {budget.max_turns} replies, {budget.max_tokens} tokens, "
                     f"{budget.max_seconds:.0f} s.")
    if notes:
        parts.append("Notes from earlier steps (read_notes has more):\n" + "\n".join(
            f"[{sid}] {text.strip()[:1200]}" for sid, text in notes))
    if directions.strip():
        parts.append("Directions from the supervisor (act on them):\n" + directions.strip())
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# tool calls written as text


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```[ \t]*(?:json|tool_call|tool_code)?[ \t]*\n?(.*?)(?:```|$)", re.S | re.I)  # may be cut off


def parse_text_tool_calls(content: str | None) -> tuple[list[tuple[str, str]], str]:
    """Tool calls a model wrote in its text instead of `tool_calls`: Hermes `<tool_call>` tags,
    ```json blocks, or the whole reply as one JSON object. Each call is {"name", "arguments"}
    (or "parameters"). Returns [(name, arguments as JSON text)] and the form found ("" if none)."""
    if not content or "{" not in content:
        return [], ""
    for form, bodies in (("<tool_call> tags", _TAGGED.findall(content)), ("```json blocks", _FENCED.findall(content)),
                         ("a bare JSON object", [content.strip()] if content.strip()[:1] in "{[" else [])):
        calls = [c for body in bodies for c in _calls_in(body)]
        if calls:
            return calls, form
    return [], ""


def _closed(text: str) -> str:
    """`text` with an unterminated string and unclosed brackets closed: a reply cut by max_tokens,
    or a small model's missing last brace, still parses."""
    stack, quoted, escaped = [], False, False
    for ch in text:
        if quoted:
            escaped, quoted = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            quoted = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    return text + ('"' if quoted else "") + "".join(reversed(stack))


def _calls_in(body: str) -> list[tuple[str, str]]:
    start = body.find("{") if body.lstrip()[:1] != "[" else body.find("[")
    if start < 0:
        return []
    obj = None
    for text in (body[start:].strip(), _closed(body[start:].strip())):
        try:
            obj, _ = json.JSONDecoder().raw_decode(text)
            break
        except json.JSONDecodeError:
            continue
    if obj is None:
        return []
    out = []
    for item in obj if isinstance(obj, list) else [obj]:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("function"), dict):
            item = item["function"]
        name = item.get("name") or item.get("tool")
        args = item.get("arguments", item.get("parameters", item.get("args", {})))
        if isinstance(name, str) and name:
            out.append((name, args if isinstance(args, str) else json.dumps(args if args is not None else {})))
    return out


# ---------------------------------------------------------------------------------------------
# the loop


def run_agent_step(endpoint: EndpointConfig, lineage, workbench: Workbench, candidate_path: str | Path,
                   budget: StepBudget | None = None, directions: str = "", parent_id: str | None = None, *,
                   knowledge_dir: str | Path = KNOWLEDGE_DIR, ref_roots: dict[str, Path] | None = None,
                   client=None, log_path: str | Path | None = None, node_id: str | None = None,
                   run_dir: str | Path | None = None, suite: str | None = None,
                   arch: str = "sm_90a", machine: str = "") -> AgentStepResult:
    """One variation step. Never raises for endpoint, tool or harness failures: they are recorded.

    candidate_path: the file the agent edits; when it does not exist and parent_id is given it is
    created from the parent's source. lineage: an avo.lineage.Lineage (or None). log_path: a JSONL
    file that gets every transcript entry as it happens. run_dir: where notes/, profiles and
    disassembly go (notes are kept only with a run_dir); suite and arch: what the harness tools
    (list_configs, sass, profile) work on; machine: a line on what this machine can check."""
    import openai

    started = time.monotonic()
    budget = budget or StepBudget()
    candidate = Path(candidate_path).resolve()
    start_text: str | None = None
    result = AgentStepResult(outcome="budget_exhausted", submit=None, rationale="", transcript=[])
    secrets = tools.secret_values((endpoint.secret(),))
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a") if log_path else None  # closed in the finally below

    def record(entry: dict) -> None:
        entry = json.loads(tools.redact(json.dumps(entry, default=str), secrets))
        result.transcript.append(entry)
        if log:
            log.write(json.dumps(entry, default=str) + "\n")
            log.flush()

    def fail(message: str) -> None:
        result.errors.append(tools.redact(message, secrets)[:1000])

    try:
        if not candidate.exists():
            if not (parent_id and lineage is not None):
                raise FileNotFoundError(f"candidate {candidate} does not exist and there is no parent to copy")
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.write_text(lineage.source(parent_id))
        start_text = candidate.read_text()
        notes_dir = Path(run_dir) / "notes" if run_dir else None
        ctx = tools.Context(candidate=candidate, workbench=workbench, lineage=lineage, parent_id=parent_id,
                            node_id=node_id, knowledge_dir=Path(knowledge_dir).resolve(),
                            ref_roots=reference_roots() if ref_roots is None else ref_roots,
                            project_roots=tools.project_roots(), notes_dir=notes_dir,
                            run_dir=Path(run_dir) if run_dir else None, suite=suite, arch=arch,
                            deadline=started + budget.max_seconds, secrets=secrets,
                            refused=result.refused, errors=result.errors)
        client = client or make_client(endpoint)
        notes = tools.previous_notes(notes_dir, exclude=node_id)
        brief = first_message(lineage, parent_id, candidate, budget, directions, notes, machine, suite, arch)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": brief}]
        record({"role": "system", "content": SYSTEM_PROMPT[:600] + " [...]"})
        record({"role": "user", "content": messages[1]["content"]})
        window = _Window(endpoint)
        idle = 0
        invalid: dict[tuple[str, str], int] = {}
        answered: set[tuple[str, str, str]] = set()  # successful (call, arguments, candidate hash)
        while True:
            elapsed = time.monotonic() - started
            if result.turns >= budget.max_turns:
                fail(f"turn budget spent ({budget.max_turns})")
                break
            if result.tokens_in + result.tokens_out >= budget.max_tokens:
                fail(f"token budget spent ({result.tokens_in + result.tokens_out} tokens)")
                break
            if elapsed >= budget.max_seconds:
                fail(f"time budget spent ({elapsed:.0f} s)")
                break
            window.fit(messages)
            try:
                response = _complete(client, endpoint, messages, budget.max_seconds - elapsed, openai, window, record)
            except Exception as exc:  # endpoint failure after retries: the step ends, the caller goes on
                message = tools.redact(f"{type(exc).__name__}: {exc}", secrets)[:1000]
                result.outcome = "endpoint_error"
                fail(message)
                record({"role": "event", "kind": "endpoint_error", "content": message})
                break
            result.turns += 1
            _count_tokens(result, response, messages)
            window.calibrate(response, messages)
            if not response.choices:
                fail("endpoint returned no choices")
                record({"role": "event", "kind": "empty_reply", "content": "no choices"})
                continue
            msg = response.choices[0].message
            calls = [(c.id or f"call_{result.turns}_{i}", c.function.name, c.function.arguments or "")
                     for i, c in enumerate(msg.tool_calls or [])]
            parsed_from = ""
            if not calls:
                found, parsed_from = parse_text_tool_calls(msg.content)
                calls = [(f"text_{result.turns}_{i}", name, args) for i, (name, args) in enumerate(found)]
            assistant = {"role": "assistant", "content": msg.content}
            if calls:
                assistant["tool_calls"] = [{"id": cid, "type": "function",
                                            "function": {"name": name, "arguments": args}} for cid, name, args in calls]
            messages.append(assistant)
            record(_truncate_entry(assistant))
            if parsed_from:
                record({"role": "event", "kind": "parsed_tool_calls",
                        "content": f"the model wrote {len(calls)} tool call(s) as text ({parsed_from}), not as "
                                   "tool_calls: parsed as a fallback"})
            if not calls:
                idle += 1
                if idle >= _IDLE_REPLIES:
                    result.outcome = "gave_up"
                    result.rationale = result.rationale or tools.redact((msg.content or "")[:2000], secrets)
                    fail("the model stopped calling tools without submitting")
                    break
                if msg.content and '"name"' in msg.content:  # a call the parser could not read
                    record({"role": "event", "kind": "unparsed_tool_call",
                            "content": "the reply looked like a tool call written as text but did not parse"})
                    nudge = ('Your reply looked like a tool call, but it did not parse. Send exactly one JSON '
                             'object, {"name": "<tool>", "arguments": {...}}, in a ```json block, or use tool calls.')
                else:
                    nudge = "Continue with the tools. End the step with submit(rationale) or give_up(reason)."
                messages.append({"role": "user", "content": nudge})
                continue
            idle = 0
            stuck = ""
            for cid, name, raw in calls:
                result.tool_calls[name] = result.tool_calls.get(name, 0) + 1
                out = tools.call(ctx, name, raw)
                content = out.text
                key = (name, _normalized(raw))
                seen = (*key, hashlib.sha256(candidate.read_bytes()).hexdigest())  # the call, on this candidate
                if out.ok and seen in answered and not tools.REGISTRY[name].writes:
                    content += "\n[you made this exact call before on this same candidate: act on its answer]"
                elif out.ok:
                    answered.add(seen)
                if not out.ok:
                    invalid[key] = invalid.get(key, 0) + 1
                    if invalid[key] >= _SAME_INVALID:
                        stuck = f"the same invalid call to {name} was sent {invalid[key]} times; the step was stopped"
                    elif invalid[key] > 1:
                        content += ("\nYou sent exactly this call before and it failed the same way: change it "
                                    "or do something else.")
                messages.append({"role": "tool", "tool_call_id": cid, "content": content})
                record(_truncate_entry({"role": "tool", "tool_call_id": cid, "name": name, "content": content}))
                if stuck or ctx.ended:
                    break
            if stuck:
                result.outcome = "stuck"
                fail(stuck)
                record({"role": "event", "kind": "stuck", "content": stuck})
                break
            if ctx.ended:
                result.outcome = ctx.ended
                if ctx.ended == "budget_exhausted":
                    fail(f"time budget spent ({time.monotonic() - started:.0f} s) while a tool ran")
                break
        result.rationale = tools.redact(ctx.rationale, secrets) or result.rationale
        if ctx.submit:
            result.submit = json.loads(tools.redact(json.dumps(ctx.submit, default=str), secrets))
    except Exception as exc:  # a bug or a missing file: recorded, never raised into the evolve loop
        message = tools.redact(f"{type(exc).__name__}: {exc}", secrets)[:1000]
        fail(message)
        result.outcome = "endpoint_error" if _is_endpoint_error(exc) else "gave_up"
        record({"role": "event", "kind": "error", "content": message})
    finally:
        if start_text is not None and candidate.exists():
            result.diff = tools.redact(tools._diff(start_text, candidate.read_text(), "start", "end"), secrets)
            result.edit_hash = hashlib.sha256(result.diff.encode()).hexdigest()[:16] if result.diff else ""
        result.seconds = round(time.monotonic() - started, 3)
        result.cost_usd = _cost(endpoint, result)
        record({"role": "event", "kind": "end", "content": f"outcome {result.outcome} after {result.turns} "
                f"replies, {result.tokens_in}+{result.tokens_out} tokens, {result.seconds:.1f} s"})
        if log:
            log.close()
    return result


def _normalized(raw: str) -> str:
    try:
        return json.dumps(json.loads(raw), sort_keys=True)
    except (json.JSONDecodeError, TypeError):
        return str(raw).strip()


def _is_endpoint_error(exc: BaseException) -> bool:
    try:
        import openai

        return isinstance(exc, openai.OpenAIError)
    except ImportError:
        return False


_CONTEXT_ERROR = re.compile(r"context.{0,40}(length|window|size|exceed)|maximum context|too many tokens"
                            r"|prompt is too long|exceeds the available context", re.I)


def _is_context_error(exc: BaseException, openai) -> bool:
    return isinstance(exc, openai.BadRequestError) and bool(_CONTEXT_ERROR.search(str(exc)))


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date; retry-after-ms)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _complete(client, endpoint: EndpointConfig, messages: list, seconds_left: float, openai, window, record):
    """One chat completion, max_tokens always set. Transient failures (timeouts, connection errors,
    429, 5xx) are retried, waiting what Retry-After asks (capped) or a doubling backoff; a
    context-length error shrinks the conversation and retries; other errors are raised at once."""
    transient = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                 openai.InternalServerError)
    # tool_choice is left to its default ("auto" when tools are given): vLLM refuses an explicit
    # "auto" unless started with --enable-auto-tool-choice, and "required" made a small model loop
    extra = {} if endpoint.temperature is None else {"temperature": endpoint.temperature}
    deadline = time.monotonic() + seconds_left
    attempt = shrinks = 0
    while True:
        left = deadline - time.monotonic()
        try:
            return client.chat.completions.create(
                model=endpoint.model, messages=messages, tools=tools.openai_tools(), max_tokens=endpoint.max_tokens,
                timeout=max(1.0, min(endpoint.request_timeout_s, left)), **extra)
        except transient as exc:
            asked = _retry_after(exc)
            delay = min(asked, _RETRY_AFTER_CAP_S) if asked is not None else endpoint.retry_backoff_s * 2 ** attempt
            if attempt >= endpoint.max_retries or delay >= deadline - time.monotonic():
                raise
            time.sleep(delay)
            attempt += 1
        except openai.BadRequestError as exc:
            if not _is_context_error(exc, openai) or shrinks >= _SHRINKS:
                raise
            shrinks += 1
            before = window.limit
            window.shrink()
            window.fit(messages)
            record({"role": "event", "kind": "context_shrunk",
                    "content": f"the server said the context is too long; the conversation was shrunk to "
                               f"~{window.limit} tokens (was ~{before}) and the request retried"})


class _Window:
    """The model's context as this step sees it: a token limit (window - max_tokens), a
    characters-per-token ratio learnt from the server's usage reports, and elision to fit."""

    def __init__(self, endpoint: EndpointConfig):
        window = endpoint.context_window or _DEFAULT_WINDOW
        self.limit = max(1024, window - endpoint.max_tokens - 256)
        self.chars_per_token = 3.0  # conservative until the server reports usage
        self.used = 0  # tokens of the last request as fitted (messages and tool schemas)
        self.overhead = len(json.dumps(tools.openai_tools()))  # the tool schemas ride along on every request

    def calibrate(self, response, messages: list) -> None:
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        if tokens and tokens > 200:
            # what was sent: the messages and the tool schemas, which the server counts too
            self.chars_per_token = max(1.5, min(6.0, (_chars(messages) + self.overhead) / tokens))

    def shrink(self) -> None:
        self.limit = max(512, int(min(self.limit, self.used or self.limit) * 0.7))

    def fit(self, messages: list) -> None:
        """Elide, oldest first, long tool results and long tool-call arguments; then shorten all
        but the newest messages; then drop the oldest turns. The system prompt, the brief and the
        newest exchange stay."""
        budget = int(self.limit * self.chars_per_token) - self.overhead
        if _chars(messages) > budget:
            # once over, cut well below the limit: every elision changes the conversation's prefix,
            # which costs a server its prompt cache (llama.cpp re-read 3k tokens at 40 tokens/s on a CPU)
            _elide(messages, int(budget * 0.7))
        self.used = int((_chars(messages) + self.overhead) / self.chars_per_token)


def _elide(messages: list, budget: int) -> None:
    for keep, cut in ((4, 1000), (1, 300)):
        for m in messages[2:len(messages) - keep]:
            if _chars(messages) <= budget:
                return
            _shorten(m, cut)
    dropped = False
    while _chars(messages) > budget:
        groups = _turns(messages)
        if len(groups) <= 1:
            break
        start, end = groups[0]
        del messages[start:end]
        dropped = True
    if dropped and messages[2].get("content") != _DROPPED:  # one note, however often turns are dropped
        messages.insert(2, {"role": "user", "content": _DROPPED})


def _chars(messages: list) -> int:
    total = 0
    for m in messages:
        total += len(m.get("content") or "") + 16
        for c in m.get("tool_calls") or ():
            total += len(c["function"]["name"]) + len(c["function"]["arguments"] or "") + 32
    return total


def _shorten(m: dict, cut: int) -> None:
    content = m.get("content") or ""
    if len(content) > cut and m["role"] != "system":
        m["content"] = content[:cut // 2] + f"\n[... {len(content) - cut // 2} chars elided to save context; call " \
                                            "the tool again if needed]"
    for c in m.get("tool_calls") or ():
        c["function"]["arguments"] = _shorten_args(c["function"]["arguments"] or "", cut)


def _shorten_args(raw: str, cut: int) -> str:
    if len(raw) <= cut:
        return raw
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        return json.dumps({"elided": f"{len(raw)} chars of arguments"})
    if not isinstance(args, dict):
        return json.dumps({"elided": f"{len(raw)} chars of arguments"})
    return json.dumps({k: (v[:cut // 4] + f" [... {len(v) - cut // 4} chars elided]"
                           if isinstance(v, str) and len(v) > cut // 4 else v) for k, v in args.items()})


def _turns(messages: list) -> list[tuple[int, int]]:
    """[start, end) of each assistant turn after the brief (its message and its tool results)."""
    starts = [i for i, m in enumerate(messages) if i >= 2 and m["role"] == "assistant"]
    return [(s, starts[j + 1] if j + 1 < len(starts) else len(messages)) for j, s in enumerate(starts)]


def _count_tokens(result: AgentStepResult, response, messages: list) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
        result.tokens_in += int(usage.prompt_tokens or 0)
        result.tokens_out += int(usage.completion_tokens or 0)
        return
    result.tokens_estimated = True
    result.tokens_in += _chars(messages) // 4
    if response.choices:
        m = response.choices[0].message
        args = sum(len(c.function.arguments or "") for c in m.tool_calls or [])
        result.tokens_out += (len(m.content or "") + args) // 4


def _cost(endpoint: EndpointConfig, result: AgentStepResult) -> float | None:
    if endpoint.price_in_per_mtok is None and endpoint.price_out_per_mtok is None:
        return None
    return round((result.tokens_in * (endpoint.price_in_per_mtok or 0.0)
                  + result.tokens_out * (endpoint.price_out_per_mtok or 0.0)) / 1e6, 6)


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
