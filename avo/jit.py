"""Template -> render -> compile -> cache.

`render(template, knobs)` writes a kernel module into generated/ named by the hash of its text.
`compile_kernel(source, spec, arch)` imports it, checks the kernel contract (avo/spec.py), compiles
it with CuTe DSL for `arch` and keeps the artifacts (object file, PTX, cubin, resource report) in a
disk cache keyed by source hash + arch + specialization + cutlass-dsl version, so another process
reuses them without compiling. On a GPU of the same arch the result is also callable with torch
tensors (run mode); elsewhere it is compile-only.

Failures are `CompileError`s carrying the stage, the DSL's message and the generated file and line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

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
    "implementable",
    "knob_space",
    "load_knobs",
    "render",
    "source_hash",
]

REPO = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO / "dsl_templates"
GENERATED_DIR = REPO / "generated"
ARCHS = ("sm_90a", "sm_100a")
_ENTRY = "KERNEL"
_TEMPLATE_FILE = "template.py.j2"  # each dsl_templates/<family>/ holds this and knobs.py

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
    """The template's knobs module: `Knobs` (frozen dataclass), `SPACE`, `default_knobs(spec)`."""
    path = _template_dir(template) / "knobs.py"
    name = f"avo_knobs_{template}"
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    return sys.modules[name]


def load_knobs(template: str, values: dict | None = None, spec: AttentionSpec | None = None):
    """A Knobs instance: the template's defaults for `spec`, overridden by `values`, each value
    checked against SPACE."""
    space = knob_space(template)
    base = space.default_knobs(spec or AttentionSpec())
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


def render(template: str, knobs=None) -> Path:
    """Render `template` with `knobs` into generated/<template>_<sha12>.py (written once, atomically)."""
    tdir = _template_dir(template)
    knobs = knobs if knobs is not None else load_knobs(template)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tdir)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    try:
        text = env.get_template(_TEMPLATE_FILE).render(knobs=knobs)
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
                   run: bool | None = None) -> CompiledKernel:
    """Compile (or load from cache) the kernel module at `source` for `spec` on `arch`.

    arch defaults to the visible GPU's, else sm_90a. run=None means: callable when arch matches
    the visible GPU; run=True demands it; run=False never loads onto the GPU."""
    source = Path(source).resolve()
    gpu_arch = current_arch()
    arch = arch or gpu_arch or "sm_90a"
    if arch not in ARCHS:
        raise CompileError("contract", f"arch {arch!r} not supported: use one of {', '.join(ARCHS)}")
    if run is None:
        run = arch == gpu_arch
    elif run and arch != gpu_arch:
        raise CompileError("contract", f"run mode needs a {arch} GPU; this machine has {gpu_arch or 'no GPU'}")
    try:
        text = source.read_text()
    except OSError as exc:
        raise CompileError("import", f"cannot read kernel source: {exc}", str(source)) from None

    key = _cache_key(text, spec, arch)
    mem_key = f"{key}:{int(run)}"
    if mem_key in _memory_cache:
        _stats["memory_hits"] += 1
        return _memory_cache[mem_key]

    entry = cache_dir() / key
    from_cache = (entry / "meta.json").exists()
    if not from_cache:
        with file_lock(cache_dir() / f"{key}.lock"):
            from_cache = (entry / "meta.json").exists()  # another process may have finished it
            if not from_cache:
                _compile_into(entry, source, text, spec, arch)
    if from_cache:
        _stats["disk_hits"] += 1
    meta = json.loads((entry / "meta.json").read_text())
    if meta.get("error"):
        raise CompileError(**{k: meta["error"][k] for k in ("stage", "message", "file", "line", "details")})
    kernel = CompiledKernel(key=key, arch=arch, spec=spec, source=source, artifact_dir=entry,
                            report=meta["report"], from_cache=from_cache)
    if run:
        kernel.fn = _load_callable(entry)
    _memory_cache[mem_key] = kernel
    return kernel


def implementable(source: str | Path, specs) -> tuple[bool, str]:
    """Ask the kernel module's own can_implement for each spec, without compiling."""
    source = Path(source).resolve()
    module = _import_kernel_module(source)
    kernel_cls = getattr(module, _ENTRY, None)
    if kernel_cls is None:
        return False, f"module defines no {_ENTRY}"
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


