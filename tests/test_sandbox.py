"""The compile sandbox and the checks on what comes out of it (CPU): a candidate's Python cannot
write outside its output directory, read the parent's secrets, reach the network or a GPU; a
forged object file is refused before it is linked; without a sandbox, untrusted code is refused."""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from unittest import mock

import pytest

from avo import hostobj, jit, sandbox
from avo.spec import AttentionSpec

needs_sandbox = pytest.mark.skipif(not sandbox.available()[0], reason=f"no namespaces: {sandbox.available()[1]}")


def _run_inside(tmp_path: Path, code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    # set in the parent (the sandbox must not see them), then exactly what was there put back:
    # popping them once sent every later test's compiles to the user's cache (AVO_CACHE_DIR)
    with mock.patch.dict(os.environ, env_extra or {}):
        return subprocess.run(sandbox.command([sys.executable, "-c", textwrap.dedent(code)], writable=[out]),
                              env=sandbox.environment(out, {"PYTHONPATH": str(jit.REPO)}), capture_output=True,
                              text=True, timeout=60, preexec_fn=sandbox.limits())


@needs_sandbox
def test_only_the_output_directory_is_writable(tmp_path):
    outside = [tmp_path / "escape.txt", jit.REPO / "escape.txt", Path.home() / "escape.txt", Path("/dev/shm/escape")]
    proc = _run_inside(tmp_path, f"""
        import os
        open("inside.txt", "w").write("ok")  # the working directory is the output directory
        for path in {[str(p) for p in outside]!r}:
            try:
                open(path, "w").write("escaped")
                print("WROTE", path)
            except OSError as exc:
                print("blocked", exc.strerror)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "WROTE" not in proc.stdout and proc.stdout.count("blocked") == len(outside)
    assert (tmp_path / "out" / "inside.txt").read_text() == "ok"
    assert not any(p.exists() for p in outside)


@needs_sandbox
def test_the_environment_is_scrubbed_of_secrets_and_avo_settings(tmp_path):
    before = [os.environ.get(k) for k in ("AVO_CACHE_DIR", "OPENAI_API_KEY")]  # AVO_CACHE_DIR: conftest's
    proc = _run_inside(tmp_path, "import os; print(sorted(os.environ))",
                       env_extra={"OPENAI_API_KEY": "sk-test-secret", "AVO_CACHE_DIR": "/somewhere"})
    assert proc.returncode == 0, proc.stderr
    assert [os.environ.get(k) for k in ("AVO_CACHE_DIR", "OPENAI_API_KEY")] == before  # the parent's, put back
    names = eval(proc.stdout)  # a list literal printed by the child
    assert "OPENAI_API_KEY" not in names and not any(n.startswith("AVO_") for n in names)
    assert "sk-test-secret" not in proc.stdout


@needs_sandbox
def test_no_network_even_to_loopback(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    port = server.getsockname()[1]
    reached = []

    def accept():
        try:
            reached.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    proc = _run_inside(tmp_path, f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3)
            print("CONNECTED")
        except OSError as exc:
            print("no network:", exc)
    """)
    thread.join()
    server.close()
    assert "CONNECTED" not in proc.stdout and "no network" in proc.stdout and not reached


@needs_sandbox
def test_the_sandbox_sees_no_other_process_and_dies_with_its_parent(tmp_path):
    proc = _run_inside(tmp_path, "import os; print(os.getpid(), len([p for p in os.listdir('/proc') if p.isdigit()]))")
    pid, visible = map(int, proc.stdout.split())
    assert pid == 1 and visible <= 2  # its own PID namespace: itself (and at most a mount helper)


def test_untrusted_code_is_refused_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "available", lambda: (False, "namespaces disabled (test)"))
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cache"))
    source = jit.render("naive_attention")
    with pytest.raises(jit.CompileError, match="refusing to run a candidate's Python unconfined"):
        jit.compile_kernel(source, AttentionSpec(head_dim=64), arch="sm_90a", run=False)
    # the user's explicit opt-out, or code the repository itself ships, compiles unconfined
    monkeypatch.setenv("AVO_SANDBOX", "off")
    assert jit.compile_kernel(source, AttentionSpec(head_dim=64), arch="sm_90a", run=False).report["registers"] > 0


