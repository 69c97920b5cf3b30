"""The agent loop against the failure modes of real endpoints, one scripted server per case: tool
calls written as text, max_tokens, a repeated invalid call, context elision and context-length
errors, Retry-After, a running tool outliving the step, secrets, and an outage that pauses a run
instead of spending candidates."""
# ruff: noqa: F811  (the `seeded` fixture is imported from test_agent and named as an argument)

import json
import os
import subprocess
import sys
import time

from avo.agent import EndpointConfig, StepBudget, parse_text_tool_calls, run_agent_step
from avo.evolve import main
from avo.lineage import Lineage
from tests.test_agent import SECRET, RecordingWorkbench, ScriptedServer, _call, _endpoint, _reply, seeded  # noqa: F401
from tests.test_evolve import _args


def _run(server, seeded, workbench=None, budget=None, **endpoint):
    lineage, candidate, _ = seeded
    try:
        return run_agent_step(_endpoint(server, **endpoint), lineage, workbench or RecordingWorkbench(), candidate,
                              budget or StepBudget(max_turns=10), parent_id="v0000")
    finally:
        server.close()


def test_text_tool_calls_are_parsed_and_the_transcript_says_so(seeded):
    _, candidate, seed_text = seeded
    server = ScriptedServer([
        {"content": 'I will edit.\n```json\n{"name": "edit_candidate", "arguments": '
                    '{"old": "TILE_N = 32", "new": "TILE_N = 16"}}\n```'},
        {"content": '<tool_call>\n{"name": "give_up", "arguments": {"reason": "tried a smaller tile"}}\n</tool_call>'},
    ])
    result = _run(server, seeded)
    assert result.outcome == "gave_up" and result.rationale == "tried a smaller tile"
    assert candidate.read_text() == seed_text.replace("TILE_N = 32", "TILE_N = 16")
    parsed = [e["content"] for e in result.transcript if e.get("kind") == "parsed_tool_calls"]
    assert len(parsed) == 2 and "```json blocks" in parsed[0] and "<tool_call> tags" in parsed[1]
    # the model sees its parsed call answered as a tool result, tied to a call id
    second = server.requests[1]["body"]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "edit_candidate"
    assert second[-1]["role"] == "tool" and "edited at line" in second[-1]["content"]


def test_text_parser_forms():
    assert parse_text_tool_calls("no calls here") == ([], "")
    calls, form = parse_text_tool_calls('{"name": "compile", "arguments": {}}')
    assert calls == [("compile", "{}")] and form == "a bare JSON object"
    calls, _ = parse_text_tool_calls('```json\n[{"name": "a", "parameters": {"x": 1}}, '
                                     '{"function": {"name": "b", "arguments": "{\\"y\\": 2}"}}]\n```')
    assert calls == [("a", '{"x": 1}'), ("b", '{"y": 2}')]
    calls, form = parse_text_tool_calls('<tool_call>{"name": "read_candidate", "arguments": {}}')  # never closed
    assert calls == [("read_candidate", "{}")] and form == "<tool_call> tags"


def test_max_tokens_is_sent_on_every_request(seeded):
    server = ScriptedServer([_reply(_call("list_lineage", {}))] * 2 + [_reply(_call("give_up", {"reason": "x"}))])
    _run(server, seeded, max_tokens=777)
    assert len(server.requests) == 3 and all(r["body"]["max_tokens"] == 777 for r in server.requests)


def test_the_same_invalid_call_three_times_stops_the_step(seeded):
    bad = _call("read_knowledge", {"path": "../../secrets"})
    server = ScriptedServer([_reply(bad), _reply(bad), _reply(bad), _reply(_call("give_up", {"reason": "x"}))])
    result = _run(server, seeded)
    assert result.outcome == "stuck" and result.turns == 3 and len(server.requests) == 3
    assert "the same invalid call to read_knowledge was sent 3 times" in result.errors[-1]
    second_answer = server.requests[2]["body"]["messages"][-1]["content"]
    assert "You sent exactly this call before" in second_answer


def test_context_elision_counts_tool_call_arguments_and_the_window(seeded):
    big = "x = 1\n" * 10000  # 60k characters of arguments in one call
    server = ScriptedServer([_reply(_call("write_candidate", {"text": big})), _reply(_call("list_lineage", {})),
                             _reply(_call("list_lineage", {})), _reply(_call("give_up", {"reason": "x"}))])
    _run(server, seeded, context_window=8000, max_tokens=500)
    last = server.requests[-1]["body"]["messages"]
    write = next(m for m in last if m.get("tool_calls") and m["tool_calls"][0]["function"]["name"] == "write_candidate")
    args = json.loads(write["tool_calls"][0]["function"]["arguments"])
    assert len(args["text"]) < 2000 and "chars elided" in args["text"]  # still valid JSON, same keys
    sent = sum(len(m.get("content") or "") + sum(len(c["function"]["arguments"]) for c in m.get("tool_calls") or [])
               for m in last) + len(json.dumps(server.requests[-1]["body"]["tools"]))
    assert sent < (8000 - 500) * 6  # under the window at the most generous characters per token


