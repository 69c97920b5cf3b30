"""The agent operator end to end against a local OpenAI-compatible server that replays a script.

The server (http.server on 127.0.0.1, /v1/chat/completions) answers each request with the next
scripted assistant message; the operator runs its real tools on a real candidate kernel (the naive
attention template), compiles it for real for sm_90a, and submits to a recording test workbench."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avo import jit
from avo.agent import EndpointConfig, StepBudget, run_agent_step
from avo.lineage import Candidate, Lineage
from avo.spec import AttentionSpec

SECRET = "sk-avo-test-0123456789-SECRET"


class ScriptedServer:
    """Replays `script`: each item is an assistant message dict, ("status", code[, message[, headers]]),
    ("sleep", s) or "echo_auth" (an assistant reply whose text is the request's Authorization header)."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                item = server.next_item(body)
                if isinstance(item, tuple) and item[0] == "status":  # ("status", code[, message[, headers]])
                    message = item[2] if len(item) > 2 else "scripted failure"
                    self._send(item[1], {"error": {"message": message, "type": "server_error"}},
                               item[3] if len(item) > 3 else {})
                    return
                if isinstance(item, tuple) and item[0] == "sleep":
                    time.sleep(item[1])
                    item = {"content": "too late"}
                if item == "echo_auth":
                    item = {"content": f"I was called with {self.headers.get('Authorization')}",
                            "tool_calls": [_call("list_lineage", {})]}
                message = {"role": "assistant", "content": item.get("content"), "tool_calls": item.get("tool_calls")}
                self._send(200, {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                                 "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": message,
                                              "finish_reason": "tool_calls" if item.get("tool_calls") else "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def next_item(self, body: dict):
        """What answers this request: the script's next item."""
        return self.script.pop(0) if self.script else {"content": "script exhausted"}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


_ids = iter(range(10**6))


def _call(name, args, raw=None):
    return {"id": f"call_{next(_ids)}", "type": "function",
            "function": {"name": name, "arguments": raw if raw is not None else json.dumps(args)}}


def _reply(*calls, content=None):
    return {"content": content, "tool_calls": list(calls)}


class RecordingWorkbench:
    """compile is real (sm_90a, compile-only); test, benchmark and submit record and answer canned JSON."""

    def __init__(self):
        self.calls = []

    def compile(self, path):
        self.calls.append(("compile", Path(path)))
        try:
            kernel = jit.compile_kernel(path, AttentionSpec(head_dim=64), arch="sm_90a", run=False)
        except jit.CompileError as exc:
            return {"ok": False, "error": exc.as_dict()}
        return {"ok": True, "report": kernel.report}

    def test(self, path):
        self.calls.append(("test", Path(path)))
        return {"ok": True, "configs": {"d64": {"max_rel_err": 1e-3}}}

    def benchmark(self, path):
        self.calls.append(("benchmark", Path(path)))
        return {"geomean": 1.0, "incumbent_geomean": 1.0}

    def submit(self, path, rationale):
        self.calls.append(("submit", Path(path), rationale, Path(path).read_text()))
        return {"status": "committed", "node_id": "v0001", "geomean": 1.0}


@pytest.fixture
def seeded(tmp_path):
    """A lineage holding the naive kernel as a committed seed, and the path for the candidate."""
    source = jit.render("naive_attention", jit.load_knobs("naive_attention", {"block_m": 128, "tile_n": 32}))
    text = source.read_text()
    assert "TILE_N = 32" in text
    lineage = Lineage(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", template="naive_attention", geomean=1.0), text)
    return lineage, tmp_path / "work" / "candidate.py", text


def _endpoint(server, **kw):
    return EndpointConfig(base_url=server.url, model="scripted", api_key_env="AVO_TEST_API_KEY",
                          request_timeout_s=kw.pop("request_timeout_s", 30), max_retries=kw.pop("max_retries", 0),
                          retry_backoff_s=kw.pop("retry_backoff_s", 0.05), **kw)


def test_scripted_step_reads_edits_compiles_and_submits(seeded, tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_TEST_API_KEY", SECRET)
    lineage, candidate, seed_text = seeded
    rationale = "TILE_N 32 -> 16: half the shared memory per CTA, more CTAs resident per SM"
    server = ScriptedServer([
        "echo_auth",
        _reply(_call("search_knowledge", {"query": "exp2 MUFU throughput softmax bottleneck"}),
               _call("read_knowledge", {"path": "hopper.md"})),
        _reply(_call("diff_to_parent", {"node_id": "candidate"}), _call("read_candidate", {"max_lines": 40})),
        _reply(_call("edit_candidate", {"old": "TILE_N = 32", "new": "TILE_N = 16"}), content="Smaller K/V tile."),
        _reply(_call("compile", {})),
        _reply(_call("submit", {"rationale": rationale})),
    ])
    workbench = RecordingWorkbench()
    log = tmp_path / "logs" / "agent.jsonl"  # the folder is created by the step
    try:
        result = run_agent_step(_endpoint(server, price_in_per_mtok=1.0, price_out_per_mtok=4.0), lineage,
                                workbench, candidate, StepBudget(max_turns=10), directions="try a smaller tile",
                                parent_id="v0000", log_path=log)
    finally:
        server.close()

    assert result.outcome == "submitted", result.errors
    assert result.turns == 6 and result.errors == []
    # the edit is on disk, exactly the one asked for, and the diff says so
    text = candidate.read_text()
    assert text == seed_text.replace("TILE_N = 32", "TILE_N = 16")
    assert "-TILE_N = 32" in result.diff and "+TILE_N = 16" in result.diff and len(result.edit_hash) == 16
    # the compile was real: registers from the cubin, the smem the template asks for at tile 16
    compile_result = next(e for e in result.transcript if e.get("name") == "compile")
    report = json.loads(compile_result["content"])
    assert report["ok"] is True
    assert report["report"]["registers"] > 0
    assert report["report"]["dynamic_smem_bytes"] == 2 * 16 * 64 * 4
    # submit got the candidate path, the rationale and the edited text
    assert [c[0] for c in workbench.calls] == ["compile", "submit"]
    _, path, got_rationale, submitted_text = workbench.calls[-1]
    assert path == candidate.resolve() and got_rationale == rationale and "TILE_N = 16" in submitted_text
    assert result.submit == {"status": "committed", "node_id": "v0001", "geomean": 1.0}
    assert result.rationale == rationale
    # knowledge was read: the hopper file's text reached the model, and search ranked it
    read = next(e for e in result.transcript if e.get("name") == "read_knowledge")
    assert "132" in read["content"]
    search = json.loads(next(e for e in result.transcript if e.get("name") == "search_knowledge")["content"])
    assert search[0]["path"] in {"hopper.md", "flash_attention.md"}
    # tokens from the server's usage, priced
    assert (result.tokens_in, result.tokens_out) == (600, 60) and not result.tokens_estimated
    assert result.cost_usd == pytest.approx((600 * 1.0 + 60 * 4.0) / 1e6)
    assert result.tool_calls["compile"] == 1 and result.tool_calls["read_knowledge"] == 1
    # the model saw tool results in order, and the supervisor's directions in the first message
    first = server.requests[0]["body"]["messages"]
    assert first[0]["role"] == "system" and "try a smaller tile" in first[1]["content"]
    assert {t["function"]["name"] for t in server.requests[0]["body"]["tools"]} >= {
        "list_lineage", "show_version", "diff_to_parent", "search_knowledge", "read_knowledge",
        "read_reference", "search_reference", "read_candidate", "edit_candidate", "write_candidate",
        "compile", "test", "benchmark", "submit"}
    last = server.requests[-1]["body"]["messages"]
    assert last[-1]["role"] == "tool" and '"registers"' in last[-1]["content"]
    # the key was sent to the server, and appears nowhere we keep
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(result.as_dict()) and SECRET not in log.read_text()
    assert "[redacted]" in json.dumps(result.transcript)
    assert len(log.read_text().splitlines()) == len(result.transcript)


def test_malformed_calls_and_escapes_are_answered_and_recorded(seeded, tmp_path):
    lineage, candidate, seed_text = seeded
    victim = tmp_path / "work" / "other.py"
    victim.parent.mkdir(parents=True)
    victim.write_text("untouched\n")
    server = ScriptedServer([
        _reply(_call("read_knowledge", None, raw='{"path": "hopper.md"'),  # invalid JSON
               _call("rm_rf", {"path": "/"}),  # unknown tool
               _call("edit_candidate", {"old": "TILE_N = 32"})),  # missing argument
        _reply(_call("edit_candidate", {"old": "untouched", "new": "pwned", "path": "other.py"}),
               _call("write_candidate", {"text": "pwned", "path": "../../../../etc/passwd"}),
               _call("write_candidate", {"text": "pwned", "path": str(victim)})),
        _reply(_call("read_reference", {"path": "../../../../etc/passwd"}),
               _call("read_knowledge", {"path": "/etc/passwd"}),
               _call("show_version", {"node_id": "v9999"})),
        _reply(_call("give_up", {"reason": "nothing worth trying"})),
    ])
    try:
        result = run_agent_step(_endpoint(server), lineage, RecordingWorkbench(), candidate, StepBudget(max_turns=10),
                                parent_id="v0000")
    finally:
        server.close()
    assert result.outcome == "gave_up" and result.turns == 4 and result.submit is None
    assert result.rationale == "nothing worth trying"
    tool_results = [e for e in result.transcript if e["role"] == "tool"]
    assert len(tool_results) == 10
    errors = [json.loads(e["content"])["error"] for e in tool_results[:9]]
    assert "not valid JSON" in errors[0]
    assert "unknown tool 'rm_rf'" in errors[1]
    assert "needs argument(s) ['new']" in errors[2]
    assert all(e.startswith("refused") for e in errors[3:8])
    assert "no node 'v9999'" in errors[8]
    assert [r["tool"] for r in result.refused] == ["edit_candidate", "write_candidate", "write_candidate",
                                                   "read_reference", "read_knowledge"]
    assert len(result.errors) == 9
    # nothing changed anywhere
    assert victim.read_text() == "untouched\n" and candidate.read_text() == seed_text
    assert result.diff == "" and result.edit_hash == ""


def test_http_500_is_retried_then_ends_the_step_as_endpoint_error(seeded):
    lineage, candidate, _ = seeded
    server = ScriptedServer([("status", 500), ("status", 500), ("status", 500)])
    try:
        result = run_agent_step(_endpoint(server, max_retries=1), lineage, RecordingWorkbench(), candidate,
                                StepBudget(), parent_id="v0000")
    finally:
        server.close()
    assert result.outcome == "endpoint_error" and result.turns == 0
    assert len(server.requests) == 2  # one retry, then it gave up
    assert "InternalServerError" in result.errors[-1]
    assert result.transcript[-2]["kind"] == "endpoint_error"


def test_a_transient_500_is_retried_and_the_step_goes_on(seeded):
    lineage, candidate, _ = seeded
    server = ScriptedServer([("status", 500), _reply(_call("give_up", {"reason": "done"}))])
    try:
        result = run_agent_step(_endpoint(server, max_retries=2), lineage, RecordingWorkbench(), candidate,
                                StepBudget(), parent_id="v0000")
    finally:
        server.close()
    assert result.outcome == "gave_up" and result.turns == 1 and len(server.requests) == 2 and result.errors == []


def test_endpoint_timeout_ends_the_step_without_raising(seeded):
    lineage, candidate, _ = seeded
    server = ScriptedServer([("sleep", 4)])
    started = time.monotonic()
    try:
        result = run_agent_step(_endpoint(server, request_timeout_s=1), lineage, RecordingWorkbench(), candidate,
                                StepBudget(), parent_id="v0000")
    finally:
        server.close()
    assert time.monotonic() - started < 3.5
    assert result.outcome == "endpoint_error" and "Timeout" in result.errors[-1]


def test_refused_connection_is_an_endpoint_error(seeded):
    lineage, candidate, _ = seeded
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="none", max_retries=0)
    result = run_agent_step(endpoint, lineage, RecordingWorkbench(), candidate, StepBudget(), parent_id="v0000")
    assert result.outcome == "endpoint_error" and "APIConnectionError" in result.errors[-1]


def test_turn_budget_ends_a_step_that_never_submits(seeded):
    lineage, candidate, _ = seeded
    server = ScriptedServer([_reply(_call("list_lineage", {}))] * 5)
    try:
        result = run_agent_step(_endpoint(server), lineage, RecordingWorkbench(), candidate,
                                StepBudget(max_turns=3), parent_id="v0000")
    finally:
        server.close()
    assert result.outcome == "budget_exhausted" and result.turns == 3 and len(server.requests) == 3
    assert "turn budget" in result.errors[-1]
    listing = json.loads(next(e for e in result.transcript if e.get("name") == "list_lineage")["content"])
    assert listing["incumbent"] == "v0000" and listing["nodes"][0]["status"] == "committed"



def test_token_budget_ends_the_step(seeded):
    lineage, candidate, _ = seeded
    server = ScriptedServer([_reply(_call("list_lineage", {}))] * 5)  # 110 tokens per reply
    try:
        result = run_agent_step(_endpoint(server, temperature=None), lineage, RecordingWorkbench(), candidate,
                                StepBudget(max_tokens=250), parent_id="v0000")
    finally:
        server.close()
    assert result.outcome == "budget_exhausted" and result.turns == 3 and "token budget" in result.errors[-1]
    assert "temperature" not in server.requests[0]["body"] and "tool_choice" not in server.requests[0]["body"]
