"""The README's main command on a machine without the run's GPU: it keeps its own archive (the
tracked archive/ stays as shipped), says so, and says how long the rest would take."""

import dataclasses
import json
from pathlib import Path

import pytest

from avo import jit
from avo.config import load_config
from avo.evaluate import Verdict
from avo.evolve import _own_archive, _skip_reason, main
from avo.lineage import Lineage

REPO = Path(__file__).resolve().parent.parent
MHA = REPO / "configs" / "evolve_mha_sm90.yaml"


def _screen(source, suite, archs, incumbent=None, **_):
    return Verdict("screened", "compile", "compiled only (test stand-in)")


@pytest.mark.skipif(jit.current_arch() == "sm_90a", reason="on an sm_90a GPU the run measures")
def test_a_cpu_run_keeps_its_own_archive_and_says_how_long(tmp_path, capsys):
    tracked = REPO / "archive" / "lineage.json"
    before = tracked.read_bytes()
    assert main(["--config", str(MHA), "--set", f"run_dir={tmp_path / 'run'}", "--candidates", "2"],
                evaluate_fn=_screen) == 0
    assert tracked.read_bytes() == before
    own = Lineage.load(tmp_path / "run" / "archive")
    assert [n.status for n in own.nodes()] == ["screened", "screened"]
    assert load_config(tmp_path / "run" / "config.yaml").archive == str(tmp_path / "run" / "archive")
    out = capsys.readouterr().out
    assert (f"avo.evolve: no sm_90a GPU here (no GPU): candidates are compiled only (screened), nothing is "
            f"measured or committed; the lineage goes to {tmp_path / 'run' / 'archive'}, not the tracked "
            "archive/ (--set archive=DIR to choose)") in out
    events = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    notes = [json.loads(line).get("message", "") for line in events]
    assert any(m.startswith("compile-only: each candidate compiles") for m in notes)
    assert any(m.startswith("about ") and "s per candidate here; the 1 left in budget.candidates" in m for m in notes)


def test_only_the_tracked_archive_is_swapped_and_only_without_the_gpu(monkeypatch):
    config = load_config(MHA, ["run_dir=runs/x"])
    monkeypatch.setattr(jit, "current_arch", lambda: None)
    swapped, note = _own_archive(config, [])
    assert swapped.archive == "runs/x/archive" and note
    assert _own_archive(config, ["archive=archive"]) == (config, None)  # named on the command line: kept
    elsewhere = dataclasses.replace(config, archive="/tmp/mine")
    assert _own_archive(elsewhere, []) == (elsewhere, None)
    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")
    assert _own_archive(config, []) == (config, None)


def test_a_skipped_assignment_logs_its_reason_not_its_knobs():
    text = '{"num_stages": 3, "tile_m": 192}: bf16_d128_full_g1: shared memory 246784 B > 232448 B'
    assert _skip_reason(text) == {"reason": "bf16_d128_full_g1: shared memory 246784 B > 232448 B",
                                  "knobs": {"num_stages": 3, "tile_m": 192}}
    assert _skip_reason("no knobs here")["reason"] == "no knobs here"


def test_the_log_line_shows_a_dash_for_no_geomean(tmp_path):
    from avo.progress import Progress

    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    line = progress._line("candidate", {"id": "v0001", "operator": "knobs", "status": "screened", "geomean": 0.0})
    assert "geomean       -" in line and "0.0" not in line
    line = progress._line("skipped", {"reason": "tile too big", "knobs": {"tile_m": 192}})
    assert line.endswith("skipped: reason=tile too big")


def _speed_judge(calls: list, hooks: dict | None = None):
    """A stand-in for evaluate() on a GPU: a candidate's speed is written in its text (`# speed: 996`),
    its paired ratio to the incumbent is speed / speed with a +-0.0025 interval, and the real commit
    rule (avo.evaluate.apply_commit_rule) decides with the commit_bar the run passes. hooks[file
    name] runs before the verdict of that file's first judge."""
    import re

    from avo.evaluate import apply_commit_rule

    def speed(path):
        return float(re.search(r"# speed: (\d+)", Path(path).read_text()).group(1))

    def evaluate(source, incumbent=None, commit_bar=None, **_):
        calls.append({"source": Path(source).name, "incumbent": Path(incumbent).name if incumbent else None,
                      "commit_bar": commit_bar})
        if hooks and Path(source).name in hooks:
            hooks.pop(Path(source).name)()
        verdict = Verdict("measured", "benchmark", scores={"only": speed(source)})
        if incumbent:
            ratio = speed(source) / speed(incumbent)
            verdict.incumbent_scores = {"only": speed(incumbent)}
            verdict.estimate = {"ratio": ratio, "ratio_ci": [ratio - 0.0025, ratio + 0.0025], "pairs": 16,
                                "excluded": 0}
        apply_commit_rule(verdict, commit_bar)
        return verdict

    return evaluate


