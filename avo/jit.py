"""Template -> render -> compile -> cache.

`render(template, knobs)` writes a kernel module into generated/ named by the hash of its text; knobs
is one assignment (Knobs) or a per-spec knob table (KnobTable: a default and override rows), which
the source carries as Python literals so that one source serves every spec with its own knobs.
`compile_kernel(source, spec, arch)` imports it, checks the kernel contract (avo/spec.py), compiles
it with CuTe DSL for `arch` and keeps the artifacts (object file, PTX, cubin, resource report) in a
disk cache keyed by source hash + arch + specialization + cutlass-dsl version, so another process
reuses them without compiling. On a GPU of the same arch the result is also callable with torch
tensors (run mode); elsewhere it is compile-only.

Failures are `CompileError`s carrying the stage, the DSL's message and the generated file and line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from avo import hostobj, resources, sandbox
from avo.atomic import atomic_write, file_lock
from avo.cubin import read_resources
from avo.spec import AttentionSpec

__all__ = [
    "ARCHS",
    "CompileError",
    "CompiledKernel",
    "GENERATED_DIR",
    "TEMPLATES_DIR",
    "cache_dir",
    "compile_kernel",
    "compile_stats",
    "current_arch",
    "compile_many",
    "implementable",
    "knob_space",
    "load_callable",
    "load_knobs",
    "load_table",
    "render",
    "seed_knobs",
    "source_hash",
]

REPO = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO / "dsl_templates"
GENERATED_DIR = REPO / "generated"
ARCHS = ("sm_90a", "sm_100a")
COMPILE_TIMEOUT_S = 900.0  # one build process, all the specializations it compiles
_TEMPLATE_FILE = "template.py.j2"  # each dsl_templates/<family>/ holds this and knobs.py
_KNOB_MODULES_LOCK = threading.Lock()  # knob_space: one thread loads a template's knobs module

# Compiles done by this process (cache hits do not count): tests count, never time.
_stats = {"compiles": 0, "disk_hits": 0, "memory_hits": 0}
_memory_cache: dict[str, CompiledKernel] = {}


class CompileError(Exception):
    """A candidate that cannot become a kernel. `stage` is one of render, import, contract,
    unsupported, compile; `file`/`line` point into the generated source when known."""

    def __init__(self, stage: str, message: str, file: str | None = None, line: int | None = None,
                 details: str = ""):
        self.stage, self.message, self.file, self.line, self.details = stage, message, file, line, details
        where = f" ({Path(file).name}:{line})" if file and line else ""
        super().__init__(f"{stage} failed{where}: {message}")

    def as_dict(self) -> dict:
        return {"stage": self.stage, "message": self.message, "file": self.file, "line": self.line,
                "details": self.details[-4000:]}


@dataclass
class CompiledKernel:
    key: str
    arch: str
    spec: AttentionSpec
    source: Path
    artifact_dir: Path
    report: dict
    from_cache: bool
    fn: object = field(default=None, repr=False)  # run mode: callable(q, k, v, o, lse, scale)

    @property
    def runnable(self) -> bool:
        return self.fn is not None


def cache_dir() -> Path:
    """Root of the compiled-kernel cache: $AVO_CACHE_DIR, else ~/.cache/avo/kernels."""
    return Path(os.environ.get("AVO_CACHE_DIR", Path.home() / ".cache" / "avo" / "kernels"))


def compile_stats() -> dict:
    return dict(_stats)


# ---------------------------------------------------------------------------------------------
# templates and knobs


def _template_dir(template: str) -> Path:
    path = TEMPLATES_DIR / template
    if not (path / "knobs.py").is_file():
        known = sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / "knobs.py").is_file())
        raise CompileError("render", f"unknown template {template!r}; known: {', '.join(known)}")
    return path


def knob_space(template: str):
    """The template's knobs module: `Knobs` (frozen dataclass), `SPACE`, `default_knobs(spec)`;
    a template whose source holds a per-spec knob table also has `KnobTable` and `SEED_TABLE`."""
    path = _template_dir(template) / "knobs.py"
    name = f"avo_knobs_{template}"
    # under a lock: the module is in sys.modules while it executes (its dataclasses look their
    # module up there), so without one a second thread (avo.bench compiles the specs of a suite
    # in a thread pool) could take it half made: "has no attribute 'default_knobs'"
    with _KNOB_MODULES_LOCK:
        if name not in sys.modules:
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]


def load_knobs(template: str, values: dict | None = None, spec: AttentionSpec | None = None):
    """A Knobs instance: the template's defaults for `spec`, overridden by `values`, each value
    checked against SPACE. `values` in a knob table's form ({"default": ..., "rows": ...}, as the
    lineage records it) gives that table's knobs for `spec`."""
    space = knob_space(template)
    spec = spec or AttentionSpec()
    if _is_table_dict(values) and hasattr(space, "KnobTable"):
        return load_table(template, values).for_spec(spec)
    base = space.default_knobs(spec)
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(space.Knobs)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)} for template {template}; knobs: {sorted(fields)}")
    for name, value in values.items():
        allowed = space.SPACE.get(name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"knob {name}={value!r} not in {list(allowed)} (template {template})")
    return dataclasses.replace(base, **values)