def test_a_context_length_error_shrinks_and_retries(seeded):
    server = ScriptedServer([_reply(_call("read_candidate", {})), _reply(_call("list_lineage", {})),
                             ("status", 400, "the request exceeds the available context size, try increasing it"),
                             _reply(_call("give_up", {"reason": "done"}))])
    result = _run(server, seeded, context_window=60000)
    assert result.outcome == "gave_up" and len(server.requests) == 4
    shrunk = [e for e in result.transcript if e.get("kind") == "context_shrunk"]
    assert len(shrunk) == 1 and "shrunk" in shrunk[0]["content"]
    size = [len(json.dumps(r["body"]["messages"])) for r in server.requests]
    assert size[3] < size[2]  # the retry sent less than the request the server refused


def test_a_400_that_is_not_about_context_is_not_retried(seeded):
    server = ScriptedServer([("status", 400, "tools are not supported by this model")])
    result = _run(server, seeded)
    assert result.outcome == "endpoint_error" and len(server.requests) == 1


def test_429_honours_retry_after(seeded):
    server = ScriptedServer([("status", 429, "slow down", {"Retry-After": "1"}),
                             ("status", 503, "busy", {"retry-after-ms": "300"}),
                             _reply(_call("give_up", {"reason": "done"}))])
    started = time.monotonic()
    result = _run(server, seeded, max_retries=3, retry_backoff_s=0.001)
    assert result.outcome == "gave_up" and len(server.requests) == 3
    assert time.monotonic() - started >= 1.3  # 1 s + 0.3 s asked for, not the 1 ms backoff


def test_the_step_time_limit_bounds_a_running_tool(seeded):
    class SlowTest(RecordingWorkbench):
        def test(self, path, **kw):
            time.sleep(8)
            return {"ok": True}

    server = ScriptedServer([_reply(_call("test", {})), _reply(_call("give_up", {"reason": "late"}))])
    started = time.monotonic()
    result = _run(server, seeded, workbench=SlowTest(), budget=StepBudget(max_seconds=1.5))
    assert time.monotonic() - started < 4
    assert result.outcome == "budget_exhausted" and "while a tool ran" in result.errors[-1]
    assert len(server.requests) == 1


def test_secrets_never_reach_the_model_and_the_key_leaves_the_environment(seeded, monkeypatch):
    monkeypatch.setenv("AVO_TEST_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_0123456789abcdefghijklmnop")

    class Leaky(RecordingWorkbench):
        def compile(self, path):
            return {"ok": False, "error": f"failed with key {SECRET} and hf_0123456789abcdefghijklmnop"}

    server = ScriptedServer([_reply(_call("compile", {})), _reply(_call("give_up", {"reason": "x"}))])
    result = _run(server, seeded, workbench=Leaky())
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"  # the endpoint still gets its key
    seen = json.dumps(server.requests[1]["body"]) + json.dumps(result.as_dict())
    assert SECRET not in seen and "hf_0123456789abcdefghijklmnop" not in seen and "[redacted]" in seen
    # taken out of the environment: a worker, a compile or ncu started now inherits no key
    assert "AVO_TEST_API_KEY" not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('AVO_TEST_API_KEY'))"],
                           capture_output=True, text=True)
    assert child.stdout.strip() == "None"
    assert EndpointConfig(base_url="x", model="m", api_key_env="AVO_TEST_API_KEY").api_key() == SECRET


def _agent_args(tmp_path, server, *more):
    return _args(tmp_path, "--operator", "agent", "--set", f"endpoint.base_url={server.url}",
                 "--set", "endpoint.model=scripted", "--set", "endpoint.request_timeout_s=30", *more)


