"""The supervisor: watches the trajectory of variation steps and redirects it when it stalls.

Two rules, over the steps since the last commit:
- stagnation: `stall_steps` steps in a row without a commit (fires again at every further multiple);
- unproductive cycle: the latest step repeats an edit (same `edit_hash`) or a failure (same
  diagnosis once numbers, paths and hex are stripped) already seen `repeat_limit - 1` times.
  Failures are failed_*, timeout, crashed and steps that ended unsubmitted; a correct candidate
  that was merely slower ("rejected") is stagnation's business, not a repeated failure.

A finding becomes a `Redirect`: directions for the next step's prompt and, on stagnation, an older
committed node to fork from (one close to the best but less explored). With an endpoint the model
also reviews the recent trajectory and its advice is appended; if that fails the rules stand alone.
Everything but `review`'s model call is a pure function of the records and the lineage nodes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Finding", "Redirect", "StepRecord", "SupervisorConfig", "choose_fork", "detect",
           "diagnosis_signature", "record_from_step", "review"]


@dataclass(frozen=True)
class StepRecord:
    """What the supervisor needs of one variation step."""

    step: int
    status: str  # the lineage status (committed, rejected, failed_*), or the agent outcome when nothing
    #              was submitted (endpoint_error, gave_up, budget_exhausted)
    node_id: str | None = None
    parent_id: str | None = None
    edit_hash: str = ""
    diagnosis: str = ""
    geomean: float = 0.0
    rationale: str = ""


@dataclass(frozen=True)
class SupervisorConfig:
    stall_steps: int = 6  # N: steps without a commit before redirecting
    repeat_limit: int = 3  # K: the same edit or failure this many times is a cycle
    fork_within: float = 0.05  # fork only to committed nodes within this fraction of the best geomean
    review_window: int = 10  # steps shown to the model reviewer


@dataclass(frozen=True)
class Finding:
    kind: str  # stagnation | repeated_edit | repeated_failure
    count: int
    evidence: str


@dataclass(frozen=True)
class Redirect:
    directions: str  # text for the next step's prompt
    fork_from: str | None  # a committed node to start the next step from, or None to stay
    findings: tuple[Finding, ...]
    by: str = "rules"  # rules | rules+model
    notes: list[str] = field(default_factory=list)  # e.g. why the model review was skipped


def diagnosis_signature(text: str) -> str:
    """A failure's identity: lowercased, paths reduced to file names, numbers and hex removed."""
    text = (text or "").lower()
    text = re.sub(r"(?:[\w.-]*/)+([\w.-]+)", r"\1", text)
    text = re.sub(r"0x[0-9a-f]+|\d+(?:\.\d+)?(?:e[+-]?\d+)?", "#", text)
    return re.sub(r"\s+", " ", text).strip()[:300]


def _since_last_commit(records: list[StepRecord]) -> list[StepRecord]:
    tail = []
    for r in reversed(records):
        if r.status == "committed":
            break
        tail.append(r)
    return tail[::-1]


def _is_failure(r: StepRecord) -> bool:
    return r.status not in ("committed", "rejected", "screened", "pending")


def detect(records: list[StepRecord], config: SupervisorConfig = SupervisorConfig()) -> list[Finding]:
    """The findings that fire on the latest step (empty on a healthy trajectory)."""
    # an endpoint outage says nothing about the search: those steps are not counted
    if records and records[-1].status == "endpoint_error":
        return []
    tail = [r for r in _since_last_commit(records) if r.status != "endpoint_error"]
    if not tail:
        return []
    found = []
    if len(tail) >= config.stall_steps and len(tail) % config.stall_steps == 0:
        found.append(Finding("stagnation", len(tail), f"{len(tail)} steps since the last commit"))
    last = tail[-1]
    if last.edit_hash:
        n = sum(r.edit_hash == last.edit_hash for r in tail)
        if n >= config.repeat_limit:
            found.append(Finding("repeated_edit", n, f"the same edit ({last.edit_hash}) was tried {n} times: "
                                 f"{last.rationale[:200]}"))
    if last.diagnosis and _is_failure(last):
        sig = diagnosis_signature(last.diagnosis)
        n = sum(diagnosis_signature(r.diagnosis) == sig for r in tail if r.diagnosis and _is_failure(r))
        if n >= config.repeat_limit:
            found.append(Finding("repeated_failure", n, f"the same failure {n} times: {last.diagnosis[:300]}"))
    return found


