"""`python -m avo.mcp --config CONFIG`: the tool registry as an MCP server, so any coding agent a
user already runs (Claude Code, Codex, Cursor, ...) can be the variation operator.

    python -m avo.mcp --config configs/evolve_mha_sm90.yaml --set run_dir=runs/mcp   # stdio
    python -m avo.mcp --run runs/mcp --http --port 8765                                # streamable HTTP

The tools are avo.tools.REGISTRY's, with its confinement: the agent reads the lineage, knowledge/,
the reference sources and this project's templates and harness files, and changes only the step's
candidate file through the tools. Resources: avo://brief (the step's brief, as the in-process
agent's first message, with the supervisor's directions and earlier steps' notes), avo://directions,
avo://lineage, avo://system (the job and the commit rule). A step opens on the first tool call
(or read of avo://brief) and ends with submit or give_up; every candidate lands in the run's lineage like an in-process
step's, and the supervisor's directions for the next step are served as soon as it ends.
Requires the `mcp` extra (pip install -e ".[mcp]").
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

__all__ = ["build_server", "main"]

RESOURCES = {
    "avo://brief": "The open step: candidate, parent, incumbent, recent attempts, notes and directions",
    "avo://directions": "The supervisor's directions for this step (empty on a healthy trajectory)",
    "avo://lineage": "Every version so far: id, parents, operator, status, geomean TFLOPS, diagnosis",
    "avo://system": "The job: what to optimise, the kernel contract, the commit rule",
}


def build_server(session):
    """An mcp low-level Server over an avo.workbench.ExternalSession."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server

    from avo import tools
    from avo.agent import SYSTEM_PROMPT

    lock = threading.Lock()  # one tool call at a time: they share the step's candidate file

    def _call(name: str, args: dict) -> tools.ToolResult:
        with lock:
            return session.call(name, args)

    def _read(uri: str) -> str:
        with lock:
            if uri == "avo://system":
                return SYSTEM_PROMPT
            if uri == "avo://lineage":
                return json.dumps(tools.t_list_lineage(tools.Context(candidate=session.run.dir,
                                                                     lineage=session.run.lineage)), indent=1)
            try:
                step = session.step()
            except tools.ToolError as exc:
                return str(exc)
            return step.brief() if uri == "avo://brief" else (step.directions or "none: carry on")

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(name=t.name, description=t.description,
                                                       input_schema=t.input_schema())
                                            for t in tools.REGISTRY.values()])

    async def call_tool(ctx, params) -> types.CallToolResult:
        out = await anyio.to_thread.run_sync(_call, params.name, dict(params.arguments or {}))
        return types.CallToolResult(content=[types.TextContent(type="text", text=out.text)], is_error=not out.ok)

    async def list_resources(ctx, params) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[
            types.Resource(name=uri.split("//")[1], uri=uri, description=text, mime_type="text/plain")
            for uri, text in RESOURCES.items()])

    async def read_resource(ctx, params) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri not in RESOURCES:
            raise ValueError(f"no resource {uri}; resources: {', '.join(RESOURCES)}")
        text = await anyio.to_thread.run_sync(_read, uri)
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type="text/plain",
                                                                             text=text)])

    return Server("avo", on_list_tools=list_tools, on_call_tool=call_tool, on_list_resources=list_resources,
                  on_read_resource=read_resource)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avo.mcp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="run config YAML: starts the run, or continues it if its run_dir exists")
    parser.add_argument("--run", metavar="RUN_DIR", help="an existing run directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    opts = parser.parse_args(argv)
    try:
        import mcp  # noqa: F401
    except ImportError:
        print("avo.mcp: the mcp package is not installed: pip install -e \".[mcp]\"", file=sys.stderr)
        return 2
    from avo.config import ConfigError
    from avo.lineage import LineageError
    from avo.suites import SuiteError
    from avo.tool import open_run
    from avo.workbench import ExternalSession

    try:
        run = open_run(opts.config, opts.run, opts.set)
    except (ConfigError, SuiteError, LineageError, ValueError, OSError) as exc:
        print(f"avo.mcp: {exc}", file=sys.stderr)
        return 2
    server = build_server(ExternalSession(run, via="mcp"))
    run.progress.event("mcp", transport="http" if opts.http else "stdio", run=run.config.name,
                       **({"url": f"http://{opts.host}:{opts.port}/mcp"} if opts.http else {}))
    try:
        if opts.http:
            import uvicorn

            uvicorn.run(server.streamable_http_app(host=opts.host), host=opts.host, port=opts.port,
                        log_level="warning")
        else:
            import anyio
            from mcp.server.stdio import stdio_server

            async def serve():
                async with stdio_server() as (read, write):
                    await server.run(read, write, server.create_initialization_options())

            anyio.run(serve)
    except KeyboardInterrupt:
        pass
    finally:
        run.progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
