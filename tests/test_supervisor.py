"""The supervisor's rules on scripted trajectories, and its model review against a scripted endpoint."""

from types import SimpleNamespace

from avo.agent import AgentStepResult, EndpointConfig
from avo.lineage import Candidate
from avo.supervisor import (
    StepRecord,
    SupervisorConfig,
    choose_fork,
    detect,
    diagnosis_signature,
    record_from_step,
    review,
)

CFG = SupervisorConfig(stall_steps=4, repeat_limit=3)


def _nodes():
    """seed v0 -> v1 (600) -> v2 (640, incumbent, 3 children tried) ; v1 -> v3 (625, unexplored)."""
    nodes = [Candidate(id="v0", status="committed", geomean=500.0),
             Candidate(id="v1", parents=["v0"], status="committed", geomean=600.0),
             Candidate(id="v2", parents=["v1"], status="committed", geomean=640.0),
             Candidate(id="v3", parents=["v1"], status="committed", geomean=625.0)]
    nodes += [Candidate(id=f"x{i}", parents=["v2"], status="rejected", geomean=630.0) for i in range(3)]
    return nodes


def _rejected(step, edit, diagnosis="slower: geomean 631.2 < 640.0"):
    return StepRecord(step=step, status="rejected", parent_id="v2", edit_hash=edit, diagnosis=diagnosis,
                      geomean=631.0 + step / 10)


def test_healthy_trajectory_does_not_fire():
    records = []
    for step in range(12):  # a commit every third step, different edits and failures in between
        if step % 3 == 2:
            records.append(StepRecord(step=step, status="committed", parent_id="v2", edit_hash=f"e{step}"))
        else:
            # the same failure twice, then a commit: not a cycle
            records.append(_rejected(step, f"e{step}", diagnosis=f"max error 0.{step} on causal {step}k"))
    assert detect(records, CFG) == [] and review(records, _nodes(), CFG) is None


def test_stall_fires_at_n_steps_and_forks_to_a_less_explored_near_best_node():
    records = [StepRecord(step=0, status="committed", node_id="v2", parent_id="v1")]
    records += [_rejected(i, f"edit{i}", diagnosis=["slower", "spills 24 bytes", "ptxas error", "wrong lse"][i - 1])
                for i in range(1, 4)]
    assert detect(records, CFG) == []  # 3 steps without a commit: not yet
    records.append(_rejected(4, "edit4", diagnosis="smem over budget"))
    findings = detect(records, CFG)
    assert [f.kind for f in findings] == ["stagnation"] and findings[0].count == 4
    redirect = review(records, _nodes(), CFG)
    # v3 (625 >= 0.95 * 640, no children) beats the incumbent v2 the stalled steps kept using
    assert redirect.fork_from == "v3" and redirect.by == "rules"
    assert "No commit in 4 steps" in redirect.directions and "v3" in redirect.directions
    records.append(_rejected(5, "edit5", diagnosis="slower again"))
    assert detect(records, CFG) == []  # fires again at 8, not every step
    records += [_rejected(i, f"edit{i}", diagnosis=f"other failure {chr(97 + i)}") for i in (6, 7, 8)]
    assert [f.kind for f in detect(records, CFG)] == ["stagnation"]


def _failed(step, edit, diagnosis):
    return StepRecord(step=step, status="failed_compile", parent_id="v2", edit_hash=edit, diagnosis=diagnosis)


def test_repeated_failure_fires_even_when_the_numbers_differ():
    records = [StepRecord(step=0, status="committed", node_id="v2")]
    failure = "compile failed (/tmp/run/cand_{n}.py:{n}7): DSLRuntimeError: register count {n}9 exceeds 0x{n}ff"
    records += [_failed(i, f"e{i}", diagnosis=failure.format(n=i)) for i in (1, 2)]
    assert detect(records, CFG) == []
    records.append(_failed(3, "e3", diagnosis=failure.format(n=3)))
    findings = detect(records, CFG)
    assert [f.kind for f in findings] == ["repeated_failure"] and findings[0].count == 3
    redirect = review(records, _nodes(), CFG)
    assert redirect.fork_from is None and "same failure happened 3 times" in redirect.directions
    assert diagnosis_signature(failure.format(n=1)) == diagnosis_signature(failure.format(n=8))
    assert diagnosis_signature("spills 24 bytes") != diagnosis_signature("smem over budget")


