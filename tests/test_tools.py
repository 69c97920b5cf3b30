"""The tool registry on the CPU: each tool against a real candidate (the naive template, compiled
for real for sm_90a), the SASS and Nsight Compute parsers on recorded sample text, the clear
one-line answers when cuobjdump or ncu is missing, subsets of a suite, notes, the read-only roots,
the time bound and redaction."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from avo import jit, tools
from avo.lineage import Candidate, Lineage
from avo.suites import load_suite

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def ctx(tmp_path):
    """A step on the naive kernel: lineage with the seed v0000, the candidate a copy of it."""
    text = jit.render("naive_attention", jit.load_knobs("naive_attention", {"block_m": 128, "tile_n": 32})).read_text()
    lineage = Lineage(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", template="naive_attention", geomean=1.0), text)
    candidate = tmp_path / "run" / "candidates" / "v0001.py"
    candidate.parent.mkdir(parents=True)
    candidate.write_text(text)
    return tools.Context(candidate=candidate, lineage=lineage, parent_id="v0000", node_id="v0001",
                         project_roots=tools.project_roots(), notes_dir=tmp_path / "run" / "notes",
                         run_dir=tmp_path / "run", suite="tiny", arch="sm_90a")


def _call(ctx, name, **args):
    out = tools.call(ctx, name, args)
    return out.ok, out.text


# -- parsers on recorded text ------------------------------------------------------------------

def test_sass_parser_finds_functions_opcodes_and_the_loop():
    instrs = tools.parse_sass((DATA / "sass_sample.txt").read_text())
    assert len(instrs) == 20 and {i["function"] for i in instrs} == {"kernel_cutlass_FlashFwd_0"}
    assert instrs[0] == {"function": "kernel_cutlass_FlashFwd_0", "addr": 0, "op": "LDC",
                         "text": "LDC R1, c[0x0][0x28]"}
    assert next(i for i in instrs if i["addr"] == 0x100)["op"] == "BRA"  # the predicate @P0 is not the opcode
    mix = tools.instruction_mix(instrs)
    assert (mix["HGMMA"], mix["MUFU"], mix["BRA"]) == (3, 2, 2)
    assert tools.instruction_mix(instrs, detail=True)["MUFU.EX2"] == 2
    loops = tools.sass_loops(instrs)  # BRA 0x130 -> 0x130 is not backward; @P0 BRA 0x50 is the main loop
    assert len(loops) == 1 and (loops[0]["from"], loops[0]["to"], loops[0]["instructions"]) == ("0050", "0100", 12)
    assert loops[0]["mix"]["HGMMA"] == 3 and loops[0]["mix"]["MUFU"] == 2


def test_ncu_raw_csv_summary_reads_the_numbers_an_engineer_wants():
    kernels = tools.parse_ncu_csv((DATA / "ncu_raw_sample.csv").read_text())
    assert len(kernels) == 1
    s = tools.summarize_ncu(kernels[0])
    assert s["kernel"] == "kernel_cutlass_FlashFwd_0"
    assert s["duration_us"] == pytest.approx(1234.57)
    assert (s["tensor_pipe_pct"], s["mufu_pipe_pct"], s["fma_pipe_pct"]) == (78.45, 31.2, 18.6)
    assert (s["l2_throughput_pct"], s["smem_throughput_pct"], s["dram_throughput_pct"]) == (35.7, 41.9, 22.1)
    assert (s["achieved_occupancy_pct"], s["registers_per_thread"], s["smem_per_block_bytes"]) == (18.75, 168, 164864)
    assert list(s["top_stalls"])[:3] == ["math_pipe_throttle", "barrier", "long_scoreboard"]


def test_ptx_parser_skips_directives_and_labels():
    ptx = ".version 8.4\n.visible .entry kern(\n.param .u64 p\n)\n{\n.reg .b32 %r<4>;\n$L1:\n" \
          "\tld.global.u32 %r1, [%rd1];\n@%p1 bra $L1;\n\tex2.approx.f32 %f1, %f2;\n\tret;\n}\n"
    instrs = tools.parse_ptx(ptx)
    assert [i["op"] for i in instrs] == ["ld.global.u32", "bra", "ex2.approx.f32", "ret"]
    assert {i["function"] for i in instrs} == {"kern"}


# -- disassembly and profiling on a real compile ------------------------------------------------

def test_ptx_of_the_candidate_and_the_mix_against_its_parent(ctx):
    ok, text = _call(ctx, "ptx", grep=r"^ld\.global|^st\.global", count=5)
    assert ok, text
    listing = json.loads(text)
    assert listing["instructions"] > 0 and listing["functions"]
    assert all("ld.global" in line or "st.global" in line or line.startswith("[...")
               for line in listing["listing"].splitlines())
    unrolled = ctx.candidate.read_text().replace("range(TILE_N, unroll=1)", "range(TILE_N, unroll=2)")
    assert unrolled != ctx.candidate.read_text()
    ctx.candidate.write_text(unrolled)
    ok, text = _call(ctx, "instruction_mix", kind="ptx")
    assert ok, text
    mix = json.loads(text)
    assert (mix["a"], mix["b"]) == ("v0000", "candidate") and mix["total"]["candidate"] > mix["total"]["v0000"] > 0
    ex2 = next(row for row in mix["changed"] if row["op"] == "ex2")  # the unrolled loop body's exp2 doubles
    assert ex2["candidate"] == 2 * ex2["v0000"] and ex2["delta"] == ex2["v0000"]


def test_sass_without_cuobjdump_says_so_in_one_line(ctx, monkeypatch):
    monkeypatch.setattr(tools, "find_binary", lambda name: None)
    ok, text = _call(ctx, "sass")
    assert not ok and "no cuobjdump or nvdisasm here" in json.loads(text)["error"] and "\n" not in text


def test_sass_runs_cuobjdump_on_the_cached_cubin(ctx, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "cuobjdump"  # prints the recorded dump when given a real cubin
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = -sass ] && [ -s \"$2\" ] && exec cat {DATA / 'sass_sample.txt'}\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    ok, text = _call(ctx, "sass", grep="MUFU|HGMMA")
    assert ok, text
    assert json.loads(text)["listing"].splitlines()[0] == "00050  HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT"
    ok, text = _call(ctx, "sass", loops=True)
    assert json.loads(text)["loops"][0]["instructions"] == 12


def test_profile_without_ncu_or_gpu_says_so(ctx, monkeypatch):
    monkeypatch.setattr(tools, "find_binary", lambda name: None)
    ok, text = _call(ctx, "profile")
    assert not ok and json.loads(text)["error"].startswith("Nsight Compute (ncu) is not installed here")
    monkeypatch.setattr(tools, "find_binary", lambda name: "/usr/bin/true")
    monkeypatch.setattr(jit, "current_arch", lambda: None)
    ok, text = _call(ctx, "profile")
    assert not ok and json.loads(text)["error"] == "no sm_90a GPU here: profile runs the kernel"


# -- the candidate, notes, read-only roots -----------------------------------------------------

def test_reset_to_parent_and_notes_for_the_next_step(ctx):
    seed = ctx.candidate.read_text()
    assert _call(ctx, "edit_candidate", old="TILE_N = 32", new="TILE_N = 16")[0]
    ok, text = _call(ctx, "reset_to_parent")
    assert ok and "v0000" in text and ctx.candidate.read_text() == seed
    assert _call(ctx, "write_notes", text="TILE_N 16 spills nothing")[0]
    assert _call(ctx, "write_notes", text="next: try BLOCK_M 64")[0]
    assert (ctx.notes_dir / "v0001.md").read_text() == "TILE_N 16 spills nothing\nnext: try BLOCK_M 64\n"
    assert tools.previous_notes(ctx.notes_dir, exclude="v0002") == [("v0001", "TILE_N 16 spills nothing\n"
                                                                                "next: try BLOCK_M 64\n")]
    ok, text = _call(ctx, "read_notes", step="../../etc/passwd")
    assert not ok and ctx.refused[-1]["tool"] == "read_notes"


def test_read_project_reads_templates_and_harness_only(ctx):
    ok, text = _call(ctx, "read_project", path="")
    assert ok and "dsl_templates" in text and "avo/evaluate.py" in text
    ok, text = _call(ctx, "read_project", path="avo/evaluate.py", max_lines=5)
    assert ok and "1  " in text
    ok, text = _call(ctx, "read_project", path="dsl_templates/naive_attention/knobs.py")
    assert ok and "tile_n" in text
    for path in ("avo/agent.py", "dsl_templates/../avo/agent.py", "/etc/passwd"):
        ok, text = _call(ctx, "read_project", path=path)
        assert not ok and "refused" in text, path


def test_list_configs_and_a_subset_suite_holds_exactly_those_configs(ctx, tmp_path):
    ok, text = _call(ctx, "list_configs")
    names = [c["name"] for c in json.loads(text)["timed"]]
    assert ok and len(names) == 8
    from avo.workbench import HarnessWorkbench

    run = SimpleNamespace(config=SimpleNamespace(suite="tiny"), dir=tmp_path / "run")
    full = load_suite("tiny")
    pick = [names[1], names[6], full.correctness[2].name]
    subset = load_suite(HarnessWorkbench(run, None).subset_suite(pick))
    assert sorted(c.name for c in subset.timed) == sorted(pick[:2])
    assert [c.name for c in subset.correctness] == [pick[2]]
    assert {c.name: c for c in subset.timed + subset.correctness} == \
        {c.name: c for c in full.timed + full.correctness if c.name in pick}
    with pytest.raises(tools.ToolError, match="no config"):
        HarnessWorkbench(run, None).subset_suite(["mha99"])


def test_benchmark_on_a_subset_reports_fa4_and_cudnn_per_config(tmp_path):
    from avo.workbench import HarnessWorkbench

    seen = {}

    def evaluate(path, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(status="rejected", diagnosis="", scores={"mha4x4_s512_full": 10.0},
                               incumbent_scores={"mha4x4_s512_full": 11.0}, geomean=10.0, incumbent_geomean=11.0,
                               ratio=10 / 11, noise=0.01, baselines={"fa4": {"mha4x4_s512_full": 20.0},
                                                                     "cudnn": {"mha4x4_s512_full": 8.0}})

    cfg = SimpleNamespace(suite="tiny", arch="sm_90a", compile_archs=("sm_90a",),
                          evaluation=SimpleNamespace(timeout_s=300, seeds=1, rounds=2, baselines=("fa4", "cudnn")))
    # the incumbent was committed at 0.996 of the seed: what it is benchmarked against must clear ~0.999
    lineage = Lineage(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", suite="tiny", arch="sm_90a"), "seed")
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="committed", suite="tiny", arch="sm_90a",
                          extra={"ratio": 0.996, "judged_against": "v0000"}), "tie")
    run = SimpleNamespace(config=cfg, dir=tmp_path, compile_only=False, evaluate_fn=evaluate, lineage=lineage,
                          incumbent_source=lambda: tmp_path / "inc.py")
    out = HarnessWorkbench(run, None, deadline=time.monotonic() + 42).benchmark(tmp_path / "c.py",
                                                                                 configs=["mha4x4_s512_full"])
    assert load_suite(seen["suite"]).timed[0].name == "mha4x4_s512_full" and seen["baselines"] == ("fa4", "cudnn")
    assert seen["commit_bar"] == pytest.approx(0.995 / 0.996) and out["commit_bar"] == 0.999
    assert 40 < seen["timeout_s"] <= 42  # the step's deadline bounds the evaluation
    row = out["configs"]["mha4x4_s512_full"]
    assert (row["fa4"], row["vs_fa4"], row["cudnn"], row["vs_cudnn"], row["incumbent"]) == (20.0, 0.5, 8.0, 1.25, 11.0)
    assert "vs_incumbent" not in row  # no paired estimate in this verdict: nothing made up

    def paired(path, **kwargs):  # the same, with the judge's paired estimate per config
        v = evaluate(path, **kwargs)
        v.estimate = {"per_config": {"mha4x4_s512_full": {"ratio": 0.90912, "lo": 0.9012, "hi": 0.91777}}}
        return v

    run.evaluate_fn = paired
    row = HarnessWorkbench(run, None, deadline=time.monotonic() + 42).benchmark(
        tmp_path / "c.py", configs=["mha4x4_s512_full"])["configs"]["mha4x4_s512_full"]
    assert (row["vs_incumbent"], row["vs_incumbent_ci"]) == (0.9091, [0.9012, 0.9178])


# -- the time bound and secrets ----------------------------------------------------------------

def test_a_running_tool_is_bounded_by_the_step_deadline(ctx):
    class Slow:
        def test(self, path, **kw):
            time.sleep(5)
            return {"ok": True}

    ctx.workbench, ctx.deadline = Slow(), time.monotonic() + 0.5
    started = time.monotonic()
    ok, text = _call(ctx, "test")
    assert time.monotonic() - started < 2.0
    assert not ok and "time limit ran out while test was running" in text and ctx.ended == "budget_exhausted"


def test_secrets_are_redacted_and_kept_out_of_child_processes(ctx, monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-1234567890abcdef")
    secrets = tools.secret_values(("my-endpoint-key",))
    text = "key my-endpoint-key, token tok-1234567890abcdef, hf_abcdefghijklmnopqrstuvwx, Bearer abcdefghijklmnop1234"
    assert tools.redact(text, secrets) == "key [redacted], token [redacted], [redacted], Bearer [redacted]"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('SOME_SERVICE_TOKEN'))"],
                           env=tools.clean_env(), capture_output=True, text=True)
    assert child.stdout.strip() == "None"

    class Leaky:
        def compile(self, path):
            return {"ok": False, "error": "ptxas: cannot open /home/u/.netrc (token tok-1234567890abcdef)"}

    ctx.workbench, ctx.secrets = Leaky(), secrets
    ok, text = _call(ctx, "compile")
    assert "tok-1234567890abcdef" not in text and "[redacted]" in text


def test_arguments_a_tool_does_not_take_are_ignored_and_said_so(ctx):
    ok, text = _call(ctx, "list_lineage", node_id="v0000")  # what Qwen2.5-Coder-1.5B sent, three times in a row
    assert ok and text.startswith("[ignored argument(s) ['node_id']: list_lineage takes none]\n")
    assert json.loads(text.split("\n", 1)[1])["incumbent"] == "v0000"
    assert tools._validate(tools.REGISTRY["test"], {"configs": "[a, 'b']"}) == {"configs": ["a", "b"]}
    ok, text = _call(ctx, "read_candidate", max_lines="3", colour="red")
    assert ok and "takes ['max_lines', 'path', 'start_line']" in text and "    3  " in text and "    4  " not in text


def test_profile_runs_ncu_on_candidate_and_incumbent_and_summarizes(ctx, tmp_path, monkeypatch):
    # a stand-in ncu: refuses --metrics (as an older ncu would a name it lacks), writes the report it
    # is asked for, and imports it as the recorded raw CSV; the tool must retry and summarize both
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path / 'ncu_calls'}
case " $* " in *" --import "*) exec cat {DATA / 'ncu_raw_sample.csv'} ;; esac
case " $* " in *" --metrics "*) echo "==ERROR== Failed to find metric sm__pipe_x" >&2; exit 1 ;; esac
while [ $# -gt 0 ]; do [ "$1" = -o ] && touch "$2.ncu-rep"; shift; done
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")
    ok, text = _call(ctx, "profile", config="mha4x4_s512_full")
    assert ok, text
    out = json.loads(text)
    assert out["config"] == "mha4x4_s512_full" and set(out) == {"config", "reports", "candidate", "v0000"}
    assert out["candidate"]["tensor_pipe_pct"] == 78.45 and out["v0000"]["top_stalls"]
    calls = (tmp_path / "ncu_calls").read_text().splitlines()
    runs = [c for c in calls if "--import" not in c]
    assert len(runs) == 4 and sum("--metrics" in c for c in runs) == 2  # each version retried without
    assert all("--nvtx-include avo_profile/" in c and "avo.tool _launch" in c for c in runs)
    assert '"seqlen_q": 512' in runs[0] and runs[0].endswith(" sm_90a")
    reports = Path(out["reports"])
    assert (reports / "candidate.csv").read_text() == (DATA / "ncu_raw_sample.csv").read_text()
    assert (reports / "v0000.ncu-rep").exists()


def test_submitting_the_unchanged_parent_is_refused(ctx):
    class Harness:
        calls = 0

        def submit(self, path, rationale):
            Harness.calls += 1
            return {"status": "screened", "node_id": "v0001"}

    ctx.workbench = Harness()
    ok, text = _call(ctx, "submit", rationale="faster everywhere")  # what the 1.5B model claimed, unedited
    assert not ok and "still v0000's source" in text and Harness.calls == 0 and ctx.ended is None
    assert _call(ctx, "edit_candidate", old="TILE_N = 32", new="TILE_N = 16")[0]
    ok, text = _call(ctx, "submit", rationale="TILE_N 16")
    assert ok and Harness.calls == 1 and ctx.ended == "submitted"
