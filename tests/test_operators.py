"""The knob operator over per-spec knob tables (issue 13): it proposes rows for classes of the
suite's specs, never proposes what gives every spec the same knobs as a node already in the
lineage, reads old nodes that recorded one flat assignment, and still searches flat templates."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from avo import jit, viz
from avo.lineage import Candidate, Lineage
from avo.operators import KnobOperator, spec_classes
from avo.spec import AttentionSpec
from avo.suites import load_suite

FAMILY = "flash_fwd_sm90"
K = jit.knob_space(FAMILY)
PAPER = load_suite("paper").specs
# archive/lineage.json's v0000: the seed as recorded before tables (the MHA spec's defaults, flat)
FLAT_SEED = dataclasses.asdict(K.Knobs(head_swizzle=False))


def _lineage(tmp_path, *knobs_of_nodes, status="committed") -> Lineage:
    lineage = Lineage.load(tmp_path)
    for i, knobs in enumerate(knobs_of_nodes):
        lineage.add(Candidate(id=f"v{i:04d}", parents=[f"v{i - 1:04d}"] if i else [], operator="knobs" if i else "seed",
                              status=status, template=FAMILY, knobs=knobs, geomean=600.0 + i),
                    source_text="KERNEL = None\n" if status == "committed" else None)
    return lineage


def _record(lineage: Lineage, proposal, status="screened") -> Candidate:
    """As avo.evolve records a knob proposal: dataclasses.asdict of the proposal's knobs."""
    return lineage.add(Candidate(id=lineage.new_id(), parents=proposal.parents, operator="knobs", status=status,
                                 template=FAMILY, knobs=dataclasses.asdict(proposal.knobs),
                                 rationale=proposal.rationale),
                       source_text="KERNEL = None\n" if status == "committed" else None)


def _per_spec(table, specs=PAPER):
    return [table.for_spec(s) for s in specs]


def test_spec_classes_of_the_paper_suite():
    classes = spec_classes(PAPER)
    assert all(c["head_dim"] == 128 for c in classes)  # rows learned on d128 stay on d128
    assert {"head_dim": 128, "causal": False} in classes and {"head_dim": 128, "qhead_per_kvhead": 8} in classes
    assert {"head_dim": 128, "qhead_per_kvhead": (4, 8)} in classes  # GQA as one class
    assert {"head_dim": 128, "causal": True, "qhead_per_kvhead": (4, 8)} in classes
    assert {"head_dim": 128} not in classes  # the whole suite: that is the default row
    assert len(classes) == 2 + 4 + 8
    several = spec_classes(load_suite("hdim64").specs + load_suite("hdim256").specs)
    assert {"head_dim": 64} in several and {"head_dim": 256, "causal": True} in several
    assert spec_classes(load_suite("mha_full").specs) == []  # one spec: nothing to tell apart


def test_a_row_mutation_changes_one_class_of_specs_only(tmp_path):
    lineage = _lineage(tmp_path, K.SEED_TABLE.as_dict())
    op = KnobOperator(FAMILY, PAPER, random.Random(3), crossover_rate=0.0, row_rate=1.0)
    rows_seen = set()
    for _ in range(6):
        proposal = op.propose(lineage, "v0000")
        table = proposal.knobs
        assert isinstance(table, K.KnobTable) and proposal.parents == ["v0000"]
        assert table.default == K.SEED_TABLE.default
        # one row changed: a new one at the end, or the seed's row of the same match in its place
        match, overrides = next(row for row in table.rows if row not in K.SEED_TABLE.rows)
        assert [r for r in table.rows if r[0] != match] == [r for r in K.SEED_TABLE.rows if r[0] != match]
        assert match in spec_classes(PAPER)
        changed = [s for s in PAPER if table.for_spec(s) != K.SEED_TABLE.for_spec(s)]
        hit = [s for s in PAPER if all(getattr(s, k) in (v if isinstance(v, tuple) else (v,))
                                       for k, v in match.items())]
        assert changed and set(changed) <= set(hit), (match, overrides)  # a spec may already have had it
        assert proposal.rationale.startswith("mutation of v0000: row dict(head_dim=128")
        rows_seen.add(json.dumps(match, sort_keys=True))
        _record(lineage, proposal)
    assert len(rows_seen) >= 3


