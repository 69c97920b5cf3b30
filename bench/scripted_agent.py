"""`python bench/scripted_agent.py PORT RUN_DIR`: an OpenAI-compatible chat endpoint on 127.0.0.1
that plays a minimal agent, for GPU visits to the agent path without a model (the GPU machines reach
no outside server). Each step marks its candidate with a comment line (a new source: compiled and
judged for real, and timed as a tie with its parent), benchmarks it, and submits it. Steps running
side by side are told apart by the candidate file their brief names, read from RUN_DIR/candidates.
What it exercises: each step's GPU for its tools and its judge, one candidate file per step, the
serialised commits and the re-judge of a commit that raced another (`rejudge` events)."""

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _call(turn: int, name: str, args: dict) -> dict:
    return {"id": f"call_{turn}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def reply(messages: list[dict], run_dir: Path) -> dict:
    """The assistant message for this conversation: mark, benchmark, submit, then give up."""
    brief = next((m.get("content") or "" for m in messages if m["role"] == "user"), "")
    found = re.search(r"Candidate file: (v\d+)\.py", brief)
    if not found:  # the supervisor's review: a plain completion
        return {"role": "assistant", "content": "No advice."}
    node = found.group(1)
    turn = sum(m["role"] == "assistant" for m in messages)
    if turn == 0:
        text = (run_dir / "candidates" / f"{node}.py").read_text()
        line = next(ln for ln in text.splitlines() if ln.strip() and text.count(ln) == 1)
        call = _call(turn, "edit_candidate", {"old": line, "new": f"{line}\n# scripted step {node}"})
    elif turn == 1:
        call = _call(turn, "benchmark", {})
    elif turn == 2:
        call = _call(turn, "submit", {"rationale": f"scripted step {node}: a comment, timed as a tie"})
    else:
        call = _call(turn, "give_up", {"reason": "the script is done"})
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def main(port: int, run_dir: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            message = reply(body["messages"], run_dir)
            data = json.dumps({"id": "scripted", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "message": message,
                                            "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
