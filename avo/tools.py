"""The one tool registry: every tool the variation operator has, whoever drives it.

Three faces serve it with the same confinement: the in-process agent (avo.agent, as openai
chat-completions tools), the MCP server (avo.mcp) and the command line (avo.tool). A tool acts on
a `Context`: one step's candidate file, the lineage, the harness workbench and the read-only roots
(knowledge/, the reference sources, the templates and harness files knowledge/ points at).
Only the candidate and the step's notes file can be written.

`call(ctx, name, args)` validates the arguments against the tool's schema, runs the tool inside
the step's time limit, redacts secrets and truncates the result; it never raises for a tool's
failure: the caller gets an error result it can show to the model.

Profiling and disassembly (`profile`, `sass`, `ptx`, `instruction_mix`) use Nsight Compute and
cuobjdump when they are installed and say so in one line when they are not.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avo.atomic import atomic_write
from avo.knowledge import KNOWLEDGE_DIR, PathError, confined_path, knowledge_index, read_text, source_index

__all__ = ["REGISTRY", "Context", "Tool", "ToolError", "ToolResult", "call", "clean_env", "find_binary",
           "instruction_mix", "openai_tools", "parse_ncu_csv", "parse_sass", "project_roots", "redact",
           "secret_values", "summarize_ncu"]

REPO = Path(__file__).resolve().parent.parent
RESULT_CHARS = 20000  # what a caller sees of one tool result


class ToolError(Exception):
    """A tool call the tool refuses (bad arguments, a path outside its root, nothing to act on)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: dict  # argument name -> JSON schema
    required: tuple[str, ...]
    fn: Callable[..., Any]  # fn(ctx, **args)
    ends_step: bool = False
    writes: bool = False  # changes the candidate or the notes

    def input_schema(self) -> dict:
        return {"type": "object", "properties": self.params, "required": list(self.required)}

    def openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.input_schema()}}


@dataclass
class ToolResult:
    text: str
    ok: bool  # False: the call was refused or failed (the model's mistake or the harness's)


@dataclass
class Context:
    """What one step's tools act on. `workbench` is the harness (avo.workbench.HarnessWorkbench,
    or anything with compile/test/benchmark/submit); `deadline` is time.monotonic() seconds."""

    candidate: Path
    workbench: Any = None
    lineage: Any = None
    parent_id: str | None = None
    node_id: str | None = None
    knowledge_dir: Path = KNOWLEDGE_DIR
    ref_roots: dict = field(default_factory=dict)
    project_roots: dict = field(default_factory=dict)
    notes_dir: Path | None = None  # the run's notes/ (one file per step, read by the next steps)
    run_dir: Path | None = None  # profiles and disassembly are kept under it
    suite: str | None = None
    arch: str = "sm_90a"
    deadline: float | None = None
    secrets: tuple[str, ...] = ()
    refused: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    ended: str | None = None  # submitted | gave_up | budget_exhausted
    rationale: str = ""
    submit: dict | None = None

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def refuse(self, tool: str, path: str, reason: str) -> ToolError:
        self.refused.append({"tool": tool, "path": str(path), "reason": reason})
        return ToolError(f"refused: {reason}")


# ---------------------------------------------------------------------------------------------
# secrets

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.I)
_SECRET_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bhf_[A-Za-z0-9]{20,}|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}|(?<=Bearer )[A-Za-z0-9._~+/=-]{16,}")


KEPT_SECRETS: dict[str, str] = {}  # keys taken out of the environment (avo.agent.EndpointConfig.api_key)


