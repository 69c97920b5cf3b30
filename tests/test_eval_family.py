"""`avo.eval --submit`: a node's family (its template) is part of its identity."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from avo import jit
from avo.eval import _record
from avo.lineage import Candidate, Lineage


def _verdict(status):
    def apply_to(node):
        node.status, node.geomean = status, 1.0
    return SimpleNamespace(status=status, ratio=1.01, apply_to=apply_to)


def _archive(tmp_path):
    lineage = Lineage.load(tmp_path / "archive")
    flash = jit.render("flash_fwd_sm90").read_text()
    lineage.add(Candidate(id="v0000", status="committed", template="flash_fwd_sm90", created=1.0), source_text=flash)
    return lineage


def test_a_naive_kernel_is_not_a_child_of_a_flash_node(tmp_path):
    lineage = _archive(tmp_path)
    naive = jit.render("naive_attention")
    first = _record(lineage, naive, _verdict("rejected"), parent="v0000")
    assert (first.template, first.parents, first.extra["timed_against"]) == ("naive_attention", [], "v0000")
    # a hand-edited copy keeps its header, hence its family, and links to its family's committed node
    edited = tmp_path / "my_kernel.py"
    edited.write_text(naive.read_text() + "\n# tuned by hand\n")
    committed = _record(lineage, edited, _verdict("committed"), parent="v0000")
    assert committed.template == "naive_attention" and committed.parents == []
    again = _record(lineage, edited, _verdict("rejected"), parent="v0000")
    assert again.parents == [committed.id] and Lineage.load(lineage.root).get(again.id).template == "naive_attention"


def test_a_flash_kernel_descends_from_the_flash_incumbent(tmp_path):
    lineage = _archive(tmp_path)
    node = _record(lineage, jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90")), _verdict("rejected"),
                   parent="v0000")
    assert node.parents == ["v0000"] and node.template == "flash_fwd_sm90" and "timed_against" not in node.extra


def test_a_named_parent_author_and_rationale_are_recorded(tmp_path):
    lineage = _archive(tmp_path)
    source = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    second = _record(lineage, source, _verdict("committed"), parent="v0000")
    # an edit of v0000 timed against the newer incumbent: its parent is what it was edited from
    node = _record(lineage, source, _verdict("rejected"), parent="v0000", incumbent=second.id,
                   author="Claude (lead engineer), by hand", rationale="3-D grid as FA4 launches it")
    saved = Lineage.load(lineage.root).get(node.id)
    assert saved.parents == ["v0000"] and saved.extra["timed_against"] == second.id
    assert saved.extra["author"] == "Claude (lead engineer), by hand"
    assert saved.rationale == "3-D grid as FA4 launches it" and saved.operator == "manual"


def test_a_verdict_written_elsewhere_is_recorded_without_running(tmp_path):
    import json

    from avo.eval import main
    from avo.evaluate import Verdict

    lineage = _archive(tmp_path)
    source = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    verdict = Verdict(status="rejected", stage="done", diagnosis="0.98x the incumbent", geomean=600.0,
                      ratio=0.98, ratio_ci=[0.97, 0.99])
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(verdict.as_dict()))
    argv = [str(source), "--archive", str(lineage.root), "--incumbent", "v0000", "--record", str(path),
            "--author", "someone", "--rationale", "why", "--suite", "mha"]
    assert main(argv) == 0  # recorded, nothing run
    node = Lineage.load(lineage.root).nodes()[-1]
    assert (node.status, node.geomean, node.parents) == ("rejected", 600.0, ["v0000"])
    assert (node.suite, node.arch) == ("mha", "sm_90a")  # what Lineage.best and avo.attention select on
    verdict.scores = {"gqa32x8_s4k_full": 600.0}  # a gqa config recorded as an mha verdict: refused
    path.write_text(json.dumps(verdict.as_dict()))
    assert main(argv) == 2
    path.write_text(json.dumps(Verdict(status="rejected", stage="done").as_dict()))
    assert node.extra["recorded_from"] == "verdict.json" and node.extra["author"] == "someone"
    path.write_text(json.dumps({"not": 1}))
    assert main(argv) == 2


def test_a_template_render_keeps_its_knob_table_and_a_hand_edit_does_not(tmp_path):
    from avo.eval import _rendered_knobs

    rendered = jit.render("flash_fwd_sm90").read_text()
    table = _rendered_knobs("flash_fwd_sm90", rendered)
    assert jit.load_table("flash_fwd_sm90", table) == jit.load_table("flash_fwd_sm90")  # the seed table
    assert _rendered_knobs("flash_fwd_sm90", rendered.replace("tile_m=128,", "tile_m=128,  # edited", 1)) == {}
    lineage = _archive(tmp_path)
    edited = tmp_path / "edited.py"
    edited.write_text(rendered + "\n# a hand edit\n")
    assert _record(lineage, edited, _verdict("rejected"), parent="v0000").knobs == {}
    assert _record(lineage, jit.render("flash_fwd_sm90"), _verdict("rejected"), parent="v0000").knobs == table


def test_a_verdict_written_elsewhere_is_recorded_against_this_lineages_commit_bar(tmp_path, capsys):
    """The incumbent v0001 was committed at 0.996 of the seed. A verdict that a GPU machine committed on
    the bare tolerance, 0.9978x [0.9952, 1.0003] vs v0001, is recorded rejected, saying why; one that
    clears 0.995 / 0.996 is recorded committed, with its speed."""
    import json

    from avo.eval import main
    from avo.evaluate import Verdict, apply_commit_rule

    lineage = _archive(tmp_path)
    lineage.update("v0000", suite="mha", arch="sm_90a")
    flash = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="committed", template="flash_fwd_sm90", suite="mha",
                          arch="sm_90a", extra={"ratio": 0.996, "judged_against": "v0000"}), flash.read_text())
    path = tmp_path / "verdict.json"
    argv = [str(flash), "--archive", str(lineage.root), "--incumbent", "v0001", "--record", str(path), "--suite", "mha"]
    recorded = []
    for lo, hi in ((0.9952, 1.0003), (0.9992, 1.0010)):
        elsewhere = Verdict("measured", "benchmark", scores={"mha16x16_s4k_full": 600.0}, estimate={
            "ratio": (lo + hi) / 2, "ratio_ci": [lo, hi], "pairs": 32, "excluded": 0})
        apply_commit_rule(elsewhere)  # as the GPU machine decided it: against 1 - COMMIT_TOLERANCE
        assert elsewhere.status == "committed"
        path.write_text(json.dumps(elsewhere.as_dict()))
        assert main(argv) == 0
        recorded.append(Lineage.load(lineage.root).nodes()[-1])
    tie, clear = recorded
    assert tie.status == "rejected" and not (lineage.root / "sources" / f"{tie.id}.py").exists()
    assert tie.diagnosis.endswith("recorded rejected: its lower bound 0.9952 is below the commit bar 0.9990 (the "
                                  "incumbent v0001 is 0.9960 of the best so far)")
    assert tie.extra["commit_bar"] == pytest.approx(0.995 / 0.996) and "speed" not in tie.extra
    assert clear.status == "committed" and clear.extra["judged_against"] == "v0001"
    assert clear.extra["speed"] == pytest.approx(0.996 * 1.0001)
    assert Lineage.load(lineage.root).best("mha", "sm_90a").id == clear.id
    assert "recorded" in capsys.readouterr().out
    # decided before an interval wholly below 1 was a loss: committed there, recorded rejected here
    older = Verdict("committed", "done", "0.9959x", scores={"mha16x16_s4k_full": 600.0}, ratio=0.9959,
                    ratio_ci=[0.9950, 0.9965])
    path.write_text(json.dumps(older.as_dict()))
    assert main([*argv[:3], "--incumbent", "v0000", *argv[5:]]) == 0  # the best so far: the bar is 0.995
    slower = Lineage.load(lineage.root).nodes()[-1]
    assert slower.status == "rejected" and slower.diagnosis.endswith(
        "recorded rejected: its upper bound 0.9965 is below 1: shown slower than v0000")


def test_submit_judges_with_the_lineages_commit_bar_for_the_incumbent(tmp_path, monkeypatch, capsys):
    from avo import eval as eval_cli
    from avo.evaluate import Verdict

    lineage = _archive(tmp_path)
    lineage.update("v0000", suite="mha", arch="sm_90a")
    flash = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="committed", template="flash_fwd_sm90", suite="mha",
                          arch="sm_90a", extra={"ratio": 0.996, "judged_against": "v0000"}), flash.read_text())
    asked = []

    def evaluate(source, incumbent=None, commit_bar=None, **_):
        asked.append((Path(incumbent).name, commit_bar))
        return Verdict("rejected", "done", "below the commit bar")

    monkeypatch.setattr(eval_cli, "evaluate", evaluate)
    argv = [str(flash), "--archive", str(lineage.root), "--suite", "mha", "--submit"]
    assert eval_cli.main(argv) == 1
    assert asked == [("v0001.py", pytest.approx(0.995 / 0.996))]
    assert "incumbent: v0001 (commit bar 0.9990: it is 0.9960 of the best so far)" in capsys.readouterr().out
    assert eval_cli.main([*argv, "--incumbent", "v0000"]) == 1  # the seed is the best so far: the bare tolerance
    assert asked[-1] == ("v0000.py", 0.995)


def test_the_best_incumbent_is_the_suites_own_newest_commit(tmp_path, monkeypatch):
    """Nodes committed on different suites carry different kernels for a suite's specs (the hdim64
    best may hold an older node's d128 kernels): --incumbent best on a suite is that suite's newest
    commit, and the archive's newest only where the suite has none."""
    from avo import eval as eval_cli
    from avo.evaluate import Verdict

    lineage = _archive(tmp_path)
    lineage.update("v0000", suite="mha", arch="sm_90a")
    flash = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    for node_id, suite in (("v0001", "mha"), ("v0002", "hdim64")):
        lineage.add(Candidate(id=node_id, parents=["v0000"], status="committed", template="flash_fwd_sm90",
                              suite=suite, arch="sm_90a", extra={"ratio": 1.01, "judged_against": "v0000"}),
                    flash.read_text())
    asked = []

    def evaluate(source, incumbent=None, commit_bar=None, **_):
        asked.append(Path(incumbent).name)
        return Verdict("rejected", "done", "below the commit bar")

    monkeypatch.setattr(eval_cli, "evaluate", evaluate)
    for suite, incumbent in (("mha", "v0001.py"), ("hdim64", "v0002.py"), ("gqa", "v0002.py")):
        eval_cli.main([str(flash), "--archive", str(lineage.root), "--suite", suite])
        assert asked[-1] == incumbent, suite


