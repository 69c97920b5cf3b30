"""The render -> compile -> cache pipeline, on the naive attention template (cheap to compile)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from avo import jit
from avo.spec import AttentionSpec

REPO = Path(__file__).resolve().parent.parent
SPEC = AttentionSpec(dtype="bf16", head_dim=64, causal=True)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVO_CACHE_DIR", str(tmp_path / "cache"))
    jit._memory_cache.clear()
    return tmp_path / "cache"


def test_render_is_content_addressed_and_bakes_knobs():
    knobs = jit.load_knobs("naive_attention", {"block_m": 64, "tile_n": 16})
    path = jit.render("naive_attention", knobs)
    text = path.read_text()
    assert "BLOCK_M = 64" in text and "TILE_N = 16" in text
    assert path.parent == jit.GENERATED_DIR and path.name.startswith("naive_attention_")
    assert jit.render("naive_attention", knobs) == path  # same knobs, same file
    assert jit.render("naive_attention", jit.load_knobs("naive_attention", {"block_m": 128})) != path


def test_knob_values_are_checked_against_the_space():
    with pytest.raises(ValueError, match="tile_n=7 not in"):
        jit.load_knobs("naive_attention", {"tile_n": 7})
    with pytest.raises(ValueError, match="unknown knob"):
        jit.load_knobs("naive_attention", {"warp_size": 32})
    with pytest.raises(jit.CompileError, match="unknown template"):
        jit.render("no_such_template")


@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a"])
def test_compile_only_produces_cubin_and_a_plausible_report(arch, fresh_cache):
    knobs = jit.load_knobs("naive_attention", {"block_m": 64, "tile_n": 32})
    kernel = jit.compile_kernel(jit.render("naive_attention", knobs), SPEC, arch=arch, run=False)
    assert not kernel.runnable and not kernel.from_cache
    assert (kernel.artifact_dir / "kernel.cubin").stat().st_size > 1000
    assert f".target {arch}" in (kernel.artifact_dir / "kernel.ptx").read_text()
    report = kernel.report
    assert 16 <= report["registers"] <= 255
    assert report["threads_per_block"] == 64  # block_m threads, as the template launches
    # the template asks for fp32 K and V tiles: 2 * tile_n * head_dim * 4 bytes
    assert report["dynamic_smem_bytes"] == 2 * 32 * 64 * 4
    assert report["num_kernels"] == 1 and report["ptx_wgmma"] == 0


_LOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from avo import jit
    fn = jit.load_callable(Path(sys.argv[1]))
    print(json.dumps({"type": type(fn).__name__, "dsl_imported": "cutlass" in sys.modules}))
""")


def test_cached_kernel_loads_without_importing_the_dsl(fresh_cache):
    """The cache entry carries kernel.so, linked so that a new process resolves the kernel's
    function through tvm_ffi without importing the CuTe DSL (most of a cached first call)."""
    kernel = jit.compile_kernel(jit.render("naive_attention"), SPEC, arch="sm_90a", run=False)
    if kernel.report["shared_library"] != "yes":
        pytest.skip(f"no shared library here: {kernel.report['shared_library']}")
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(kernel.artifact_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"type": "Function", "dsl_imported": False}


def test_unsupported_spec_is_rejected_before_compiling(fresh_cache):
    path = jit.render("naive_attention")
    with pytest.raises(jit.CompileError) as err:
        jit.compile_kernel(path, AttentionSpec(head_dim=256), arch="sm_90a", run=False)
    assert err.value.stage == "unsupported" and "head_dim 256" in err.value.message
    assert jit.compile_stats()["compiles"] >= 0  # nothing was compiled for it
    assert not list(fresh_cache.glob("*/kernel.cubin"))


def test_run_mode_without_a_matching_gpu_is_a_clear_error(fresh_cache):
    if jit.current_arch() == "sm_100a":
        pytest.skip("this machine is a B200")
    with pytest.raises(jit.CompileError, match="run mode needs a sm_100a GPU"):
        jit.compile_kernel(jit.render("naive_attention"), SPEC, arch="sm_100a", run=True)