def secret_values(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Values worth hiding: `extra`, the keys taken out of the environment, and every environment
    variable whose name says key, token, secret, password or credential (8 characters or more)."""
    values = {v for v in (*extra, *KEPT_SECRETS.values()) if v and len(v) >= 4}
    values.update(v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8)
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with each secret value and anything shaped like an API key replaced by [redacted]."""
    if not isinstance(text, str) or not text:
        return text
    for value in secrets:
        if value in text:
            text = text.replace(value, "[redacted]")
        escaped = json.dumps(value)[1:-1]  # the same value inside a JSON string
        if escaped != value and escaped in text:
            text = text.replace(escaped, "[redacted]")
    return _SECRET_SHAPES.sub("[redacted]", text)


def clean_env(extra: dict | None = None) -> dict:
    """The environment for a process a tool starts: no variable that looks like a secret."""
    env = {k: v for k, v in os.environ.items() if not _SECRET_NAME.search(k)}
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------------
# read-only roots


def project_roots() -> dict[str, Path]:
    """The project files knowledge/ points at, readable by the agent: the templates, the harness
    modules that decide a verdict, and the suites."""
    roots = {"dsl_templates": REPO / "dsl_templates", "configs/suites": REPO / "configs" / "suites"}
    for name in ("evaluate", "verify", "timing", "jit", "spec", "suites", "reference", "cubin", "worker"):
        path = REPO / "avo" / f"{name}.py"
        if path.exists():
            roots[f"avo/{name}.py"] = path
    return {k: v for k, v in roots.items() if v.exists()}


def _confined(ctx: Context, roots: dict, path: str, tool: str) -> Path:
    try:
        return confined_path(roots, str(path))
    except PathError as exc:
        raise ctx.refuse(tool, path, str(exc)) from None


def _check_candidate_path(ctx: Context, path: str | None, tool: str) -> None:
    """The write tools take no path; one that names anything but the candidate is refused."""
    if path is None or path == "":
        return
    target = Path(path) if os.path.isabs(path) else ctx.candidate.parent / path
    same = target.resolve() == ctx.candidate.resolve() or path == ctx.candidate.name
    if not same or ".." in Path(path).parts:
        raise ctx.refuse(tool, path, f"{tool} may only change the candidate file {ctx.candidate.name}, not {path!r}")


# ---------------------------------------------------------------------------------------------
# lineage and reading


def _need_lineage(ctx: Context):
    if ctx.lineage is None:
        raise ToolError("no lineage in this run")
    return ctx.lineage


def t_list_lineage(ctx: Context):
    lineage = _need_lineage(ctx)
    best = lineage.best(ctx.suite, ctx.arch) or lineage.best()  # the suite's incumbent where it has one
    rows = [{"id": n.id, "parents": n.parents, "operator": n.operator, "status": n.status,
             "geomean": round(n.geomean, 2), "diagnosis": n.diagnosis[:200], "rationale": n.rationale[:200]}
            for n in lineage.nodes()]
    return {"incumbent": best.id if best else None, "count": len(rows), "nodes": rows[-80:]}


def _version_text(ctx: Context, node_id: str) -> str:
    if node_id in ("candidate", ""):
        return ctx.candidate.read_text()
    lineage = _need_lineage(ctx)
    if node_id not in lineage:
        raise ToolError(f"no node {node_id!r} in the lineage (list_lineage shows them)")
    try:
        return lineage.source(node_id)
    except Exception as exc:
        raise ToolError(f"source of {node_id} is not available: {exc}") from None


def t_show_version(ctx: Context, node_id: str, start_line: int = 1, max_lines: int = 250):
    from avo.knowledge import number_lines

    return number_lines(_version_text(ctx, node_id), start_line, min(int(max_lines), 400))


def t_diff_to_parent(ctx: Context, node_id: str):
    if node_id == "candidate":
        if not ctx.parent_id:
            raise ToolError("the candidate has no parent")
        old, new, a = _version_text(ctx, ctx.parent_id), ctx.candidate.read_text(), ctx.parent_id
    else:
        node = _need_lineage(ctx).get(node_id) if node_id in _need_lineage(ctx) else None
        if node is None:
            raise ToolError(f"no version {node_id!r} in the lineage")
        if not node.parents:
            return f"{node_id} has no parent (it is a seed)"
        old, new, a = _version_text(ctx, node.parents[0]), _version_text(ctx, node_id), node.parents[0]
    return _diff(old, new, a, node_id) or "no difference"


def _diff(old: str, new: str, a: str, b: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=a, tofile=b))


def t_search_knowledge(ctx: Context, query: str):
    hits = knowledge_index(ctx.knowledge_dir).search(str(query), k=6)
    return [h.as_dict() for h in hits] or "no match"


def t_read_knowledge(ctx: Context, path: str, start_line: int = 1):
    if not str(path).strip():
        return "\n".join(sorted(str(p.relative_to(ctx.knowledge_dir)) for p in ctx.knowledge_dir.rglob("*.md")))
    return read_text(_confined(ctx, {"": ctx.knowledge_dir}, path, "read_knowledge"), start_line, 300)


def t_search_reference(ctx: Context, query: str, under: str = ""):
    if not ctx.ref_roots:
        raise ToolError("no reference sources are installed here (pip install flash-attn-4 --no-deps adds FA4's)")
    hits = source_index(ctx.ref_roots).search(str(query), k=8, under=str(under or ""))
    return [h.as_dict() for h in hits] or "no match"


def t_read_reference(ctx: Context, path: str, start_line: int = 1, max_lines: int = 200):
    return read_text(_confined(ctx, ctx.ref_roots, path, "read_reference"), start_line, min(int(max_lines), 400))


def t_read_project(ctx: Context, path: str = "", start_line: int = 1, max_lines: int = 200):
    if not str(path).strip():
        return "\n".join(sorted(ctx.project_roots))
    return read_text(_confined(ctx, ctx.project_roots, path, "read_project"), start_line, min(int(max_lines), 400))


# ---------------------------------------------------------------------------------------------
# the candidate


def t_read_candidate(ctx: Context, start_line: int = 1, max_lines: int = 250, path: str | None = None):
    _check_candidate_path(ctx, path, "read_candidate")
    return read_text(ctx.candidate, start_line, min(int(max_lines), 400))


def t_edit_candidate(ctx: Context, old: str, new: str, path: str | None = None):
    _check_candidate_path(ctx, path, "edit_candidate")
    text = ctx.candidate.read_text()
    count = text.count(old) if old else 0
    if count != 1:
        raise ToolError(f"`old` occurs {count} times in the candidate; it must occur exactly once "
                        "(include more surrounding lines, or read_candidate again)")
    ctx.candidate.write_text(text.replace(old, new, 1))
    line = text[:text.index(old)].count("\n") + 1
    return f"edited at line {line}: -{old.count(chr(10)) + 1} +{new.count(chr(10)) + 1} lines"


def t_write_candidate(ctx: Context, text: str, path: str | None = None):
    _check_candidate_path(ctx, path, "write_candidate")
    ctx.candidate.write_text(str(text))
    return f"wrote {len(str(text).splitlines())} lines"


