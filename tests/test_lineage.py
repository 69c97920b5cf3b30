"""Lineage store: round trip, resume, committed sources, atomic writes."""

import json

import networkx as nx
import pytest

from avo.lineage import Candidate, Lineage, LineageError


def _grow(root):
    lineage = Lineage.load(root)
    seed = lineage.add(Candidate(id="v0000", operator="seed", status="committed", template="naive_attention",
                                 knobs={"block_m": 128}, scores={"mha_s4k": 100.0}, geomean=100.0),
                       source_text="KERNEL = 'seed'\n")
    lineage.add(Candidate(id="v0001", parents=[seed.id], operator="knobs", status="failed_compile",
                          diagnosis="compile failed (x.py:12): NameError"))
    lineage.add(Candidate(id="v0002", parents=[seed.id], operator="agent", status="committed",
                          scores={"mha_s4k": 110.0}, geomean=110.0, cost={"tokens": 1234}),
                source_text="KERNEL = 'better'\n")
    lineage.add(Candidate(id="v0003", parents=["v0002", "v0000"], operator="agent", status="rejected",
                          scores={"mha_s4k": 90.0}, geomean=90.0))
    return lineage


def test_round_trip_is_identical(tmp_path):
    lineage = _grow(tmp_path)
    again = Lineage.load(tmp_path)
    assert nx.utils.graphs_equal(lineage.graph, again.graph)
    assert dict(lineage.graph.nodes(data=True)) == dict(again.graph.nodes(data=True))
    assert sorted(again.graph.edges) == [("v0000", "v0001"), ("v0000", "v0002"), ("v0000", "v0003"),
                                         ("v0002", "v0003")]
    # saving the loaded graph writes the same bytes
    before = (tmp_path / "lineage.json").read_text()
    again.save()
    assert (tmp_path / "lineage.json").read_text() == before


def test_incumbent_path_and_sources(tmp_path):
    lineage = _grow(tmp_path)
    assert lineage.best().id == "v0002"
    assert [c.id for c in lineage.committed_path()] == ["v0000", "v0002"]
    assert lineage.source("v0002") == "KERNEL = 'better'\n"
    assert (tmp_path / "sources" / "v0000.py").exists()
    assert not (tmp_path / "sources" / "v0001.py").exists()  # only committed nodes keep source
    assert [c.id for c in lineage.nodes("committed")] == ["v0000", "v0002"]


def test_resume_continues_ids_and_updates(tmp_path):
    _grow(tmp_path)
    resumed = Lineage.load(tmp_path)
    assert resumed.new_id() == "v0004"
    resumed.add(Candidate(id=resumed.new_id(), parents=["v0002"], operator="knobs", status="pending"))
    resumed.update("v0004", status="timeout", diagnosis="killed after 120 s")
    final = Lineage.load(tmp_path)
    assert len(final) == 5 and final.get("v0004").status == "timeout"
    assert final.get("v0004").diagnosis == "killed after 120 s"


def test_bad_input_is_a_clear_error(tmp_path):
    lineage = Lineage.load(tmp_path)
    with pytest.raises(LineageError, match="not one of"):
        Candidate(id="x", status="great")
    with pytest.raises(LineageError, match="not in the lineage"):
        lineage.add(Candidate(id="v1", parents=["nope"]))
    with pytest.raises(LineageError, match="needs its source"):
        lineage.add(Candidate(id="v1", status="committed"))
    (tmp_path / "lineage.json").write_text("{broken")
    with pytest.raises(LineageError, match="not valid JSON"):
        Lineage.load(tmp_path)
    (tmp_path / "lineage.json").write_text(json.dumps({"format_version": 99, "graph": {}}))
    with pytest.raises(LineageError, match="format_version 99"):
        Lineage.load(tmp_path)


def test_writes_leave_no_temp_files(tmp_path):
    _grow(tmp_path)
    leftovers = [p.name for p in tmp_path.rglob(".*") if p.is_file()]
    assert leftovers == []


def _commit(lineage, node_id, ratio, against, suite="mha", **extra):
    """A node committed at `ratio` to `against`, as avo.evolve records one (judged_against)."""
    return lineage.add(Candidate(id=node_id, parents=[against] if against else [], status="committed", suite=suite,
                                 arch="sm_90a", extra={"ratio": ratio, "judged_against": against, **extra}),
                       source_text=f"KERNEL = {node_id!r}\n")


