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