def t_reset_to_parent(ctx: Context):
    if not ctx.parent_id:
        raise ToolError("the candidate has no parent to reset to")
    text = _version_text(ctx, ctx.parent_id)
    changed = ctx.candidate.read_text() != text
    ctx.candidate.write_text(text)
    return f"the candidate is {ctx.parent_id}'s source again" + ("" if changed else " (it was unchanged)")


# ---------------------------------------------------------------------------------------------
# notes: one scratch file per step, read by the steps after it


def _notes_path(ctx: Context) -> Path:
    if ctx.notes_dir is None:
        raise ToolError("this session keeps no notes (no run directory)")
    return Path(ctx.notes_dir) / f"{ctx.node_id or 'step'}.md"


def t_write_notes(ctx: Context, text: str, append: bool = True):
    path = _notes_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if append and path.exists() else ""
    body = (old + ("\n" if old and not old.endswith("\n") else "") + str(text)).strip() + "\n"
    path.write_text(body[-20000:])
    return f"notes of {ctx.node_id or 'this step'}: {len(body.splitlines())} lines"


def previous_notes(notes_dir: Path | None, exclude: str | None = None, count: int = 3) -> list[tuple[str, str]]:
    """The newest `count` steps' notes as (step id, text), oldest first."""
    if notes_dir is None or not Path(notes_dir).is_dir():
        return []
    files = sorted((p for p in Path(notes_dir).glob("*.md") if p.stem != exclude), key=lambda p: p.stem)
    return [(p.stem, p.read_text()) for p in files[-count:]]


def t_read_notes(ctx: Context, step: str = ""):
    if ctx.notes_dir is None:
        raise ToolError("this session keeps no notes (no run directory)")
    if step:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(step)):
            raise ctx.refuse("read_notes", step, f"{step!r} is not a step id")
        path = Path(ctx.notes_dir) / f"{step}.md"
        return path.read_text() if path.exists() else f"no notes from {step}"
    notes = previous_notes(ctx.notes_dir, count=5)
    return "\n\n".join(f"## {sid}\n{text.strip()}" for sid, text in notes) or "no notes yet"


# ---------------------------------------------------------------------------------------------
# the harness


def _harness(ctx: Context, name: str, *args, **kwargs) -> dict:
    if ctx.workbench is None or not hasattr(ctx.workbench, name):
        raise ToolError(f"{name} is not available in this session")
    try:
        out = getattr(ctx.workbench, name)(ctx.candidate, *args, **kwargs)
    except ToolError:
        raise
    except Exception as exc:  # a harness bug must not kill the step; the caller sees it
        message = f"{type(exc).__name__}: {exc}"
        ctx.errors.append(f"workbench.{name}: {message}"[:500])
        return {"ok": False, "error": {"stage": "harness", "message": message[:2000]}}
    return out


def _configs_arg(configs) -> dict:
    if configs in (None, "", []):
        return {}
    if isinstance(configs, str):
        configs = [c.strip() for c in configs.split(",") if c.strip()]
    if not isinstance(configs, list) or not all(isinstance(c, str) for c in configs):
        raise ToolError("configs must be a list of config names (list_configs shows them)")
    return {"configs": configs}


def t_list_configs(ctx: Context):
    from avo.suites import load_suite

    if not ctx.suite:
        raise ToolError("no suite in this session")
    suite = load_suite(ctx.suite)
    return {"suite": suite.name, "timed": [c.as_dict() for c in suite.timed],
            "correctness_only": [c.name for c in suite.correctness]}


def t_compile(ctx: Context):
    return _harness(ctx, "compile")


def t_test(ctx: Context, configs: list | None = None):
    return _harness(ctx, "test", **_configs_arg(configs))


def t_benchmark(ctx: Context, configs: list | None = None):
    return _harness(ctx, "benchmark", **_configs_arg(configs))


def t_submit(ctx: Context, rationale: str):
    if ctx.parent_id and ctx.lineage is not None and ctx.candidate.read_text() == _version_text(ctx, ctx.parent_id):
        # an evaluation of the parent again costs a full cascade and tells nothing
        raise ToolError(f"the candidate is still {ctx.parent_id}'s source: nothing to evaluate; edit it first, "
                        "or give_up(reason)")
    ctx.rationale = str(rationale)
    report = _harness(ctx, "submit", str(rationale))
    if not isinstance(report, dict):
        report = {"status": "crashed", "error": f"workbench.submit returned {type(report).__name__}"}
    elif "status" not in report:  # the harness itself failed (see _harness)
        report = {"status": "crashed", **report}
    ctx.submit = report
    ctx.ended = "submitted"
    return report


def t_give_up(ctx: Context, reason: str):
    ctx.rationale = str(reason)
    ctx.ended = "gave_up"
    return "step ended without a submission"


# ---------------------------------------------------------------------------------------------
# binaries: Nsight Compute, cuobjdump, nvdisasm


def find_binary(name: str) -> str | None:
    """`name` on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin, or in a pip-installed
    nvidia-cuda-* package (nvidia-cuda-cuobjdump ships cuobjdump)."""
    found = shutil.which(name)
    if found:
        return found
    for root in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]):
        path = Path(root) / "bin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    for base in map(Path, sys.path):
        for path in (base / "nvidia").glob(f"*/bin/{name}") if (base / "nvidia").is_dir() else ():
            if os.access(path, os.X_OK):
                return str(path)
    return None