def test_slower_but_correct_candidates_are_not_a_repeated_failure():
    # the harness's diagnosis of a rejected candidate differs only in numbers: stagnation's business
    slow = "correct; geomean {g} TFLOPS, 0.98{g}x the incumbent (noise 0.50%)"
    records = [StepRecord(step=0, status="committed")] + [_rejected(i, f"e{i}", slow.format(g=600 + i))
                                                          for i in (1, 2, 3)]
    assert detect(records, CFG) == []


def test_repeated_edit_fires_and_a_commit_resets_the_count():
    records = [_rejected(i, "same", diagnosis=f"variant {chr(97 + i)}") for i in range(2)]
    records.append(StepRecord(step=2, status="committed", edit_hash="same"))
    records += [_rejected(i, "same", diagnosis=f"variant {chr(97 + i)}") for i in (3, 4)]
    assert detect(records, CFG) == []  # only two since the commit
    records.append(_rejected(5, "same", diagnosis="variant z"))
    assert [f.kind for f in detect(records, CFG)] == ["repeated_edit"]


def test_endpoint_outages_are_not_counted_as_stagnation():
    records = [StepRecord(step=0, status="committed")]
    records += [StepRecord(step=i, status="endpoint_error", diagnosis="APIConnectionError") for i in range(1, 9)]
    assert detect(records, CFG) == []


def test_fork_needs_another_committed_node_near_the_best():
    nodes = _nodes()
    assert choose_fork(nodes[:1], [], CFG) is None
    far = [n for n in nodes if n.id != "v3"]  # v1 at 600 is more than 5% below 640
    assert choose_fork(far, [_rejected(1, "a")], CFG) is None


class _Completions:
    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def create(self, **kwargs):
        self.calls.append(kwargs)
        if isinstance(self.reply, Exception):
            raise self.reply
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=self.reply))])


def _client(reply):
    return SimpleNamespace(chat=SimpleNamespace(completions=_Completions(reply)))


def test_model_review_is_appended_and_its_failure_falls_back_to_rules():
    records = [StepRecord(step=0, status="committed")] + [_rejected(i, f"e{i}", f"d{chr(97 + i)}") for i in range(1, 5)]
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m")
    client = _client("Try the ping-pong schedule of two warp groups instead of tile changes.")
    redirect = review(records, _nodes(), CFG, endpoint=endpoint, client=client)
    assert redirect.by == "rules+model" and "ping-pong" in redirect.directions
    prompt = client.chat.completions.calls[0]["messages"][1]["content"]
    assert "4 steps since the last commit" in prompt and "step 4: rejected" in prompt
    broken = review(records, _nodes(), CFG, endpoint=endpoint, client=_client(RuntimeError("down")))
    assert broken.by == "rules" and "No commit in 4 steps" in broken.directions
    assert "model review failed: RuntimeError" in broken.notes[0]


def test_record_from_step_reads_the_submit_report():
    result = AgentStepResult(outcome="submitted", rationale="smaller tile", transcript=[], edit_hash="abc",
                             submit={"status": "failed_correctness", "node_id": "v7", "geomean": 0.0,
                                     "diagnosis": "max error 0.3 on causal 4k"})
    record = record_from_step(7, result, parent_id="v2")
    assert (record.status, record.node_id, record.diagnosis, record.edit_hash) == (
        "failed_correctness", "v7", "max error 0.3 on causal 4k", "abc")
    idle = AgentStepResult(outcome="budget_exhausted", submit=None, rationale="", transcript=[],
                           errors=["turn budget spent (40)"])
    assert record_from_step(8, idle).status == "budget_exhausted"