def load_table(template: str, values: dict | None = None):
    """The knob table a source is rendered from, for a template that has one (else the Knobs of
    load_knobs): the seed's table for None; a table's dict form as the lineage records it; a flat
    knobs dict (what nodes recorded before tables) is one assignment for every spec, no rows."""
    space = knob_space(template)
    if not hasattr(space, "KnobTable"):
        return load_knobs(template, values)
    if values is None:
        return space.SEED_TABLE
    try:
        return space.KnobTable.from_dict(values)
    except ValueError as exc:
        raise ValueError(f"{exc} (template {template})") from None


def seed_knobs(template: str, overrides: dict | None = None, spec: AttentionSpec | None = None):
    """What a run's seed is rendered from: the template's seed table with `overrides` on its
    default row, or, for a template without a table, load_knobs(template, overrides, spec)."""
    table = load_table(template)
    if not hasattr(table, "with_default"):
        return load_knobs(template, overrides, spec)
    try:
        return table.with_default(**(overrides or {}))
    except ValueError as exc:
        raise ValueError(f"{exc} (template {template})") from None


def _is_table_dict(values) -> bool:
    return isinstance(values, dict) and bool(values) and set(values) <= {"default", "rows"}


def render(template: str, knobs=None) -> Path:
    """Render `template` into generated/<template>_<sha12>.py (written once, atomically). `knobs`
    is one Knobs (every spec gets it) or, for a template with a knob table, a KnobTable (each
    spec its own); None renders the template's seed table, or its default Knobs."""
    tdir = _template_dir(template)
    if knobs is None:
        knobs = load_table(template)
    rows = []
    if hasattr(knobs, "rows") and hasattr(knobs, "literal_rows"):  # a KnobTable
        knobs, rows = knobs.default, knobs.literal_rows()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tdir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    try:
        text = env.get_template(_TEMPLATE_FILE).render(knobs=knobs, rows=rows)
    except jinja2.TemplateError as exc:
        raise CompileError("render", f"{type(exc).__name__}: {exc}", str(tdir), getattr(exc, "lineno", None)) from None
    path = GENERATED_DIR / f"{template}_{source_hash(text)[:12]}.py"
    if not path.exists():
        atomic_write(path, text)
    return path


# ---------------------------------------------------------------------------------------------
# compile


