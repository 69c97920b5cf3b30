"""The evolution loop on the CPU: compile-only screening for real, and (with a stand-in for the GPU
measurements) commits, a kill -9 and a resume that loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avo.config import ConfigError, load_config
from avo.evolve import main
from avo.lineage import Lineage

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "evolve_tiny.yaml"


def _args(tmp_path, *more):
    return ["--config", str(TINY), "--set", f"run_dir={tmp_path / 'run'}", "--set",
            f"archive={tmp_path / 'archive'}", *more]


def test_compile_only_loop_screens_and_says_so(tmp_path, capsys):
    assert main(_args(tmp_path, "--candidates", "3")) == 0
    lineage = Lineage.load(tmp_path / "archive")
    nodes = lineage.nodes()
    assert [n.operator for n in nodes] == ["seed", "knobs", "knobs"]
    assert {n.status for n in nodes} == {"screened"}  # no GPU: compiled, never claimed as measured
    assert all(n.parents for n in nodes[1:]) and len({json.dumps(n.knobs, sort_keys=True) for n in nodes}) == 3
    assert all(n.extra["compile_reports"]["sm_90a"] for n in nodes)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["mode"].startswith("compile-only screening")
    assert any(e["event"] == "note" and "knob operator" in e["message"] for e in events)
    assert events[-1]["event"] == "stop" and "candidate budget" in events[-1]["reason"]
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.budget.candidates == 3 and saved.suite == "tiny"  # the resolved config, overrides applied
    assert "compile-only screening" in capsys.readouterr().out


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(_args(tmp_path, "--set", "suite=nope")) == 2
    assert "no suite 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TINY, ["budget.candidatez=3"])
    with pytest.raises(ConfigError, match="needs endpoint.base_url"):
        load_config(TINY, ["operator=agent"])
    assert main(["--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _fake_run(tmp_path, *more):
    env = dict(os.environ, AVO_FAKE_EVAL_SECONDS="0.4")
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "evolve_fake.py"), *more], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_9_then_resume_loses_no_committed_node(tmp_path):
    proc = _fake_run(tmp_path, *_args(tmp_path, "--candidates", "40"))
    archive = tmp_path / "archive"
    deadline = time.monotonic() + 240
    committed_before: dict = {}
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            lineage = Lineage.load(archive)
        except Exception:  # a reader never sees a half-written file, but the dir may not exist yet
            continue
        committed_before = {n.id: n.geomean for n in lineage.nodes("committed")}
        if len(committed_before) >= 3 and lineage.nodes("pending"):  # killed mid-evaluation
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(committed_before) >= 3 and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    killed = Lineage.load(archive)
    committed_at_kill = {n.id for n in killed.nodes("committed")}
    assert set(committed_before) <= committed_at_kill
    pending = [n.id for n in killed.nodes("pending")]

    resumed = _fake_run(tmp_path, "--resume", str(tmp_path / "run"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    final = Lineage.load(archive)
    for node_id in committed_at_kill:
        assert final.get(node_id).status == "committed"
        assert (archive / "sources" / f"{node_id}.py").exists()
    for node_id in pending:  # what was being evaluated at the kill is recorded, not lost
        assert final.get(node_id).status == "crashed" and "while this was evaluated" in final.get(node_id).diagnosis
    # the naive template's space has 3 x 3 assignments: the resumed run tries the rest, none twice
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "knob space exhausted" in state["stop_reason"]
    assert len(final) == 9 and len({json.dumps(n.knobs, sort_keys=True) for n in final.nodes()}) == 9
    assert "recovered" in out or pending == []


def test_knob_proposals_stream_with_lookahead_candidates_per_gpu(tmp_path, monkeypatch):
    """On this host's GPUs the knob operator streams: per GPU, 1 + evaluation.lookahead proposals are
    in flight (the ones waiting compile on the CPU meanwhile), each judged against the incumbent of its
    judge, never two on one GPU at once, and the candidate budget is spent exactly."""
    import threading

    from avo import jit
    from avo.cluster import gpu_overlaps, read_intervals
    from tests.evolve_fake import fake_evaluate

    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")  # a GPU as far as the run can tell
    calls, lock = [], threading.Lock()

    def recording(source, gpu=None, incumbent=None, **kwargs):
        pending = len(Lineage.load(tmp_path / "archive").nodes("pending"))  # reserved, not yet recorded
        with lock:
            calls.append((gpu, pending))
        return fake_evaluate(source, incumbent=incumbent, **kwargs)

    monkeypatch.setenv("AVO_FAKE_EVAL_SECONDS", "0.1")
    assert main(_args(tmp_path, "--candidates", "9", "--set", "evaluation.gpus=[0, 1]", "--set",
                      "evaluation.lookahead=1"), evaluate_fn=recording) == 0
    assert calls[0][1] == 1  # the seed, alone
    assert sorted({g for g, _ in calls[1:]}) == [0, 1]
    assert max(p for _, p in calls[1:]) == 4  # 2 GPUs x (1 judged + 1 ahead), never more
    assert len(Lineage.load(tmp_path / "archive")) == 9
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    assert gpu_overlaps(intervals) == [] and len([r for r in intervals if r["gpu"] is not None]) >= 8
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    recorded = [e for e in events if e["event"] == "candidate"]
    assert len(recorded) == 9 and events[-1]["event"] == "stop" and "candidate budget" in events[-1]["reason"]


def _session_that_defers_two(tmp_path, monkeypatch):
    """A first session of a 9-candidate run that stops with two candidates deferred: one GPU, three
    candidates in flight on it (lookahead 2), and the stop (2 s) inside the first judge after the
    seed's (3 s), while the other two wait for the GPU."""
    from avo import jit
    from tests.evolve_fake import fake_evaluate

    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")
    monkeypatch.setenv("AVO_FAKE_EVAL_SECONDS", "0.05")
    calls = []

    def slow_second_judge(source, **kwargs):
        calls.append(source)
        if len(calls) == 2:
            time.sleep(3.0)
        return fake_evaluate(source, **kwargs)

    assert main(_args(tmp_path, "--candidates", "9", "--set", "evaluation.lookahead=2",
                      "--stop-after", "2"), evaluate_fn=slow_second_judge) == 0