def test_a_commit_is_recorded_only_when_judged_against_a_node_of_the_lineage(tmp_path, monkeypatch, capsys):
    """Against a file or nothing, a recorded commit would start a chain of its own at speed 1.0 and
    step round the commit bar: once the arch has a commit, --submit and --record refuse both."""
    from avo import eval as eval_cli
    from avo.evaluate import Verdict

    lineage = _archive(tmp_path)
    lineage.update("v0000", suite="mha", arch="sm_90a")
    flash = jit.render("flash_fwd_sm90", jit.load_knobs("flash_fwd_sm90"))
    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, **k: Verdict("committed", "done", "no incumbent"))
    (tmp_path / "v.json").write_text("{}")
    for extra in (["--submit"], ["--record", str(tmp_path / "v.json")]):
        for incumbent in ("none", str(flash)):
            argv = [str(flash), "--archive", str(lineage.root), "--suite", "mha", "--incumbent", incumbent, *extra]
            assert eval_cli.main(argv) == 2
            assert "(v0000 is the newest commit for sm_90a): use --incumbent best" in capsys.readouterr().err
    assert len(Lineage.load(lineage.root)) == 1  # nothing recorded
    assert eval_cli.main([str(flash), "--archive", str(lineage.root), "--suite", "mha", "--incumbent", "none"]) == 0
    empty = Lineage.load(tmp_path / "fresh")  # the first commit of an arch has nothing to be judged against
    assert eval_cli.main([str(flash), "--archive", str(empty.root), "--suite", "mha", "--incumbent", "none",
                          "--submit"]) == 0
    assert Lineage.load(empty.root).best("mha", "sm_90a") is not None