def _run(ctx: Context, argv: list[str], what: str, cap_s: float = 600.0, **kwargs) -> subprocess.CompletedProcess:
    timeout = max(1.0, min(cap_s, ctx.seconds_left()))
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=clean_env(kwargs.pop("env", None)), **kwargs)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what} did not finish within {timeout:.0f} s") from None


# ---------------------------------------------------------------------------------------------
# SASS and PTX

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_SASS_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")


def parse_sass(text: str) -> list[dict]:
    """cuobjdump -sass / nvdisasm output -> [{"function", "addr", "op", "text"}] in order."""
    out, function = [], ""
    for line in text.splitlines():
        m = _SASS_FUNC.match(line)
        if m:
            function = m.group(1)
            continue
        m = _SASS_LINE.search(line)
        if not m:
            continue
        instr = m.group(2).strip()
        if not instr:
            continue
        body = _PRED.sub("", instr)
        out.append({"function": function, "addr": int(m.group(1), 16), "op": body.split()[0], "text": instr})
    return out


def sass_loops(instrs: list[dict]) -> list[dict]:
    """Backward branches (the loops), longest first: where the steady state lives."""
    loops = []
    for ins in instrs:
        if ins["op"].split(".")[0] not in ("BRA", "JMP"):
            continue
        m = re.search(r"0x([0-9a-f]+)", ins["text"].split(None, 1)[-1])
        if m and int(m.group(1), 16) < ins["addr"]:
            target = int(m.group(1), 16)
            body = _between(instrs, ins["function"], target, ins["addr"])
            loops.append({"function": ins["function"], "from": f"{target:04x}", "to": f"{ins['addr']:04x}",
                          "instructions": len(body), "mix": dict(Counter(i["op"].split(".")[0] for i in body)
                                                                   .most_common(8))})
    return sorted(loops, key=lambda x: -x["instructions"])


def loop_body(instrs: list[dict], loop: dict) -> list[dict]:
    """The instructions of a loop sass_loops found, in order."""
    return _between(instrs, loop["function"], int(loop["from"], 16), int(loop["to"], 16))


def _between(instrs: list[dict], function: str, first: int, last: int) -> list[dict]:
    return [i for i in instrs if i["function"] == function and first <= i["addr"] <= last]


_PTX_SKIP = re.compile(r"^\s*(?:$|//|\.|\{|\}|\(|\)|[$\w]+:)")


def parse_ptx(text: str) -> list[dict]:
    """PTX text -> [{"function", "line", "op", "text"}] for each instruction."""
    out, function = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(?:\.(?:visible|weak|extern)\s+)*\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)", line)
        if m:
            function = m.group(1)
            continue
        if _PTX_SKIP.match(line):
            continue
        body = re.sub(r"^\s*@!?%\w+\s+", "", line).strip()
        op = body.split()[0].rstrip(";") if body else ""
        if op:
            out.append({"function": function, "line": number, "op": op, "text": line.strip()})
    return out


def instruction_mix(instrs: list[dict], detail: bool = False) -> Counter:
    """Counts per opcode (its base name, or with modifiers when `detail`)."""
    return Counter(i["op"] if detail else i["op"].split(".")[0] for i in instrs)


def _spec_for(ctx: Context, config: str | None):
    from avo.suites import load_suite

    if not ctx.suite:
        raise ToolError("no suite in this session")
    suite = load_suite(ctx.suite)
    if not config:
        return suite.timed[0] if suite.timed else suite.correctness[0]
    for c in suite.timed + suite.correctness:
        if c.name == config:
            return c
    raise ToolError(f"no config {config!r} in suite {suite.name}; list_configs shows them")


def _artifacts(ctx: Context, version: str, config: str | None) -> Path:
    """The compile-cache entry (kernel.ptx, kernel.cubin) of a version for one config's spec."""
    from avo import jit

    shape = _spec_for(ctx, config)
    if version in ("candidate", ""):
        source = ctx.candidate
        if ctx.workbench is not None and hasattr(ctx.workbench, "compile"):  # compiled by the harness first
            report = _harness(ctx, "compile")
            if not report.get("ok"):
                raise ToolError(f"the candidate does not compile: {json.dumps(report.get('error'))[:1500]}")
    else:
        text = _version_text(ctx, version)
        source = Path(ctx.run_dir or ctx.candidate.parent) / "versions" / f"{version}.py"
        source.parent.mkdir(parents=True, exist_ok=True)
        if not source.exists() or source.read_text() != text:
            atomic_write(source, text)  # steps side by side share versions/
    try:
        kernel = jit.compile_kernel(source, shape.spec, arch=ctx.arch, run=False)
    except jit.CompileError as exc:
        raise ToolError(f"{version} does not compile for {shape.name}: {exc.as_dict()}") from None
    return Path(kernel.artifact_dir)


def _disassemble(ctx: Context, cubin: Path) -> str:
    # kept in the run, never in the compile cache (whose entries hold exactly what the compile made)
    cache = Path(ctx.run_dir) / "sass" / f"{cubin.parent.name}.sass" if ctx.run_dir else None
    if cache is not None and cache.exists():
        return cache.read_text()
    for tool, argv in (("cuobjdump", ["-sass"]), ("nvdisasm", ["-c"])):
        binary = find_binary(tool)
        if binary:
            proc = _run(ctx, [binary, *argv, str(cubin)], tool, cap_s=120)
            if proc.returncode != 0:
                raise ToolError(f"{tool} failed: {proc.stderr.strip()[:500]}")
            if cache is not None:
                atomic_write(cache, proc.stdout)
            return proc.stdout
    raise ToolError("no cuobjdump or nvdisasm here (CUDA's bin/, or pip install nvidia-cuda-cuobjdump): "
                    "SASS cannot be shown; ptx() works without them")