def test_stop_after_ends_the_session_with_nothing_cut_off_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    """--stop-after: past it nothing new is proposed, the judge running finishes, and the candidates
    still waiting for the GPU are deferred, not judged (a judge started then would run past the
    job's limit: on the H100 on 2026-11-23 a paper judge took 105 s, two queued behind it were cut
    off and recorded crashed). --resume judges the deferred ones first, then spends the rest."""
    from tests.evolve_fake import fake_evaluate

    _session_that_defers_two(tmp_path, monkeypatch)
    first = Lineage.load(tmp_path / "archive")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert "--stop-after 2 s" in state["stop_reason"] and "--resume" in state["stop_reason"]
    assert not first.nodes("crashed")
    deferred = first.nodes("pending")
    assert len(deferred) == 2 and all(n.extra.get("deferred") and "--resume judges it first" in n.diagnosis
                                      for n in deferred)
    judged = [n for n in first.nodes() if n.status != "pending"]
    assert state["candidates"] == len(judged) == 2
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    started = [e["id"] for e in events if e["event"] == "stage" and e["stage"] == "judge"]
    assert sorted(started) == sorted(n.id for n in judged)  # a deferred node never touched the GPU
    assert {e["id"] for e in events if e["event"] == "deferred"} == {n.id for n in deferred}

    assert main(["--resume", str(tmp_path / "run")], evaluate_fn=fake_evaluate) == 0
    final = Lineage.load(tmp_path / "archive")
    assert len(final) == 9 and not final.nodes("crashed") and not final.nodes("pending")
    assert all(final.get(n.id).status in ("committed", "rejected") and "deferred" not in final.get(n.id).extra
               for n in deferred)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    note = next(e["message"] for e in events if e["event"] == "note" and "deferred" in e.get("message", ""))
    assert all(n.id in note for n in deferred)
    assert "candidate budget" in json.loads((tmp_path / "run" / "state.json").read_text())["stop_reason"]
    assert main(_args(tmp_path, "--stop-after", "0")) == 2
    assert "--stop-after must be a positive number" in capsys.readouterr().err


def test_a_deferred_candidate_edited_between_sessions_is_not_judged(tmp_path, monkeypatch):
    """Zoo, for the deferral: a candidate reserved and deferred, then its source file rewritten
    before the next session (a faster kernel slipped in under a knob proposal), or deleted. The
    resumed run judges neither: each is recorded crashed with the cause; the untouched ones are
    judged as usual."""
    from tests.evolve_fake import fake_evaluate

    _session_that_defers_two(tmp_path, monkeypatch)
    edited, deleted = Lineage.load(tmp_path / "archive").nodes("pending")
    Path(edited.source_path).write_text(Path(edited.source_path).read_text() + "\n# faster now\n")
    Path(deleted.source_path).unlink()
    judged = []

    def recording(source, **kwargs):
        judged.append(Path(source).stem)
        return fake_evaluate(source, **kwargs)

    assert main(["--resume", str(tmp_path / "run")], evaluate_fn=recording) == 0
    final = Lineage.load(tmp_path / "archive")
    assert final.get(edited.id).status == "crashed" and "source changed after it was reserved" in \
        final.get(edited.id).diagnosis
    assert final.get(deleted.id).status == "crashed" and "source is gone" in final.get(deleted.id).diagnosis
    assert edited.id not in judged and deleted.id not in judged
    assert len(final) == 9 and not final.nodes("pending")