def _measuring_run(tmp_path, monkeypatch, evaluate_fn):
    from avo.evolve import Run

    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")  # a GPU as far as the run can tell
    config = load_config(REPO / "configs" / "evolve_tiny.yaml",
                         [f"run_dir={tmp_path / 'run'}", f"archive={tmp_path / 'archive'}"])
    return Run(config, evaluate_fn=evaluate_fn)


def _submit(run, speed: int):
    """A candidate of that speed from the incumbent, judged and recorded as a step's submit is."""
    best = run.lineage.best(run.config.suite, run.config.arch)
    node = run.reserve("agent", [best.id] if best else [], f"KERNEL = None\n# speed: {speed}\n")
    return run.judge(node), run.lineage.get(node.id)


def test_ties_within_the_tolerance_do_not_add_up_along_commits(tmp_path, monkeypatch):
    """A 0.998x tie ([0.9955, 1.0005]) commits once; a second 0.998x tie against it would be 0.996 of the
    best so far: against the bar 0.995 / 0.998 its interval stays open, and it is rejected, the diagnosis
    saying why; a gain past the best so far puts the bar back at 0.995."""
    calls: list = []
    run = _measuring_run(tmp_path, monkeypatch, _speed_judge(calls))
    statuses = []
    for speed in (1000, 998, 996, 1000, 998):
        verdict, node = _submit(run, speed)
        statuses.append(verdict.status)
        if speed == 996:
            rejected = node
    assert statuses == ["committed", "committed", "rejected", "committed", "committed"]
    assert [c["commit_bar"] for c in calls] == pytest.approx([0.995, 0.995, 0.995 / 0.998, 0.995 / 0.998, 0.995])
    assert "lower bound below the commit bar 0.9970: the incumbent is 0.9980 of the best so far" in rejected.diagnosis
    assert rejected.extra["commit_bar"] == pytest.approx(0.99699, abs=1e-5)
    speeds = [c.extra["speed"] for c in sorted(run.lineage.nodes("committed"), key=lambda c: c.committed_at)]
    assert speeds == pytest.approx([1.0, 0.998, 0.998 * 1000 / 998, 0.998])  # v0003 regained the seed's speed


def test_a_commit_race_is_judged_again_with_the_new_incumbents_bar(tmp_path, monkeypatch):
    """While v0002 is judged against the seed, a step on another GPU commits v0001 at 0.998: v0002 is
    judged again against v0001, with v0001's bar (0.995 / 0.998), not the bare tolerance."""
    calls: list = []
    hooks: dict = {}
    judge = _speed_judge(calls, hooks)
    run = _measuring_run(tmp_path, monkeypatch, judge)
    _submit(run, 1000)
    racer = run.reserve("agent", ["v0000"], "KERNEL = None\n# speed: 998\n")
    seed = run.incumbent_source()

    def another_gpu_commits():  # what Run.judge does for the racer on its own GPU
        verdict = judge(racer.source_path, incumbent=seed, commit_bar=run.lineage.commit_bar("v0000"))
        racer.extra["judged_against"] = "v0000"
        run.record(racer, verdict, Path(racer.source_path).read_text())

    node = run.reserve("agent", ["v0000"], "KERNEL = None\n# speed: 1000\n")
    hooks[Path(node.source_path).name] = another_gpu_commits
    verdict = run.judge(node)
    assert [(c["source"], c["incumbent"], round(c["commit_bar"], 5)) for c in calls[1:]] == [
        ("v0002.py", "v0000.py", 0.995), ("v0001.py", "v0000.py", 0.995), ("v0002.py", "v0001.py", 0.99699)]
    assert run.lineage.get("v0001").status == "committed"
    assert verdict.status == "committed" and run.lineage.get("v0002").extra["rejudged"] == ["v0000"]
    assert run.lineage.get("v0002").extra["speed"] == pytest.approx(1.0)