def _listing(ctx: Context, instrs: list[dict], key: str, function: str, grep: str, start: int, count: int) -> dict:
    if function:
        instrs = [i for i in instrs if function in i["function"]]
    if grep:
        try:
            pattern = re.compile(grep)
        except re.error as exc:
            raise ToolError(f"grep is not a valid regular expression: {exc}") from None
        instrs = [i for i in instrs if pattern.search(i["text"])]
    start = max(int(start), 1)
    chunk = instrs[start - 1:start - 1 + min(max(int(count), 1), 400)]
    fmt = (lambda i: f"{i['addr']:05x}  {i['text']}") if key == "addr" else (lambda i: f"{i['line']:6d}  {i['text']}")
    lines = [fmt(i) for i in chunk]
    more = len(instrs) - (start - 1 + len(chunk))
    if more > 0:
        lines.append(f"[... {more} more; call again with start={start + len(chunk)}]")
    return {"functions": sorted({i["function"] for i in instrs}), "instructions": len(instrs),
            "listing": "\n".join(lines)}


def t_sass(ctx: Context, version: str = "candidate", config: str = "", function: str = "", grep: str = "",
           start: int = 1, count: int = 200, loops: bool = False):
    entry = _artifacts(ctx, version, config)
    instrs = parse_sass(_disassemble(ctx, entry / "kernel.cubin"))
    if loops:
        return {"loops": sass_loops(instrs)[:8], "hint": "sass(grep=...) or start/count to read a loop's body"}
    return _listing(ctx, instrs, "addr", function, grep, start, count)


def t_ptx(ctx: Context, version: str = "candidate", config: str = "", function: str = "", grep: str = "",
          start: int = 1, count: int = 200):
    entry = _artifacts(ctx, version, config)
    return _listing(ctx, parse_ptx((entry / "kernel.ptx").read_text()), "line", function, grep, start, count)


def t_instruction_mix(ctx: Context, a: str = "", b: str = "candidate", kind: str = "sass", config: str = "",
                      detail: bool = False):
    a = a or ctx.parent_id or ""
    if not a:
        raise ToolError("give `a`, a version to compare with (the candidate has no parent)")
    if kind not in ("sass", "ptx"):
        raise ToolError("kind is sass or ptx")
    mixes = {}
    for version in (a, b):
        entry = _artifacts(ctx, version, config)
        instrs = parse_sass(_disassemble(ctx, entry / "kernel.cubin")) if kind == "sass" \
            else parse_ptx((entry / "kernel.ptx").read_text())
        mixes[version] = instruction_mix(instrs, bool(detail))
    ca, cb = mixes[a], mixes[b]
    rows = [(op, ca.get(op, 0), cb.get(op, 0)) for op in set(ca) | set(cb)]
    rows.sort(key=lambda r: (-abs(r[2] - r[1]), -r[2]))
    return {"kind": kind, "a": a, "b": b, "total": {a: sum(ca.values()), b: sum(cb.values())},
            "changed": [{"op": op, a: x, b: y, "delta": y - x} for op, x, y in rows if x != y][:40],
            "top": [{"op": op, a: x, b: y} for op, x, y in sorted(rows, key=lambda r: -max(r[1], r[2]))[:15]]}


# ---------------------------------------------------------------------------------------------
# Nsight Compute

NCU_SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "ComputeWorkloadAnalysis",
                "MemoryWorkloadAnalysis", "SchedulerStats", "InstructionStats")


# asked for by name on top of the sections (the pipes' utilisation); dropped if this ncu lacks one
NCU_METRICS = ("sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",
               "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
               "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active")