def test_an_outage_pauses_the_run_and_spends_no_candidate(tmp_path):
    # four 503s (a request and its 3 retries, Retry-After 0) fail the first attempt before the model
    # said anything; the run pauses, tries again, and the step that reaches the model is recorded
    server = ScriptedServer([("status", 503, "down", {"Retry-After": "0"})] * 4
                            + [_reply(_call("give_up", {"reason": "back"}))])
    try:
        code = main(_agent_args(tmp_path, server, "--candidates", "2", "--set", "agent.outage_wait_s=1"))
    finally:
        server.close()
    assert code == 0
    nodes = Lineage.load(tmp_path / "archive").nodes()
    assert [(n.operator, n.status) for n in nodes] == [("seed", "screened"), ("agent", "rejected")]
    assert nodes[1].diagnosis.startswith("not submitted: gave_up")
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    paused = [e for e in events if e["event"] == "paused"]
    assert len(paused) == 1 and "InternalServerError" in paused[0]["error"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["candidates"] == 2 and [s["status"] for s in state["steps"]] == ["gave_up"]


def test_a_long_outage_stops_the_run_with_nothing_spent(tmp_path, capsys):
    server = ScriptedServer([("status", 503, "down", {"Retry-After": "0"})] * 8)
    try:
        code = main(_agent_args(tmp_path, server, "--candidates", "3", "--set", "agent.outage_wait_s=0"))
    finally:
        server.close()
    assert code == 1
    err = capsys.readouterr().err
    assert "did not answer" in err and "no candidate was spent" in err and "--resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    nodes = Lineage.load(tmp_path / "archive").nodes()
    assert [n.operator for n in nodes] == ["seed"]  # no pending or rejected node left behind
    assert not (tmp_path / "run" / "candidates" / "v0001.py").exists()


def test_a_repeated_call_with_the_same_answer_is_pointed_out(seeded):
    # Qwen2.5-Coder-1.5B called list_lineage seven times in a row in one step of the real-model run,
    # and compile eight times on an unchanged candidate in another
    server = ScriptedServer([_reply(_call("list_lineage", {}))] * 2 + [_reply(_call("give_up", {"reason": "x"}))])
    _run(server, seeded)
    first, second = (r["body"]["messages"][-1]["content"] for r in server.requests[1:3])
    assert "exact call before" not in first
    assert second.endswith("[you made this exact call before on this same candidate: act on its answer]")


def test_the_same_call_after_an_edit_is_not_a_repeat(seeded):
    server = ScriptedServer([_reply(_call("list_lineage", {})),
                             _reply(_call("edit_candidate", {"old": "TILE_N = 32", "new": "TILE_N = 16"})),
                             _reply(_call("list_lineage", {})), _reply(_call("give_up", {"reason": "x"}))])
    _run(server, seeded)
    assert "exact call before" not in server.requests[3]["body"]["messages"][-1]["content"]


def test_a_call_cut_off_or_missing_its_last_brace_still_parses(seeded):
    # both shapes are from the real-model run: a closing brace short, and a reply cut by max_tokens
    assert parse_text_tool_calls('```json\n{\n  "name": "submit",\n  "arguments": {\n    "rationale": "x"\n}\n```')[0] \
        == [("submit", '{"rationale": "x"}')]
    assert parse_text_tool_calls('```json\n{"name": "give_up", "arguments": {"reason": "cut off by max_tok')[0] \
        == [("give_up", '{"reason": "cut off by max_tok"}')]
    server = ScriptedServer([{"content": '```json\n{"name": "read_candidate", "arguments": {"start_line": }\n```'},
                             _reply(_call("give_up", {"reason": "x"}))])
    result = _run(server, seeded)
    assert result.outcome == "gave_up" and any(e.get("kind") == "unparsed_tool_call" for e in result.transcript)
    assert "did not parse" in server.requests[1]["body"]["messages"][-1]["content"]


def test_elision_drops_the_oldest_turns_last_and_says_so_once():
    from avo.agent import _DROPPED, _chars, _Window

    def turn(i):
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": "read_candidate", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": f"c{i}", "content": f"turn {i} " + "x" * 3000}]

    window = _Window(EndpointConfig(base_url="x", model="m", context_window=9000, max_tokens=500))
    messages = [{"role": "system", "content": "s" * 2000}, {"role": "user", "content": "brief"}]
    for i in range(30):
        messages += turn(i)
        window.fit(messages)
    assert [m["content"] for m in messages if m["content"] == _DROPPED] == [_DROPPED]
    assert messages[0]["content"] == "s" * 2000 and messages[1]["content"] == "brief"
    assert messages[-1]["content"].startswith("turn 29 ") and len(messages[-1]["content"]) > 3000  # newest kept whole
    assert not any(m.get("content", "").startswith("turn 0 ") for m in messages[2:] if m["content"])
    # every tool result still follows the call it answers
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            assert messages[i - 1]["tool_calls"][0]["id"] == m["tool_call_id"]
    assert _chars(messages) + window.overhead <= (9000 - 500 - 256) * window.chars_per_token  # schemas counted
