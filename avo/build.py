"""The compile step, run inside the sandbox (avo.sandbox) because it executes the kernel module.

`python -m avo.build TASK.json` reads {"source": path, "jobs": [{"spec": {...}, "arch": ..., "dir": ...}]}
and, for each job, writes into <task dir>/<dir>/ either kernel.o, kernel.ptx, kernel.cubin and
build.json (compile seconds, launches traced), or error.json (a CompileError). Nothing else it
writes is read: the parent (avo.jit) checks the object file, links it, reads the resources from
the cubin itself and publishes the cache entry. Compiling one module for many specializations in
one process pays the DSL import (~2 s) once.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from avo.jit import CompileError, source_hash
from avo.spec import AttentionSpec

__all__ = ["ENTRY", "import_kernel_module"]

ENTRY = "KERNEL"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def import_kernel_module(source: Path):
    """Execute the kernel module (only ever inside the sandbox, or for the repository's own templates)."""
    name = f"avo_generated_{source_hash(source.read_text())[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    try:
        module_spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise error_from_exception("import", exc, source) from None
    sys.modules[name] = module
    return module


def _compile_one(out: Path, source: Path, spec: AttentionSpec, arch: str) -> dict:
    module = import_kernel_module(source)
    kernel_cls = getattr(module, ENTRY, None)
    if kernel_cls is None:
        raise CompileError("contract", f"module defines no {ENTRY} (the kernel class)", str(source))
    try:
        ok, reason = kernel_cls.can_implement(spec)
    except Exception as exc:
        raise error_from_exception("contract", exc, source) from None
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
        raise error_from_exception("compile", exc, source) from None
    seconds = time.perf_counter() - started
    for suffix in ("ptx", "cubin"):
        found = sorted(dump.glob(f"*.{suffix}"))
        if found:
            shutil.move(str(found[-1]), out / f"kernel.{suffix}")
    shutil.rmtree(dump, ignore_errors=True)
    if not (out / "kernel.cubin").exists():
        raise CompileError("compile", "the DSL produced no cubin", str(source))
    # the kernel's setmaxnreg split: per instance where knobs are per spec, else on the class
    split = getattr(kernel, "register_split", None) or getattr(kernel_cls, "register_split", ()) or ()
    return {"compile_seconds": round(seconds, 3), "launches": launches,
            "register_split": [int(x) for x in split]}


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


def error_from_exception(stage: str, exc: BaseException, source: Path) -> CompileError:
    """The DSL's message plus the deepest frame (or syntax-error line) inside the kernel file."""
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


def _toolchain_problem() -> str:
    """Why the CuTe DSL cannot be imported in this process, or "". Checked before any candidate is
    imported: a candidate's own import error is its fault and is cached as its verdict, but in an
    environment without the toolchain every candidate would fail the same way, and such a verdict
    must not be cached (a venv replaced under a running job once cached "No module named
    'cutlass'" for 16 healthy kernels)."""
    try:
        import cutlass  # noqa: F401
        import cutlass.cute  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything on import
        return f"{type(exc).__name__}: {exc}"
    return ""


def _main(task_path: str) -> int:
    problem = _toolchain_problem()
    if problem:  # no error.json: the parent reports a build that left no result, and caches nothing
        print(f"avo.build: the CuTe DSL does not import here ({problem}); nothing compiled", file=sys.stderr)
        return 3
    task_path = Path(task_path)
    task = json.loads(task_path.read_text())
    source = Path(task["source"])
    for job in task["jobs"]:
        out = task_path.parent / job["dir"]
        out.mkdir(parents=True, exist_ok=True)
        try:
            facts = _compile_one(out, source, AttentionSpec(**job["spec"]), job["arch"])
            (out / "build.json").write_text(json.dumps(facts))
        except CompileError as exc:
            (out / "error.json").write_text(json.dumps(exc.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