def parse_ncu_csv(text: str) -> list[dict]:
    """`ncu --import R --csv --page raw` -> one {metric: (value, unit)} per profiled kernel."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    rows = [r for r in rows if r and not r[0].startswith("==")]
    if len(rows) < 2:
        return []
    header, units = rows[0], rows[1] if len(rows) > 2 and not rows[1][0].strip().isdigit() else None
    kernels = []
    for row in rows[(2 if units else 1):]:
        kernels.append({name: (value, units[i] if units and i < len(units) else "")
                        for i, (name, value) in enumerate(zip(header, row, strict=False))})
    return kernels


def _num(value) -> float | None:
    try:
        return float(str(value).replace(",", ""))
    except (TypeError, ValueError):
        return None


def _pick(metrics: dict, *patterns: str, best=max) -> tuple[str, float] | None:
    found = []
    for pattern in patterns:
        rx = re.compile(pattern)
        found += [(k, v) for k, (raw, _) in metrics.items() if rx.fullmatch(k) and (v := _num(raw)) is not None]
        if found:
            break
    return best(found, key=lambda kv: kv[1]) if found else None


_NCU_SUMMARY = {
    # label: metric name patterns, first that matches wins (names as ncu 2024-2025 print them)
    "duration_us": (r"gpu__time_duration\.sum",),
    "sm_throughput_pct": (r"sm__throughput\.avg\.pct_of_peak_sustained_elapsed",),
    "memory_throughput_pct": (r"gpu__compute_memory_throughput\.avg\.pct_of_peak_sustained_elapsed",),
    "dram_throughput_pct": (r"dram__throughput\.avg\.pct_of_peak_sustained_elapsed",
                            r"gpu__dram_throughput\.avg\.pct_of_peak_sustained_elapsed"),
    "l2_throughput_pct": (r"lts__throughput\.avg\.pct_of_peak_sustained_elapsed",
                          r"lts__t_sectors\.avg\.pct_of_peak_sustained_elapsed"),
    "smem_throughput_pct": (r"l1tex__data_pipe_lsu_wavefronts_mem_shared\.avg\.pct_of_peak_sustained_elapsed",
                            r"l1tex__data_pipe_lsu_wavefronts_mem_shared.*pct_of_peak_sustained_\w+",
                            r"l1tex__throughput\.avg\.pct_of_peak_sustained_active"),
    "tensor_pipe_pct": (r"sm__pipe_tensor_op_gmma_cycles_active\.avg\.pct_of_peak_sustained_active",
                        r"sm__pipe_tensor\w*_cycles_active\.avg\.pct_of_peak_sustained_active",
                        r"sm__inst_executed_pipe_tensor\w*\.avg\.pct_of_peak_sustained_active"),
    "mufu_pipe_pct": (r"sm__inst_executed_pipe_xu\.avg\.pct_of_peak_sustained_active",
                      r"sm__pipe_xu_cycles_active\.avg\.pct_of_peak_sustained_active"),
    "fma_pipe_pct": (r"sm__inst_executed_pipe_fma\.avg\.pct_of_peak_sustained_active",
                     r"sm__pipe_fma_cycles_active\.avg\.pct_of_peak_sustained_active"),
    "achieved_occupancy_pct": (r"sm__warps_active\.avg\.pct_of_peak_sustained_active",),
    "theoretical_occupancy_pct": (r"sm__maximum_warps_per_active_cycle_pct",),
    "registers_per_thread": (r"launch__registers_per_thread",),
    "smem_per_block_bytes": (r"launch__shared_mem_per_block_dynamic",),
    "issue_active_pct": (r"sm__inst_issued\.avg\.pct_of_peak_sustained_active",
                         r"smsp__issue_active\.avg\.pct_of_peak_sustained_active"),
}
_STALL = re.compile(r"smsp__average_warps?_(?:latency_)?issue_stalled_(\w+?)_per_(?:warp|issue)_active\.(?:ratio|pct)"
                    r"|smsp__pcsamp_warps_issue_stalled_(\w+)")


def summarize_ncu(metrics: dict) -> dict:
    """The numbers a kernel engineer reads first, from one kernel's raw ncu metrics."""
    out = {"kernel": metrics.get("Kernel Name", ("?", ""))[0]}
    for label, patterns in _NCU_SUMMARY.items():
        hit = _pick(metrics, *patterns)
        if hit:
            value = hit[1] / 1000.0 if label == "duration_us" and metrics[hit[0]][1].strip() == "nsecond" else hit[1]
            out[label] = round(value, 2)
    stalls: dict[str, float] = {}
    for name, (raw, _) in metrics.items():
        m = _STALL.fullmatch(name)
        value = _num(raw)
        if m and value is not None and not name.endswith("_not_issued"):
            reason = m.group(1) or m.group(2)
            if reason.endswith("_not_issued"):
                continue
            stalls[reason] = max(stalls.get(reason, 0.0), value)
    if stalls:
        out["top_stalls"] = {k: round(v, 3) for k, v in sorted(stalls.items(), key=lambda kv: -kv[1])[:6]}
    return out


