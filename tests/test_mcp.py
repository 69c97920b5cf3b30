"""The MCP server driven by the mcp SDK's own client, over stdio and streamable HTTP: an outside
agent reads the step's brief and the lineage as resources, edits and compiles the candidate with
the registry's tools (refused outside it), submits, and its candidate lands in the lineage."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")
import anyio  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from avo.lineage import Lineage  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "evolve_tiny.yaml"


def _server_args(tmp_path):
    return ["-m", "avo.mcp", "--config", str(TINY), "--set", f"run_dir={tmp_path / 'run'}",
            "--set", f"archive={tmp_path / 'archive'}"]


def _text(result):
    return result.content[0].text


async def _drive(client, tmp_path):
    listed = {t.name for t in (await client.list_tools()).tools}
    assert {"read_candidate", "edit_candidate", "compile", "submit", "profile", "sass", "instruction_mix",
            "reset_to_parent", "write_notes"} <= listed
    uris = {str(r.uri) for r in (await client.list_resources()).resources}
    assert uris == {"avo://brief", "avo://directions", "avo://lineage", "avo://system"}

    brief = (await client.read_resource("avo://brief", cache_mode="bypass")).contents[0].text
    assert "Candidate file: v0001.py (parent: v0000)" in brief  # the seed was screened, the step opened
    escape = await client.call_tool("write_candidate", {"text": "pwned", "path": "../../escape.py"})
    assert escape.is_error and "refused" in _text(escape)
    edited = await client.call_tool("edit_candidate", {"old": "TILE_N = 32", "new": "TILE_N = 16"})
    assert not edited.is_error and "edited at line" in _text(edited)
    compiled = json.loads(_text(await client.call_tool("compile", {})))
    assert compiled["ok"] is True and compiled["report"]["sm_90a"]
    await client.call_tool("write_notes", {"text": "TILE_N 16 compiles; smem halves"})
    submitted = json.loads(_text(await client.call_tool("submit", {"rationale": "TILE_N 32 -> 16"})))
    assert submitted["status"] == "screened" and submitted["node_id"] == "v0001"

    lineage = json.loads((await client.read_resource("avo://lineage", cache_mode="bypass")).contents[0].text)
    assert [(n["id"], n["status"]) for n in lineage["nodes"]] == [("v0000", "screened"), ("v0001", "screened")]
    # the next step opens from the newest screened node, and its brief carries the notes
    brief = (await client.read_resource("avo://brief", cache_mode="bypass")).contents[0].text
    assert "parent: v0001" in brief and "TILE_N 16 compiles" in brief
    gave_up = await client.call_tool("give_up", {"reason": "nothing else to try"})
    assert not gave_up.is_error


def _check_lineage(tmp_path):
    seed, edited, gave_up = Lineage.load(tmp_path / "archive").nodes()
    assert (edited.operator, edited.status, edited.parents) == ("agent", "screened", [seed.id])
    assert edited.extra["via"] == "mcp" and "+TILE_N = 16" in edited.extra["diff"]
    assert edited.extra["tool_calls"]["submit"] == 1 and edited.extra["refused"][0]["tool"] == "write_candidate"
    assert (gave_up.status, gave_up.extra["outcome"]) == ("rejected", "gave_up")
    transcript = (tmp_path / "run" / "transcripts" / "v0001.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in transcript] == ["write_candidate", "edit_candidate", "compile",
                                                                  "write_notes", "submit"]


def test_mcp_over_stdio_lands_candidates_in_the_lineage(tmp_path):
    # the client starts the server with a minimal environment: pass the session's private kernel
    # cache (conftest), or the server compiles into the user's ~/.cache/avo/kernels
    params = StdioServerParameters(command=sys.executable, args=_server_args(tmp_path), cwd=str(REPO),
                                   env={"AVO_CACHE_DIR": os.environ["AVO_CACHE_DIR"]})

    async def main():
        async with Client(params, read_timeout_seconds=300) as client:
            await _drive(client, tmp_path)

    anyio.run(main)
    _check_lineage(tmp_path)


def test_mcp_over_streamable_http(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, *_server_args(tmp_path), "--http", "--port", str(port)], cwd=REPO,
                            stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180  # importing torch and opening the run takes a while on a busy CPU
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not listen within 180 s"
                time.sleep(0.3)

        async def main():
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=300) as client:
                await _drive(client, tmp_path)

        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    _check_lineage(tmp_path)