def test_the_default_row_mutation_keeps_the_rows(tmp_path):
    lineage = _lineage(tmp_path, K.SEED_TABLE.as_dict())
    op = KnobOperator(FAMILY, PAPER, random.Random(5), crossover_rate=0.0, row_rate=0.0)
    proposal = op.propose(lineage, "v0000")
    assert proposal.knobs.rows == K.SEED_TABLE.rows and proposal.knobs.default != K.SEED_TABLE.default
    assert proposal.rationale.startswith("mutation of v0000: default row: ")
    # a row changed on a parent is kept by its child's default mutation
    parent = K.SEED_TABLE.with_row({"head_dim": 128, "causal": False}, {"tile_n": 176})
    lineage = _lineage(tmp_path / "b", parent.as_dict())
    child = KnobOperator(FAMILY, PAPER, random.Random(5), crossover_rate=0.0, row_rate=0.0).propose(lineage, "v0000")
    assert child.knobs.row({"causal": False, "head_dim": 128}) == {"tile_n": 176}


def test_nothing_already_in_the_lineage_is_proposed_again(tmp_path):
    lineage = _lineage(tmp_path, K.SEED_TABLE.as_dict())
    op = KnobOperator(FAMILY, PAPER, random.Random(11), crossover_rate=0.3)
    seen = {json.dumps([dataclasses.asdict(k) for k in _per_spec(K.SEED_TABLE)], sort_keys=True)}
    for _ in range(12):
        proposal = op.propose(lineage, lineage.best().id)
        key = json.dumps([dataclasses.asdict(k) for k in _per_spec(proposal.knobs)], sort_keys=True)
        assert key not in seen
        seen.add(key)
        _record(lineage, proposal, status="committed" if len(seen) % 3 == 0 else "screened")
    # a table spelled differently that gives every paper spec the same kernel counts as tried: a d64
    # row changes nothing on the paper suite; nor does pack_gqa for MHA (the kernel packs GQA only)
    fresh = _lineage(tmp_path / "b", K.SEED_TABLE.as_dict())
    for same in (K.SEED_TABLE.with_row({"head_dim": 64, "causal": False}, {"tile_n": 96}),
                 K.SEED_TABLE.with_row({"head_dim": 128, "qhead_per_kvhead": 1}, {"pack_gqa": True})):
        op._mutate = lambda knobs, same=same: (same, "the same kernels")
        assert op.propose(fresh, "v0000") is None


def test_old_flat_nodes_load_and_are_parents(tmp_path):
    _lineage(tmp_path, FLAT_SEED)
    again = Lineage.load(tmp_path)
    assert again.get("v0000").knobs == FLAT_SEED
    op = KnobOperator(FAMILY, PAPER, random.Random(2), crossover_rate=0.0, row_rate=1.0)
    proposal = op.propose(again, "v0000")
    # the flat node is a table with no rows: its child is that one assignment plus one row
    assert proposal.knobs.default == K.Knobs(head_swizzle=False) and len(proposal.knobs.rows) == 1
    # a table node next to a flat one, through JSON and back (tuples become lists and return)
    node = _record(again, proposal, status="committed")
    reloaded = Lineage.load(tmp_path)
    assert jit.load_table(FAMILY, reloaded.get(node.id).knobs) == proposal.knobs
    assert isinstance(reloaded.get(node.id).knobs["rows"][0][0], dict)
    shown = viz.table(reloaded)
    assert "v0000" in shown and node.id in shown
    # the flat seed is tried: the table that gives every spec its knobs is never proposed
    flat_as_table = K.KnobTable(K.Knobs(head_swizzle=False), [({"causal": True}, {"head_swizzle": False})])
    op._mutate = lambda knobs: (flat_as_table, "the seed again")
    assert KnobOperator.propose(op, Lineage.load(tmp_path), "v0000") is None