def t_profile(ctx: Context, config: str = "", incumbent: bool = True):
    ncu = find_binary("ncu")
    if ncu is None:
        raise ToolError("Nsight Compute (ncu) is not installed here: profile needs it and a GPU")
    from avo import jit

    if jit.current_arch() != ctx.arch:
        raise ToolError(f"no {ctx.arch} GPU here: profile runs the kernel")
    shape = _spec_for(ctx, config)
    versions = [("candidate", ctx.candidate)]
    best = None
    if incumbent and ctx.lineage is not None:
        best = ctx.lineage.best(ctx.suite, ctx.arch) or ctx.lineage.best()
    if best is not None:
        path = Path(ctx.run_dir or ctx.candidate.parent) / "versions" / f"{best.id}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, ctx.lineage.source(best.id))
        versions.append((best.id, path))
    out_dir = Path(ctx.run_dir or ctx.candidate.parent) / "profiles" / f"{ctx.node_id or 'step'}_{int(time.time())}"
    out_dir.mkdir(parents=True, exist_ok=True)
    lease = getattr(ctx.workbench, "gpu_lease", None)  # steps side by side: the step's own GPU, held
    with lease() if lease else contextlib.nullcontext() as gpu:
        return _profile_versions(ctx, ncu, shape, versions, out_dir,
                                 {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else None)


def _profile_versions(ctx: Context, ncu: str, shape, versions: list, out_dir: Path, env: dict | None) -> dict:
    summary = {"config": shape.name, "reports": str(out_dir)}
    for label, source in versions:
        report = out_dir / label
        launch = [sys.executable, "-m", "avo.tool", "_launch", str(source), json.dumps(shape.as_dict()), ctx.arch]
        base = [ncu, "--nvtx", "--nvtx-include", "avo_profile/", "--launch-count", "1",
                *[a for s in NCU_SECTIONS for a in ("--section", s)], "-f", "-o", str(report)]
        proc = _run(ctx, [*base, "--metrics", ",".join(NCU_METRICS), *launch], "ncu", cap_s=900, cwd=str(REPO),
                    env=env)
        if proc.returncode != 0 and "metric" in (proc.stdout + proc.stderr).lower():  # a name this ncu lacks
            proc = _run(ctx, [*base, *launch], "ncu", cap_s=900, cwd=str(REPO), env=env)
        (out_dir / f"{label}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not report.with_suffix(".ncu-rep").exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            summary[label] = {"error": f"ncu failed (exit {proc.returncode}): {' | '.join(tail)[:600]}"}
            continue
        raw = _run(ctx, [ncu, "--import", str(report.with_suffix(".ncu-rep")), "--csv", "--page", "raw"], "ncu import")
        (out_dir / f"{label}.csv").write_text(raw.stdout)
        kernels = parse_ncu_csv(raw.stdout)
        summary[label] = summarize_ncu(kernels[-1]) if kernels else {"error": "ncu reported no kernel"}
    return summary


# ---------------------------------------------------------------------------------------------
# the registry

_S = {"type": "string"}
_I = {"type": "integer"}
_B = {"type": "boolean"}
_PATH = {"type": "string", "description": "leave out: the only allowed value is the candidate file itself"}
_CONFIGS = {"type": "array", "items": {"type": "string"},
            "description": "config names from list_configs; leave out for the whole suite"}
_VERSION = {"type": "string", "description": "'candidate' or a lineage id such as v0003"}
_CONFIG = {"type": "string", "description": "a config name from list_configs; default: the suite's first"}


def _tool(name, description, fn, params=None, required=(), **flags) -> Tool:
    return Tool(name, description, params or {}, tuple(required), fn, **flags)


REGISTRY: dict[str, Tool] = {t.name: t for t in [
    _tool("list_lineage", "Every version so far: id, parents, operator, status, geomean TFLOPS, diagnosis.",
          t_list_lineage),
    _tool("show_version", "Source of a version in the lineage, with line numbers (250 lines at a time).",
          t_show_version, {"node_id": _S, "start_line": _I, "max_lines": _I}, ("node_id",)),
    _tool("diff_to_parent", "Unified diff of a version against its first parent. node_id 'candidate' diffs the "
          "candidate against its parent.", t_diff_to_parent, {"node_id": _S}, ("node_id",)),
    _tool("search_knowledge", "Ranked search over knowledge/ (hardware facts, DSL idioms, the algorithm, harness, "
          "what was tried).", t_search_knowledge, {"query": _S}, ("query",)),
    _tool("read_knowledge", "Read a knowledge/ file, e.g. 'hopper.md' ('' lists the files).", t_read_knowledge,
          {"path": _S, "start_line": _I}, ("path",)),
    _tool("search_reference", "Ranked search over the installed CuTe DSL, FA4 and quack sources. `under` narrows "
          "it, e.g. 'flash_attn/cute'.", t_search_reference, {"query": _S, "under": _S}, ("query",)),
    _tool("read_reference", "Read a reference source, e.g. 'flash_attn/cute/softmax.py', 200 lines at a time (a "
          "directory lists it).", t_read_reference, {"path": _S, "start_line": _I, "max_lines": _I}, ("path",)),
    _tool("read_project", "Read (never change) this project's templates and harness files that knowledge/ "
          "points at, e.g. 'dsl_templates/flash_fwd_sm90/knobs.py' or 'avo/evaluate.py' ('' lists the roots).",
          t_read_project, {"path": _S, "start_line": _I, "max_lines": _I}),
    _tool("read_candidate", "The candidate kernel source with line numbers (250 lines at a time).",
          t_read_candidate, {"start_line": _I, "max_lines": _I, "path": _PATH}),
    _tool("edit_candidate", "Replace the exact string `old` (must occur exactly once) with `new` in the candidate.",
          t_edit_candidate, {"old": _S, "new": _S, "path": _PATH}, ("old", "new"), writes=True),
    _tool("write_candidate", "Replace the whole candidate with `text`.", t_write_candidate,
          {"text": _S, "path": _PATH}, ("text",), writes=True),
    _tool("reset_to_parent", "Throw away this step's edits: the candidate becomes its parent's source again.",
          t_reset_to_parent, writes=True),
    _tool("write_notes", "Your scratch notes for this step (hypotheses, measurements); the next steps can read "
          "them. Appends unless append=false.", t_write_notes, {"text": _S, "append": _B}, ("text",), writes=True),
    _tool("read_notes", "Notes of earlier steps (the newest five, or one step's by id).", t_read_notes,
          {"step": _S}),
    _tool("list_configs", "The suite's configs (name, batch, seqlen, heads, causal): names for test, benchmark, "
          "profile, sass.", t_list_configs),
    _tool("compile", "Compile the candidate for the target arch: errors (stage, message, line) or the resource "
          "report (registers, spills, shared memory, wgmma count).", t_compile),
    _tool("test", "The harness's correctness check of the candidate, on the whole suite or on `configs`.",
          t_test, {"configs": _CONFIGS}),
    _tool("benchmark", "Time the candidate against the incumbent, with FA4 and cuDNN per config in the same run, "
          "on the whole suite or on `configs`; per config the paired speed ratio to the incumbent and its 95% "
          "CI (vs_incumbent), which shows a loss the suite's geomean hides.", t_benchmark, {"configs": _CONFIGS}),
    _tool("profile", "Nsight Compute on one config of the candidate and the incumbent: tensor-pipe and MUFU "
          "utilisation, stall reasons, shared memory and L2 throughput, occupancy (raw reports kept in the run).",
          t_profile, {"config": _CONFIG, "incumbent": _B}),
    _tool("sass", "The compiled SASS of a version (default the candidate) for one config, filtered by function, "
          "a regex `grep`, or start/count; loops=true lists its loops (backward branches) with their "
          "instruction mix.", t_sass, {"version": _VERSION, "config": _CONFIG, "function": _S, "grep": _S,
                                       "start": _I, "count": _I, "loops": _B}),
    _tool("ptx", "The PTX of a version (default the candidate) for one config, filtered like sass.", t_ptx,
          {"version": _VERSION, "config": _CONFIG, "function": _S, "grep": _S, "start": _I, "count": _I}),
    _tool("instruction_mix", "Instruction counts per opcode of two versions side by side (a: default the parent, "
          "b: default the candidate), SASS or PTX, the largest differences first.", t_instruction_mix,
          {"a": _VERSION, "b": _VERSION, "kind": {"type": "string", "enum": ["sass", "ptx"]}, "config": _CONFIG,
           "detail": _B}),
    _tool("submit", "End the step: hand the candidate to the harness, which applies the commit rule.", t_submit,
          {"rationale": {"type": "string", "description": "what changed, why, what you measured"}}, ("rationale",),
          ends_step=True),
    _tool("give_up", "End the step without submitting; say what you tried and learned.", t_give_up,
          {"reason": _S}, ("reason",), ends_step=True),
]}


def openai_tools(names=None) -> list[dict]:
    return [t.openai() for t in REGISTRY.values() if names is None or t.name in names]


_TYPES = {"string": str, "integer": int, "boolean": bool, "array": list, "object": dict}


def _validate(tool: Tool, args: dict) -> dict:
    missing = [r for r in tool.required if r not in args]
    if missing:
        raise ToolError(f"{tool.name} needs argument(s) {missing}")
    out = {}
    for name, value in args.items():
        if name not in tool.params:  # ignored, and said so in the answer (see call)
            continue
        want = tool.params[name].get("type")
        if value is None:
            continue
        if want == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        elif want == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        elif want == "array" and isinstance(value, str):  # "a,b" or "[a, b]" (from the command line)
            value = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",") if v.strip()]
        typ = _TYPES.get(want)
        if typ and not isinstance(value, typ) or (want == "integer" and isinstance(value, bool)):
            raise ToolError(f"{tool.name}: argument {name!r} must be {want}, got {type(value).__name__}")
        out[name] = value
    return out