def current_arch() -> str | None:
    """The arch of the visible GPU (sm_90a for Hopper, sm_100a for Blackwell), or None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability()
    except Exception:
        return None
    return f"sm_{major}{minor}a"


def compile_kernel(source: str | Path, spec: AttentionSpec, arch: str | None = None,
                   run: bool | None = None, trusted: bool = False) -> CompiledKernel:
    """Compile (or load from cache) the kernel module at `source` for `spec` on `arch`.

    arch defaults to the visible GPU's, else sm_90a. run=None means: callable when arch matches
    the visible GPU; run=True demands it; run=False never loads onto the GPU. The compile runs in
    the sandbox (avo.sandbox); trusted=True (the repository's templates, committed archive nodes)
    lets it run unconfined where no sandbox can be started."""
    arch = arch or current_arch() or "sm_90a"
    result = compile_many(source, [spec], (arch,), run=run, trusted=trusted)[(spec, arch)]
    if isinstance(result, CompileError):
        raise result
    return result


def compile_many(source: str | Path, specs, archs, run: bool | None = None, trusted: bool = False,
                 timeout_s: float = COMPILE_TIMEOUT_S) -> dict:
    """{(spec, arch): CompiledKernel or CompileError} for every pair: from this process's memory,
    the disk cache, or else one sandboxed build process for all the missing pairs (the DSL import
    is paid once). Errors of the whole build (no sandbox, timeout, a crash) are raised."""
    source = Path(source).resolve()
    gpu_arch = current_arch()
    try:
        text = source.read_text()
    except OSError as exc:
        raise CompileError("import", f"cannot read kernel source: {exc}", str(source)) from None
    pairs = [(spec, arch) for arch in archs for spec in specs]
    for _spec, arch in pairs:
        if arch not in ARCHS:
            raise CompileError("contract", f"arch {arch!r} not supported: use one of {', '.join(ARCHS)}")
        if run and arch != gpu_arch:
            raise CompileError("contract", f"run mode needs a {arch} GPU; this machine has {gpu_arch or 'no GPU'}")
    keys = {pair: _cache_key(text, *pair) for pair in pairs}
    missing = [pair for pair in pairs if f"{keys[pair]}:{int(_runs(run, pair[1], gpu_arch))}" not in _memory_cache
               and not (cache_dir() / keys[pair] / "meta.json").exists()]
    built = set()
    if missing:
        cache_dir().mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as locks:
            for key in sorted({keys[p] for p in missing}):  # one global order: no deadlock between processes
                locks.enter_context(file_lock(cache_dir() / f"{key}.lock"))
            todo = [p for p in dict.fromkeys(missing) if not (cache_dir() / keys[p] / "meta.json").exists()]
            if todo:
                _build(source, [(keys[p], *p) for p in todo], trusted, timeout_s)
                built = {keys[p] for p in todo}
    results = {}
    for pair in pairs:
        results[pair] = _load_entry(source, keys[pair], *pair, run=_runs(run, pair[1], gpu_arch),
                                    fresh=keys[pair] in built)
    return results


def _runs(run: bool | None, arch: str, gpu_arch: str | None) -> bool:
    return (arch == gpu_arch) if run is None else run


def _load_entry(source: Path, key: str, spec: AttentionSpec, arch: str, run: bool, fresh: bool):
    mem_key = f"{key}:{int(run)}"
    if mem_key in _memory_cache:
        _stats["memory_hits"] += 1
        return _memory_cache[mem_key]
    entry = cache_dir() / key
    meta = json.loads((entry / "meta.json").read_text())
    if not fresh:
        _stats["disk_hits"] += 1
    if meta.get("error"):
        return CompileError(**{k: meta["error"].get(k) for k in ("stage", "message", "file", "line", "details")})
    kernel = CompiledKernel(key=key, arch=arch, spec=spec, source=source, artifact_dir=entry,
                            report=meta["report"], from_cache=not fresh)
    if run:
        kernel.fn = load_callable(entry)
    _memory_cache[mem_key] = kernel
    return kernel


def implementable(source: str | Path, specs) -> tuple[bool, str]:
    """Ask a template's own can_implement for each spec, without compiling. Imports the module in
    this process: for the repository's rendered templates only, never for a candidate."""
    from avo.build import ENTRY, import_kernel_module

    module = import_kernel_module(Path(source).resolve())
    kernel_cls = getattr(module, ENTRY, None)
    if kernel_cls is None:
        return False, f"module defines no {ENTRY}"
    for spec in specs:
        ok, reason = kernel_cls.can_implement(spec)
        if not ok:
            return False, f"{spec.key()}: {reason}"
    return True, ""


def _cache_key(text: str, spec: AttentionSpec, arch: str) -> str:
    # knobs are baked into the rendered text, so the source hash covers them; the DSL version is
    # read from package metadata so a cache hit never has to import the DSL's compiler
    blob = json.dumps({"source": source_hash(text), "spec": spec.as_dict(), "arch": arch,
                       "cutlass_dsl": _dsl_version(), "abi": 2}, sort_keys=True)
    return f"{spec.key()}_{arch}_{source_hash(blob)[:20]}"


def _build(source: Path, jobs: list[tuple[str, AttentionSpec, str]], trusted: bool, timeout_s: float) -> None:
    """Compile `jobs` [(key, spec, arch)] in sandboxed processes (avo.build; several at once on a
    machine with cores to spare), then check and publish each cache entry. Only the files named in
    _ARTIFACTS are taken from a sandbox's output; the report is read from the cubin here, not from
    anything the sandbox says."""
    ok, why = sandbox.available()
    if not ok and not trusted and sandbox.required():
        raise CompileError("sandbox", f"no sandbox here ({why}): refusing to run a candidate's Python "
                           "unconfined; set AVO_SANDBOX=off to allow it for code you trust")
    # each process pays the DSL import (~2 s) once; two cores per compile keep the machine responsive
    groups = max(1, min(len(jobs), (os.cpu_count() or 2) // 2, 8))
    staging = [Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir())) for _ in range(groups)]
    procs = []
    try:
        for i, stage in enumerate(staging):
            mine = jobs[i::groups]
            (stage / "home").mkdir()
            task = {"source": str(source), "jobs": [{"spec": s.as_dict(), "arch": a, "dir": k} for k, s, a in mine]}
            (stage / "task.json").write_text(json.dumps(task))
            argv = [sys.executable, "-m", "avo.build", str(stage / "task.json")]
            if ok:
                argv = sandbox.command(argv, writable=[stage])
            pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            env = sandbox.environment(stage / "home", {"PYTHONPATH": pythonpath, "CUDA_VISIBLE_DEVICES": ""})
            with open(stage / "build.log", "wb") as log:
                procs.append(subprocess.Popen(argv, cwd=stage, env=env, stdout=log, stderr=log,
                                              start_new_session=True, preexec_fn=sandbox.limits()))
        deadline = time.monotonic() + timeout_s
        try:
            for proc in procs:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except BaseException as exc:  # a timeout, or the caller interrupted: nothing may outlive it
            for proc in procs:
                _kill_group(proc)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CompileError("compile", f"the compile did not finish within {timeout_s:.0f} s",
                                   str(source)) from None
            raise
        for i, (stage, proc) in enumerate(zip(staging, procs, strict=True)):
            tail = (stage / "build.log").read_bytes()[-4000:].decode(errors="replace")
            for key, spec, arch in jobs[i::groups]:
                _publish(stage / key, cache_dir() / key, source, spec, arch, proc.returncode, tail)
    finally:
        for stage in staging:
            shutil.rmtree(stage, ignore_errors=True)


_ARTIFACTS = ("kernel.o", "kernel.ptx", "kernel.cubin")
_MAX_ARTIFACT_BYTES = 256 << 20


def _publish(out: Path, entry: Path, source: Path, spec: AttentionSpec, arch: str, returncode: int,
             log_tail: str) -> None:
    """Turn one job's sandbox output into a cache entry (atomically). Deterministic failures
    (contract, unsupported, compile errors, a refused object) are cached so a bad candidate fails
    fast; a build process that died without a verdict for the job is raised, not cached."""
    files = {name: out / name for name in (*_ARTIFACTS, "build.json", "error.json") if _regular_file(out / name)}
    complete = all(name in files for name in (*_ARTIFACTS, "build.json"))
    if "error.json" not in files and not complete:
        last = next((ln for ln in reversed(log_tail.splitlines()) if ln.strip()), "")
        raise CompileError("compile", f"the compile process (exit {returncode}) left no result for "
                           f"{spec.key()} on {arch}: {last[:300]}", str(source))
    meta = {"source": str(source), "spec": spec.as_dict(), "arch": arch, "created": time.time()}
    clean = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        if "error.json" in files:
            raise _untrusted_error(files["error.json"], source)
        for name in _ARTIFACTS:
            shutil.copyfile(files[name], clean / name)
        meta["report"] = _report(clean, json.loads(files["build.json"].read_text()[:100000]), source, arch)
        _stats["compiles"] += 1
    except CompileError as exc:
        meta["error"] = exc.as_dict()
        for name in (*_ARTIFACTS, "kernel.so"):
            (clean / name).unlink(missing_ok=True)
    (clean / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(clean, entry)
    except OSError:  # already published by someone who did not hold the lock (stale lock file)
        shutil.rmtree(clean, ignore_errors=True)


def _untrusted_error(path: Path, source: Path) -> CompileError:
    """The build's CompileError, re-made field by field: it is data from the sandbox, never code."""
    try:
        raw = json.loads(path.read_text()[:20000])
    except (ValueError, UnicodeDecodeError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    line = raw.get("line")
    return CompileError(str(raw.get("stage", "compile"))[:40], str(raw.get("message", "unreadable error"))[:2000],
                        str(source), line if isinstance(line, int) else None, str(raw.get("details", ""))[-8000:])


def _regular_file(path: Path) -> bool:
    """A plain file of sane size (never a link the sandbox planted to make us read elsewhere)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= _MAX_ARTIFACT_BYTES


def _report(entry: Path, facts: dict, source: Path, arch: str) -> dict:
    """Resources read here from the cubin and PTX; from the build only its timing and the traced
    launches (informational). The object is checked before it is linked."""
    try:
        note = hostobj.check_object(entry / "kernel.o")
    except hostobj.ObjectRejected as exc:
        raise CompileError("artifact", f"the compiled object was refused: {exc}", str(source)) from None
    try:
        report = read_resources(entry / "kernel.cubin")
    except (ValueError, struct.error, IndexError) as exc:
        raise CompileError("artifact", f"unreadable cubin: {exc}", str(source)) from None
    report.update(_ptx_facts(entry / "kernel.ptx"))
    seconds = facts.get("compile_seconds")
    report["compile_seconds"] = round(float(seconds), 3) if isinstance(seconds, int | float) else None
    launches = [x for x in facts.get("launches", []) if isinstance(x, dict)][:16]
    report["launches"] = [{"smem": x.get("smem") if isinstance(x.get("smem"), int) else None,
                           "block": [b for b in (x.get("block") or []) if isinstance(b, int)][:3]} for x in launches]
    if report["launches"] and all(isinstance(x["smem"], int) for x in report["launches"]):
        report["dynamic_smem_bytes"] = max(x["smem"] for x in report["launches"])
    split = facts.get("register_split")
    if isinstance(split, list) and 0 < len(split) <= 8 and all(isinstance(x, int) for x in split):
        report["register_split"] = split  # the kernel's own declaration: checked against the PTX below
    report["resource_problems"] = resources.check_report(report, arch, entry)
    report["object_check"] = note or "passed"
    report["shared_library"] = _link_shared_library(entry)
    return report


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _ptx_facts(ptx: Path) -> dict:
    if not ptx.exists():
        return {}
    text = ptx.read_text()
    return {"ptx_wgmma": text.count("wgmma.mma_async"), "ptx_tcgen05_mma": len(re.findall(r"\btcgen05\.mma\b", text)),
            "ptx_tma_loads": text.count("cp.async.bulk.tensor"),
            "ptx_setmaxnreg": text.count("setmaxnreg"), "ptx_local_bytes": _local_bytes(text)}


def _local_bytes(ptx: str) -> int:
    return sum(int(n) for n in re.findall(r"\.local\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]", ptx))


def _link_shared_library(out: Path) -> str:
    """Link kernel.o into kernel.so against the DSL's runtime and libtvm_ffi (rpath to both), so a
    later process loads the kernel with tvm_ffi alone: importing the CuTe DSL costs ~0.5 s, most
    of a cached kernel's first call. Best effort: with no C compiler the object file is loaded
    through the DSL as before. Returns "yes" or why not."""
    import cutlass.runtime
    import tvm_ffi

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return "no C compiler (cc/gcc) found"
    libs = [*cutlass.runtime.find_runtime_libraries(enable_tvm_ffi=False), tvm_ffi.libinfo.find_libtvm_ffi()]
    flags = []
    for lib in map(Path, libs):
        flags += [str(lib), f"-Wl,-rpath,{lib.parent}"]
    cmd = [compiler, "-shared", "-o", str(out / "kernel.so"), str(out / "kernel.o"), *flags, "-Wl,-z,defs"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"link failed: {exc}"
    if proc.returncode:
        (out / "kernel.so").unlink(missing_ok=True)
        return f"link failed: {(proc.stderr or proc.stdout).strip()[:300]}"
    return "yes"


_shared_modules: dict[str, object] = {}  # path -> tvm_ffi module, kept alive with its functions


def load_callable(entry: Path):
    """The kernel's tvm_ffi function: from kernel.so through tvm_ffi alone when it was linked,
    else from kernel.o through the DSL's loader (which imports the DSL)."""
    shared = entry / "kernel.so"
    if shared.exists():
        import tvm_ffi

        try:
            module = _shared_modules.get(str(shared)) or tvm_ffi.load_module(str(shared))
            _shared_modules[str(shared)] = module
            return module["avo_kernel"]
        except Exception:  # e.g. the runtime it was linked against has moved: the object file still loads
            pass
    import cutlass.cute as cute

    module = cute.runtime.load_module(str(entry / "kernel.o"), enable_tvm_ffi=True)
    return module.avo_kernel


# ---------------------------------------------------------------------------------------------
# small file helpers


@functools.lru_cache(maxsize=1)
def _dsl_version() -> str:
    try:
        return importlib.metadata.version("nvidia-cutlass-dsl")
    except importlib.metadata.PackageNotFoundError:  # e.g. installed with --target: ask the module
        import cutlass

        return cutlass.__version__


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
