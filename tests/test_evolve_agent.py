"""`python -m avo.evolve` with the agent operator, end to end on the CPU: a local OpenAI-compatible
server replays the model's side; the loop, the harness workbench (compile-only here: no GPU) and
the lineage are real. Step 1 edits the kernel, compiles it and submits; step 2 sends a malformed
call and an edit outside its candidate, then gives up."""

import json

from avo.evolve import main
from avo.lineage import Lineage
from tests.test_agent import SECRET, ScriptedServer, _call, _reply
from tests.test_evolve import _args


def test_agent_run_records_nodes_statuses_diffs_and_costs(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_TEST_API_KEY", SECRET)
    rationale = "TILE_N 32 -> 16: half the shared memory per CTA"
    server = ScriptedServer([
        # step 1
        _reply(_call("search_knowledge", {"query": "shared memory per SM"}), _call("read_candidate", {})),
        _reply(_call("edit_candidate", {"old": "TILE_N = 32", "new": "TILE_N = 16"})),
        _reply(_call("compile", {})),
        _reply(_call("submit", {"rationale": rationale})),
        # step 2
        _reply(_call("edit_candidate", None, raw='{"old": "TILE_N"'),
               _call("write_candidate", {"text": "pwned", "path": "../../escape.py"})),
        _reply(_call("give_up", {"reason": "out of ideas"})),
    ])
    try:
        code = main(_args(tmp_path, "--operator", "agent", "--candidates", "3",
                          "--set", f"endpoint.base_url={server.url}", "--set", "endpoint.model=scripted",
                          "--set", "endpoint.api_key_env=AVO_TEST_API_KEY", "--set", "endpoint.request_timeout_s=30",
                          "--set", "agent.max_turns=8"))
    finally:
        server.close()
    assert code == 0
    lineage = Lineage.load(tmp_path / "archive")
    seed, edited, gave_up = lineage.nodes()
    assert (seed.operator, seed.status) == ("seed", "screened")

    assert (edited.operator, edited.status, edited.parents) == ("agent", "screened", [seed.id])
    assert edited.rationale == rationale and edited.extra["outcome"] == "submitted"
    assert "-TILE_N = 32" in edited.extra["diff"] and "+TILE_N = 16" in edited.extra["diff"]
    assert edited.extra["compile_reports"]["sm_90a"]  # compiled for real by the harness
    assert edited.cost["tokens_in"] == 400 and edited.cost["tokens_out"] == 40 and edited.cost["turns"] == 4
    assert edited.extra["tool_calls"]["submit"] == 1

    assert (gave_up.operator, gave_up.status, gave_up.parents) == ("agent", "rejected", [edited.id])
    assert gave_up.diagnosis.startswith("not submitted: gave_up")
    assert [r["tool"] for r in gave_up.extra["refused"]] == ["write_candidate"]
    assert gave_up.extra["diff"] == "" and len(gave_up.extra["errors"]) == 2

    transcript = (tmp_path / "run" / "transcripts" / f"{edited.id}.jsonl").read_text()
    assert "TILE_N = 16" in transcript and SECRET not in transcript
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["tokens"] == (4 + 2) * 110 and len(state["steps"]) == 2  # 110 tokens per scripted reply
    assert [s["status"] for s in state["steps"]] == ["screened", "gave_up"]


def test_supervisor_redirects_a_stalled_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_TEST_API_KEY", SECRET)
    advice = "Try a different tile_n and measure it."
    server = ScriptedServer([
        _reply(_call("give_up", {"reason": "stuck 1"})),
        _reply(_call("give_up", {"reason": "stuck 2"})),
        {"content": advice},  # the supervisor's model review after the second stalled step
        _reply(_call("give_up", {"reason": "stuck 3"})),
    ])
    try:
        code = main(_args(tmp_path, "--operator", "agent", "--candidates", "4",
                          "--set", f"endpoint.base_url={server.url}", "--set", "endpoint.model=scripted",
                          "--set", "endpoint.api_key_env=AVO_TEST_API_KEY", "--set", "supervisor.stall_steps=2"))
    finally:
        server.close()
    assert code == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    fired = [e for e in events if e["event"] == "supervisor"]
    assert len(fired) == 1 and fired[0]["findings"] == ["stagnation"] and fired[0]["by"] == "rules+model"
    assert "No commit in 2 steps" in fired[0]["directions"] and advice in fired[0]["directions"]
    assert all(r["body"]["max_tokens"] > 0 for r in server.requests)  # the review's request too
    assert "tools" not in server.requests[2]["body"]  # the review is a plain completion
    third_step_prompt = json.dumps(server.requests[3]["body"]["messages"])
    assert "No commit in 2 steps" in third_step_prompt and advice in third_step_prompt