def call(ctx: Context, name: str, args: dict | str | None) -> ToolResult:
    """Run one tool call. Arguments are a dict or its JSON text. Never raises for the tool's
    failures; a tool still running when the step's time runs out ends the step (submit excepted:
    the harness bounds its own evaluation)."""
    tool = REGISTRY.get(name)
    try:
        if tool is None:
            raise ToolError(f"unknown tool {name!r}; tools: {', '.join(sorted(REGISTRY))}")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ToolError(f"arguments are not valid JSON ({exc}); send a JSON object") from None
        if not isinstance(args, dict):
            raise ToolError("arguments must be a JSON object")
        ignored = sorted(set(args or {}) - set(tool.params))
        args = _validate(tool, args or {})
        if tool.name == "submit" or ctx.deadline is None:
            out = tool.fn(ctx, **args)
        else:
            out = _bounded(ctx, tool, args)
    except ToolError as exc:
        ctx.errors.append(redact(f"{name}: {exc}", ctx.secrets)[:500])
        return ToolResult(redact(json.dumps({"error": str(exc)}), ctx.secrets), ok=False)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        ctx.errors.append(redact(f"{name}: {message}", ctx.secrets)[:500])
        return ToolResult(redact(json.dumps({"error": message[:2000]}), ctx.secrets), ok=False)
    text = out if isinstance(out, str) else json.dumps(out, default=str, indent=1)
    if ignored:  # small models add arguments a tool does not take: answered, not refused
        text = f"[ignored argument(s) {ignored}: {name} takes {sorted(tool.params) or 'none'}]\n{text}"
    text = redact(text, ctx.secrets)
    if len(text) > RESULT_CHARS:
        cut = len(text) - RESULT_CHARS
        text = text[:RESULT_CHARS] + f"\n[... truncated {cut} chars; read less at once]"
    return ToolResult(text, ok=True)


def _bounded(ctx: Context, tool: Tool, args: dict):
    """The tool in a thread, waited on until the step's deadline. Processes a tool starts take the
    same deadline as their timeout, so an abandoned thread ends soon after."""
    left = ctx.seconds_left()
    if left <= 0:
        ctx.ended = ctx.ended or "budget_exhausted"
        raise ToolError("the step's time is spent")
    box: dict = {}

    def target():
        try:
            box["out"] = tool.fn(ctx, **args)
        except BaseException as exc:  # handed to the caller's thread
            box["exc"] = exc

    thread = threading.Thread(target=target, name=f"avo-tool-{tool.name}", daemon=True)
    thread.start()
    thread.join(left)
    if thread.is_alive():
        ctx.ended = ctx.ended or "budget_exhausted"
        raise ToolError(f"the step's time limit ran out while {tool.name} was running; the step ends")
    if "exc" in box:
        raise box["exc"]
    return box.get("out")