def test_a_fresh_chain_has_the_bare_bar_and_speeds_multiply_along_commits(tmp_path):
    lineage = Lineage(tmp_path)
    assert lineage.commit_bar(None) == 0.995  # no incumbent yet
    _commit(lineage, "v0000", None, None)
    assert lineage.get("v0000").extra["speed"] == 1.0 and lineage.commit_bar("v0000") == 0.995
    _commit(lineage, "v0001", 0.996, "v0000")  # a tie within the tolerance: committed
    assert lineage.get("v0001").extra["speed"] == pytest.approx(0.996)
    assert lineage.commit_bar("v0001") == pytest.approx(0.995 / 0.996) == pytest.approx(0.999, abs=1e-4)
    _commit(lineage, "v0002", 1.002, "v0001")  # clears ~0.999: 0.998 of the seed
    assert lineage.get("v0002").extra["speed"] == pytest.approx(0.996 * 1.002)
    assert lineage.commit_bar("v0002") == pytest.approx(0.995 / (0.996 * 1.002))
    _commit(lineage, "v0003", 1.01, "v0002")  # a gain past the seed: the best so far, the bar is back at 0.995
    assert lineage.speed("v0003") == pytest.approx(0.996 * 1.002 * 1.01) and lineage.commit_bar("v0003") == 0.995
    assert Lineage.load(tmp_path).get("v0003").extra["speed"] == pytest.approx(1.00797, abs=1e-5)  # persisted
    # the bar is for the chain of one suite and arch: a gqa node of speed 1 does not raise it
    _commit(lineage, "v0004", 0.99, "v0003", suite="gqa")
    assert lineage.commit_bar("v0003") == 0.995 and lineage.commit_bar("v0004") == 0.995


def test_an_incumbent_of_another_suite_stands_where_its_source_stands_on_this_one(tmp_path):
    lineage = Lineage(tmp_path)
    _commit(lineage, "v0000", None, None)
    _commit(lineage, "v0001", 0.99, "v0000", suite="gqa")  # gqa's chain starts lower
    for node_id, suite, ratio, against in (("v0002", "mha", 1.02, "v0000"), ("v0003", "gqa", 1.0, "v0001")):
        lineage.add(Candidate(id=node_id, parents=[against], status="committed", suite=suite, arch="sm_90a",
                              source_hash="one kernel", extra={"ratio": ratio, "judged_against": against}),
                    source_text="KERNEL = 'both'\n")
    assert lineage.speed("v0003") == pytest.approx(0.99)  # its gqa chain
    # judged on mha, v0003 is v0002's kernel: the best there, so the bare bar, not 0.995 * 1.02 / 0.99
    assert lineage.commit_bar("v0003", "mha", "sm_90a") == 0.995
    assert lineage.commit_bar("v0003") == 0.995  # on its own suite, its own chain: the best of gqa
    _commit(lineage, "v0004", 1.0, "v0001", suite="gqa")  # another source on gqa: no twin on mha
    assert lineage.commit_bar("v0004", "mha", "sm_90a") == pytest.approx(0.995 * 1.02 / 0.99)


def test_older_nodes_derive_their_speed_from_what_they_were_timed_against(tmp_path):
    """Nodes recorded before `speed` was kept: ratio times the speed of extra["judged_against"] (or
    avo.eval's "timed_against"), recursively; 1.0 where nothing says what a node was judged against."""
    lineage = Lineage(tmp_path)
    for node_id, extra in (("v0000", {}), ("v0001", {"ratio": 1.02}),  # judged against what, it does not say
                           ("v0002", {"ratio": 0.997, "judged_against": "v0001"}),
                           ("v0003", {"ratio": 0.996, "timed_against": "v0002"})):
        lineage.add(Candidate(id=node_id, status="committed", suite="mha", arch="sm_90a", extra=extra), "k")
        lineage.graph.nodes[node_id]["extra"].pop("speed")  # as an older avo wrote it
    assert [lineage.speed(n) for n in ("v0000", "v0001")] == [1.0, 1.0]
    assert lineage.speed("v0003") == pytest.approx(0.997 * 0.996)
    assert lineage.commit_bar("v0003") == pytest.approx(0.995 / (0.997 * 0.996))
    with pytest.raises(LineageError, match="no node 'v9'"):
        lineage.speed("v9")
