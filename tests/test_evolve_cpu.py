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