# -- what comes back: the object file is checked before it is linked into the judge --------------


def _cc(tmp_path: Path, code: str) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler")
    src, obj = tmp_path / "forged.c", tmp_path / "forged.o"
    src.write_text(textwrap.dedent(code))
    subprocess.run([compiler, "-c", "-fPIC", "-O1", str(src), "-o", str(obj)], check=True)
    return obj


def test_the_dsl_object_passes_its_own_check(tmp_path):
    kernel = jit.compile_kernel(jit.render("naive_attention"), AttentionSpec(head_dim=64), arch="sm_90a", run=False)
    assert kernel.report["object_check"] in ("passed", "system-call scan skipped (no objdump)")
    assert hostobj.check_object(kernel.artifact_dir / "kernel.o") in ("", "system-call scan skipped (no objdump)")


@pytest.mark.parametrize("code, words", [
    ("""
     #include <stdio.h>
     int __tvm_ffi_avo_kernel(void) { FILE *f = fopen("/tmp/verdict.json", "w"); return f != 0; }
     """, "fopen"),
    ("""
     int forged;
     __attribute__((constructor)) void forge(void) { forged = 1; }
     int __tvm_ffi_avo_kernel(void) { return forged; }
     """, ".init_array"),
    ("""
     long __tvm_ffi_avo_kernel(long n) {
       long r; __asm__ volatile ("syscall" : "=a"(r) : "a"(n) : "rcx", "r11"); return r; }
     """, "system-call"),
])
def test_a_forged_object_is_refused(tmp_path, code, words):
    obj = _cc(tmp_path, code)
    if words == "system-call" and not shutil.which("objdump"):
        pytest.skip("no objdump")
    with pytest.raises(hostobj.ObjectRejected, match=words.replace(".", r"\.")):
        hostobj.check_object(obj)


@needs_sandbox
def test_a_candidate_that_writes_its_own_object_is_refused_and_never_linked(tmp_path, monkeypatch):
    """The candidate's Python compiles a C object over the one the DSL exported: the parent refuses it."""
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cache"))
    forged_c = 'int __tvm_ffi_avo_kernel(void) { return __builtin_printf("pwned"); }'
    text = jit.render("naive_attention").read_text() + textwrap.dedent(f"""
        import subprocess as _s, pathlib as _p, atexit as _a
        def _swap():
            for out in _p.Path(".").glob("*/kernel.o"):
                (out.parent / "x.c").write_text({forged_c!r})
                _s.run(["cc", "-c", "-fPIC", str(out.parent / "x.c"), "-o", str(out)], check=True)
        _a.register(_swap)
    """)
    path = tmp_path / "forger.py"
    path.write_text(text)
    with pytest.raises(jit.CompileError, match="refused") as info:
        jit.compile_kernel(path, AttentionSpec(head_dim=64), arch="sm_90a", run=False)
    assert info.value.stage == "artifact"
    entry = next((tmp_path / "cache").glob("bf16_d64_full_g1_sm_90a_*"))
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json"]  # nothing loadable was published


@needs_sandbox
def test_a_planted_symlink_is_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cache"))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    text = jit.render("naive_attention").read_text() + textwrap.dedent(f"""
        import atexit as _a, pathlib as _p
        def _plant():
            for out in _p.Path(".").glob("*/kernel.ptx"):
                out.unlink()
                out.symlink_to({str(secret)!r})
        _a.register(_plant)
    """)
    path = tmp_path / "planter.py"
    path.write_text(text)
    with pytest.raises(jit.CompileError, match="left no result"):
        jit.compile_kernel(path, AttentionSpec(head_dim=64), arch="sm_90a", run=False)


@needs_sandbox
def test_a_candidate_that_eats_memory_is_stopped_by_its_limit(tmp_path):
    proc = _run_inside(tmp_path, """
        try:
            hog = bytearray(32 << 30)  # 32 GiB: over the address-space limit
            print("ALLOCATED")
        except MemoryError:
            print("refused")
    """)
    assert "ALLOCATED" not in proc.stdout and "refused" in proc.stdout