def _compile_into(entry: Path, source: Path, text: str, spec: AttentionSpec, arch: str) -> None:
    """Compile and publish the cache entry atomically (temp dir + rename). Deterministic failures
    (contract, unsupported, compile errors) are cached too, so a bad candidate fails fast."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    meta = {"source": str(source), "spec": spec.as_dict(), "arch": arch, "created": time.time()}
    try:
        meta["report"] = _compile_artifacts(tmp, source, spec, arch)
        _stats["compiles"] += 1
    except CompileError as exc:
        meta["error"] = exc.as_dict()
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, entry)
    except OSError:  # already published by someone who did not hold the lock (stale lock file)
        shutil.rmtree(tmp, ignore_errors=True)


def _compile_artifacts(out: Path, source: Path, spec: AttentionSpec, arch: str) -> dict:
    module = _import_kernel_module(source)
    kernel_cls = getattr(module, _ENTRY, None)
    if kernel_cls is None:
        raise CompileError("contract", f"module defines no {_ENTRY} (the kernel class)", str(source))
    try:
        ok, reason = kernel_cls.can_implement(spec)
    except Exception as exc:
        raise _error_from_exception("contract", exc, source) from None
    if not ok:
        raise CompileError("unsupported", f"can_implement rejected {spec.key()}: {reason}", str(source))

    import cutlass.cute as cute

    dump = out / "dump"
    dump.mkdir()
    options = f"--enable-tvm-ffi --gpu-arch {arch} --keep-ptx --keep-cubin --dump-dir {dump}"
    started = time.perf_counter()
    try:
        kernel = kernel_cls(spec)
        with _recording_launches() as launches:
            compiled = cute.compile(kernel, *_fake_attention_args(spec), options=options)
        compiled.export_to_c(object_file_path=str(out / "kernel.o"), function_name="avo_kernel")
    except Exception as exc:
        raise _error_from_exception("compile", exc, source) from None
    seconds = time.perf_counter() - started
    linked = _link_shared_library(out)
    for suffix in ("ptx", "cubin"):
        found = sorted(dump.glob(f"*.{suffix}"))
        if found:
            shutil.move(str(found[-1]), out / f"kernel.{suffix}")
    shutil.rmtree(dump, ignore_errors=True)
    if not (out / "kernel.cubin").exists():
        raise CompileError("compile", "the DSL produced no cubin", str(source))
    report = read_resources(out / "kernel.cubin")
    report.update(_ptx_facts(out / "kernel.ptx"))
    report["launches"] = launches
    if launches and all(isinstance(x["smem"], int) for x in launches):
        report["dynamic_smem_bytes"] = max(x["smem"] for x in launches)
    report["compile_seconds"] = round(seconds, 3)
    report["shared_library"] = linked
    return report


@contextmanager
def _recording_launches():
    """Record each kernel launch traced during a compile (block size and dynamic shared memory,
    which live in the host code, not in the cubin)."""
    from cutlass.cutlass_dsl.cutlass import KernelLauncher

    launches: list[dict] = []
    original = KernelLauncher.launch

    def launch(self, *args, **kwargs):
        smem, block = kwargs.get("smem"), kwargs.get("block")
        launches.append({"smem": smem if isinstance(smem, int) else None,
                         "block": [b for b in block if isinstance(b, int)] if block else None})
        return original(self, *args, **kwargs)

    KernelLauncher.launch = launch
    try:
        yield launches
    finally:
        KernelLauncher.launch = original


def _fake_attention_args(spec: AttentionSpec):
    """Symbolic arguments: batch, seqlens and heads dynamic; strides dynamic but 16-byte aligned
    (what TMA needs), last dim contiguous."""
    import cutlass
    import cutlass.cute as cute

    d = spec.head_dim
    batch, seqlen_q, seqlen_k, heads_q, heads_kv = (cute.sym_int() for _ in range(5))

    def bshd(seqlen, heads):
        strides = tuple(cute.sym_int(64, divisibility=8) for _ in range(3)) + (1,)
        return cute.runtime.make_fake_tensor(spec.cutlass_dtype, (batch, seqlen, heads, d), strides,
                                             assumed_align=16)

    lse_strides = (cute.sym_int(64), cute.sym_int(64), 1)  # row-major, any batch/head strides
    lse = cute.runtime.make_fake_tensor(cutlass.Float32, (batch, heads_q, seqlen_q), lse_strides, assumed_align=4)
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return (bshd(seqlen_q, heads_q), bshd(seqlen_k, heads_kv), bshd(seqlen_k, heads_kv),
            bshd(seqlen_q, heads_q), lse, cutlass.Float32(1.0), stream)


def _import_kernel_module(source: Path):
    name = f"avo_generated_{source_hash(source.read_text())[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    try:
        module_spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise _error_from_exception("import", exc, source) from None
    sys.modules[name] = module
    return module


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_from_exception(stage: str, exc: BaseException, source: Path) -> CompileError:
    """The DSL's message plus the deepest frame (or syntax-error line) inside the generated file."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    tb = traceback.extract_tb(exc.__traceback__)
    for frame in tb:
        if Path(frame.filename).resolve() == source:
            line = frame.lineno
    message = _ANSI.sub("", str(exc)).strip() or type(exc).__name__  # the DSL colours its errors
    if line is None:  # the DSL reports its own source locations in the message
        match = re.search(re.escape(source.name) + r'"?[:, line]+(\d+)', message)
        line = int(match.group(1)) if match else None
    first = next((ln for ln in message.splitlines() if ln.strip()), message)
    return CompileError(stage, f"{type(exc).__name__}: {first[:500]}", str(source), line,
                        details="".join(traceback.format_exception(exc))[-8000:])


def _ptx_facts(ptx: Path) -> dict:
    if not ptx.exists():
        return {}
    text = ptx.read_text()
    return {"ptx_wgmma": text.count("wgmma.mma_async"), "ptx_tma_loads": text.count("cp.async.bulk.tensor"),
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


def _load_callable(entry: Path):
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