_COMPILE_SCRIPT = textwrap.dedent("""
    import json, sys
    from avo import jit
    from avo.spec import AttentionSpec
    k = jit.compile_kernel(sys.argv[1], AttentionSpec(dtype="fp16", head_dim=32), arch="sm_90a", run=False)
    print(json.dumps({"from_cache": k.from_cache, **jit.compile_stats()}))
""")


def _compile_in_subprocess(source, env):
    return subprocess.Popen([sys.executable, "-c", _COMPILE_SCRIPT, str(source)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_new_process_reuses_the_disk_cache(fresh_cache):
    source = jit.render("naive_attention", jit.load_knobs("naive_attention", {"tile_n": 16}))
    env = dict(os.environ)
    first = _result(_compile_in_subprocess(source, env))
    second = _result(_compile_in_subprocess(source, env))
    assert (first["compiles"], first["from_cache"]) == (1, False)
    assert (second["compiles"], second["from_cache"], second["disk_hits"]) == (0, True, 1)


@pytest.mark.slow
def test_concurrent_processes_compile_once(fresh_cache):
    source = jit.render("naive_attention", jit.load_knobs("naive_attention", {"tile_n": 64}))
    env = dict(os.environ)
    procs = [_compile_in_subprocess(source, env) for _ in range(2)]
    results = [_result(p) for p in procs]
    assert sum(r["compiles"] for r in results) == 1
    assert sorted(r["from_cache"] for r in results) == [False, True]
    assert len(list(fresh_cache.glob("*/kernel.o"))) == 1


def _broken_kernel(tmp_path, marker_line_text):
    """The naive kernel with one line replaced; returns the path and that line's number."""
    text = jit.render("naive_attention").read_text()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if "row_sum = row_sum * correction + p" in line)
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = indent + marker_line_text
    path = tmp_path / "broken_kernel.py"
    path.write_text("\n".join(lines) + "\n")
    return path, index + 1


def test_dsl_error_names_the_generated_line(tmp_path, fresh_cache):
    path, line = _broken_kernel(tmp_path, "row_sum = row_sum * correction + undefined_name")
    with pytest.raises(jit.CompileError) as err:
        jit.compile_kernel(path, SPEC, arch="sm_90a", run=False)
    assert err.value.stage == "compile"
    assert err.value.file == str(path) and err.value.line == line
    assert "undefined_name" in err.value.message
    # the failure is cached: a second attempt fails the same way without compiling again
    before = jit.compile_stats()["compiles"]
    jit._memory_cache.clear()
    with pytest.raises(jit.CompileError) as again:
        jit.compile_kernel(path, SPEC, arch="sm_90a", run=False)
    assert again.value.line == line and jit.compile_stats()["compiles"] == before


def test_syntax_error_is_an_import_error_with_its_line(tmp_path, fresh_cache):
    path, line = _broken_kernel(tmp_path, "row_sum = (row_sum *")
    with pytest.raises(jit.CompileError) as err:
        jit.compile_kernel(path, SPEC, arch="sm_90a", run=False)
    assert err.value.stage == "import" and err.value.line in (line, line + 1)


def test_module_without_entry_point_is_a_contract_error(tmp_path, fresh_cache):
    path = tmp_path / "empty_kernel.py"
    path.write_text("X = 1\n")
    with pytest.raises(jit.CompileError) as err:
        jit.compile_kernel(path, SPEC, arch="sm_90a", run=False)
    assert err.value.stage == "contract" and "KERNEL" in err.value.message


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 255, 300, 4, 2, 64), (1, 1000, 1000, 2, 2, 128), (1, 17, 1, 2, 1, 64)])
def test_run_mode_matches_the_reference(shape, causal, fresh_cache):
    import torch

    from avo.reference import reference_attention

    batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim = shape
    spec = AttentionSpec(dtype="bf16", head_dim=head_dim, causal=causal, qhead_per_kvhead=heads_q // heads_kv)
    kernel = jit.compile_kernel(jit.render("naive_attention"), spec)
    assert kernel.runnable
    q = torch.randn(batch, seqlen_q, heads_q, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seqlen_k, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(batch, seqlen_k, heads_kv, head_dim, device="cuda", dtype=torch.bfloat16)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((batch, heads_q, seqlen_q), float("nan"), device="cuda")
    scale = head_dim ** -0.5
    kernel.fn(q, k, v, out, lse, scale)
    torch.cuda.synchronize()
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, softmax_scale=scale)
    assert not out.isnan().any() and not lse.isnan().any()
    err = (out.float() - ref_out).abs().max().item()
    bf16_err = (ref_out.bfloat16().float() - ref_out).abs().max().item()
    assert err <= 2 * bf16_err + 1e-3, (err, bf16_err)
    finite = ref_lse.isfinite()
    assert torch.equal(lse.isfinite(), finite)
    assert (lse[finite] - ref_lse[finite]).abs().max().item() < 1e-3


@pytest.mark.gpu
def test_shared_library_and_object_file_give_the_same_kernel(tmp_path, fresh_cache):
    """kernel.so (tvm_ffi) and kernel.o (the DSL's loader, the fallback) run the same code."""
    import shutil

    import torch

    spec = AttentionSpec(dtype="bf16", head_dim=64, causal=True)
    kernel = jit.compile_kernel(jit.render("naive_attention"), spec)
    assert kernel.report["shared_library"] == "yes", kernel.report["shared_library"]
    object_only = tmp_path / "object_only"
    shutil.copytree(kernel.artifact_dir, object_only)
    (object_only / "kernel.so").unlink()
    q, k, v = (torch.randn(1, 300, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    outs = []
    for fn in (kernel.fn, jit.load_callable(object_only)):
        out, lse = torch.full_like(q, float("nan")), torch.full((1, 2, 300), float("nan"), device="cuda")
        fn(q, k, v, out, lse, 0.125)
        outs.append((out, lse))
    torch.cuda.synchronize()
    assert not outs[0][0].isnan().any()
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_knob_modules_load_once_for_threads_at_once():
    """avo.bench compiles a suite's specs in a thread pool, each thread loading the template's knob
    module: before a lock they could take it half executed (H100 2026-11-23, `avo.bench --kernel
    flash_fwd_sm90`: "module 'avo_knobs_flash_fwd_sm90' has no attribute 'default_knobs'")."""
    import sys
    import threading

    from avo.spec import AttentionSpec

    name = "avo_knobs_flash_fwd_sm90"
    loaded = sys.modules.get(name)  # put back after: other tests hold its Knobs class
    try:
        for _ in range(5):
            sys.modules.pop(name, None)
            start, results = threading.Barrier(8), []

            def load(start=start, results=results):
                start.wait()
                try:
                    results.append(jit.knob_space("flash_fwd_sm90").default_knobs(AttentionSpec()).tile_m)
                except AttributeError as exc:
                    results.append(exc)

            threads = [threading.Thread(target=load) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results == [128] * 8
    finally:
        sys.modules.pop(name, None)
        if loaded is not None:
            sys.modules[name] = loaded


def test_a_build_without_the_toolchain_leaves_no_verdict_to_cache(tmp_path, monkeypatch, capsys):
    """avo.build in an environment where the CuTe DSL does not import (a venv replaced under a
    running job) writes neither build.json nor error.json for any job, so the parent raises "left no
    result" and caches nothing; with the toolchain there, a candidate's own import error is its
    error.json (cached as its verdict)."""
    from avo import build

    source = tmp_path / "candidate.py"
    source.write_text("import no_such_module_anywhere\n")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"source": str(source), "jobs": [{"spec": SPEC.as_dict(), "arch": "sm_90a",
                                                                 "dir": "job0"}]}))
    monkeypatch.setattr(build, "_toolchain_problem", lambda: "ModuleNotFoundError: No module named 'cutlass'")
    assert build._main(str(task)) == 3
    assert not (tmp_path / "job0").exists()
    assert "does not import here (ModuleNotFoundError: No module named 'cutlass')" in capsys.readouterr().err
    monkeypatch.setattr(build, "_toolchain_problem", lambda: "")
    assert build._main(str(task)) == 0
    error = json.loads((tmp_path / "job0" / "error.json").read_text())
    assert error["stage"] == "import" and "no_such_module_anywhere" in error["message"]