def test_mutation_leaves_the_knobs_measured_and_rejected_alone():
    op = KnobOperator(FAMILY, PAPER, random.Random(0))
    changed = set()
    for _ in range(400):
        changed |= set(op._new_values(K.SEED_TABLE.default))
    assert K.NOT_SEARCHED and not changed & K.NOT_SEARCHED
    assert changed == {k for k, v in K.SPACE.items() if len(v) > 1} - K.NOT_SEARCHED


def test_crossover_takes_rows_from_either_parent(tmp_path):
    row = {"head_dim": 128, "causal": False, "qhead_per_kvhead": 1}  # a row the seed table lacks
    a = K.SEED_TABLE.with_row(row, {"tile_n": 176})
    b = K.SEED_TABLE.with_default(mma_regs=232).with_row(row, {"tile_n": 192})
    b = b.with_row({"head_dim": 128, "qhead_per_kvhead": (4, 8)}, {"num_stages": 3})
    op = KnobOperator(FAMILY, PAPER, random.Random(0))
    children = [op._crossover(a, b) for _ in range(40)]
    for child in children:
        assert child.rows[:len(K.SEED_TABLE.rows)] == K.SEED_TABLE.rows
        assert child.row(row) in ({"tile_n": 176}, {"tile_n": 192})
        assert child.default.mma_regs in (240, 232)
    assert {c.row({"head_dim": 128, "qhead_per_kvhead": (4, 8)}).get("num_stages") for c in children} == {3, None}


def test_can_implement_screens_every_spec(tmp_path):
    """A row that one spec of the suite cannot take is skipped with its reason, never proposed."""
    lineage = _lineage(tmp_path, K.SEED_TABLE.as_dict())
    specs = load_suite("hdim256").specs
    op = KnobOperator(FAMILY, specs, random.Random(0), crossover_rate=0.0)
    bad = K.SEED_TABLE.with_row({"head_dim": 256, "causal": True}, {"tile_n": 176})
    good = K.SEED_TABLE.with_row({"head_dim": 256, "causal": True}, {"tile_n": 64})
    queue = [(bad, "too wide"), (good, "narrower")]
    op._mutate = lambda knobs: queue.pop(0)
    proposal = op.propose(lineage, "v0000")
    assert proposal.knobs == good
    assert len(proposal.skipped) == 1 and "bf16_d256_causal_g1: accumulators" in proposal.skipped[0]


def test_a_flat_template_still_gets_flat_proposals(tmp_path):
    lineage = Lineage.load(tmp_path)
    lineage.add(Candidate(id="v0000", operator="seed", status="screened", template="naive_attention",
                          knobs={"block_m": 128, "tile_n": 32}))
    op = KnobOperator("naive_attention", load_suite("tiny").specs, random.Random(0))
    keys = {json.dumps({"block_m": 128, "tile_n": 32})}
    for _ in range(8):
        proposal = op.propose(lineage, None)
        knobs = dataclasses.asdict(proposal.knobs)
        assert set(knobs) == {"block_m", "tile_n"} and json.dumps(knobs) not in keys
        keys.add(json.dumps(knobs))
        lineage.add(Candidate(id=lineage.new_id(), parents=proposal.parents, operator="knobs", status="screened",
                              template="naive_attention", knobs=knobs))
    assert op.propose(lineage, None) is None  # 3 x 3 assignments, all tried


def test_the_seed_of_a_run_is_the_table():
    assert jit.seed_knobs(FAMILY) == K.SEED_TABLE
    table = jit.seed_knobs(FAMILY, {"mma_regs": 216}, spec=PAPER[0])
    assert table.rows == K.SEED_TABLE.rows and table.default.mma_regs == 216
    assert table.for_spec(AttentionSpec("bf16", 64, True, 4)).mma_regs == 160  # the d64 row still wins
    with pytest.raises(ValueError, match="mma_regs=100 not in"):
        jit.seed_knobs(FAMILY, {"mma_regs": 100})
    assert jit.seed_knobs("naive_attention", {"tile_n": 16}) == jit.load_knobs("naive_attention", {"tile_n": 16})