def choose_fork(nodes, records: list[StepRecord], config: SupervisorConfig = SupervisorConfig()) -> str | None:
    """An older committed node to restart from: within `fork_within` of the best geomean, not the
    parent the stalled steps used, the least explored (fewest recorded children), then the fastest.
    `nodes` are lineage Candidates (anything with id, status, geomean, parents)."""
    committed = [n for n in nodes if n.status == "committed"]
    if len(committed) < 2:
        return None
    best = max(n.geomean for n in committed)
    recent_parents = {r.parent_id for r in _since_last_commit(records) if r.parent_id}
    children = Counter(p for n in nodes for p in n.parents)
    options = [n for n in committed if n.geomean >= (1 - config.fork_within) * best and n.id not in recent_parents]
    if not options:
        return None
    return min(options, key=lambda n: (children[n.id], -n.geomean)).id


_ADVICE = {
    "stagnation": "No commit in {count} steps. Stop polishing the current idea: pick a different bottleneck "
                  "(read knowledge/tried.md and knowledge/flash_attention.md for options not yet tried), and "
                  "measure before and after with benchmark().",
    "repeated_edit": "You have made the same edit {count} times; its result will not change. Do not repeat it. "
                     "Evidence: {evidence}",
    "repeated_failure": "The same failure happened {count} times. Read the error, find its cause in the "
                        "reference sources (search_reference) before editing again, or change approach. "
                        "Evidence: {evidence}",
}


def _rules_text(findings: list[Finding], fork: str | None) -> str:
    lines = [_ADVICE[f.kind].format(count=f.count, evidence=f.evidence) for f in findings]
    if fork:
        lines.append(f"The next step starts from {fork}, an earlier committed version, not the incumbent: "
                     "look at diff_to_parent on the path to it for what it does differently.")
    return "\n".join(f"- {line}" for line in lines)


def review(records: list[StepRecord], nodes=(), config: SupervisorConfig = SupervisorConfig(),
           endpoint=None, client=None) -> Redirect | None:
    """None on a healthy trajectory; otherwise a Redirect from the rules, with the model's review
    appended when an endpoint (avo.agent.EndpointConfig) is given and answers."""
    findings = detect(records, config)
    if not findings:
        return None
    fork = choose_fork(list(nodes), records, config) if any(f.kind == "stagnation" for f in findings) else None
    text, by, notes = _rules_text(findings, fork), "rules", []
    if endpoint is not None:
        try:
            advice = _model_review(records[-config.review_window:], findings, endpoint, client)
            if advice:
                text, by = f"{text}\n\nReviewer's advice:\n{advice}", "rules+model"
        except Exception as exc:  # the rules stand on their own
            notes.append(f"model review failed: {type(exc).__name__}: {str(exc)[:300]}")
    return Redirect(directions=text, fork_from=fork, findings=tuple(findings), by=by, notes=notes)


def _model_review(records: list[StepRecord], findings: list[Finding], endpoint, client) -> str:
    from avo.agent import make_client

    client = client or make_client(endpoint)
    steps = "\n".join(f"step {r.step}: {r.status}, geomean {r.geomean:.1f}, parent {r.parent_id}, "
                      f"edit {r.edit_hash or '-'}; {(r.rationale or '')[:200]} | {(r.diagnosis or '')[:200]}"
                      for r in records)
    problems = "; ".join(f.evidence for f in findings)
    response = client.chat.completions.create(
        model=endpoint.model, timeout=min(endpoint.request_timeout_s, 120),
        max_tokens=min(getattr(endpoint, "max_tokens", 512), 512),  # 120 words asked for
        **({} if endpoint.temperature is None else {"temperature": endpoint.temperature}),
        messages=[{"role": "system", "content": "You review an evolutionary search over CUDA attention kernels. "
                   "Answer in at most 120 words: what the steps keep getting wrong and one or two concrete, "
                   "different directions for the next step."},
                  {"role": "user", "content": f"Problems detected: {problems}\n\nRecent steps:\n{steps}"}])
    return (response.choices[0].message.content or "").strip()[:1500]


def record_from_step(step: int, result, parent_id: str | None = None) -> StepRecord:
    """A StepRecord from an avo.agent.AgentStepResult (status and diagnosis from its submit report)."""
    submit = result.submit or {}
    status = submit.get("status") or result.outcome
    diagnosis = submit.get("diagnosis") or submit.get("reason") or ""
    if not diagnosis and not submit:
        diagnosis = result.errors[-1] if result.errors else ""
    return StepRecord(step=step, status=status, node_id=submit.get("node_id"), parent_id=parent_id,
                      edit_hash=result.edit_hash, diagnosis=str(diagnosis), geomean=float(submit.get("geomean") or 0.0),
                      rationale=result.rationale)
