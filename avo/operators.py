"""The offline variation operator: search a template's declared knob space, no model needed.

New assignments come from the committed parents (screened ones when nothing could be measured):
mutation of one or two knobs of a parent picked by tournament (the incumbent half of the time), or
uniform crossover of two parents. For a template whose source carries a per-spec knob table
(flash_fwd_sm90: a default row and override rows matched on spec fields), a mutation changes either
the default row or, half of the time, the row of one class of the suite's specs (say
`dict(head_dim=128, causal=False)`), adding that row or changing it. An assignment is what it gives
each spec of the suite: one that gives every spec the same knobs as a node already in the lineage
is never proposed again (old nodes with one flat assignment included), and one the kernel's own
`can_implement` rejects for any spec is skipped before anything compiles.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import dataclass

from avo import jit

__all__ = ["KnobOperator", "KnobProposal", "spec_classes"]


@dataclass
class KnobProposal:
    knobs: object  # the template's Knobs, or its KnobTable when the template has one
    parents: list[str]
    rationale: str
    skipped: list[str]  # assignments can_implement rejected on the way, with the reason


class KnobOperator:
    def __init__(self, template: str, specs, rng: random.Random, crossover_rate: float = 0.3, tries: int = 200,
                 row_rate: float = 0.5):
        self.template, self.specs, self.rng = template, list(specs), rng
        self.space = jit.knob_space(template)
        self.crossover_rate, self.tries = crossover_rate, tries
        self.tables = hasattr(self.space, "KnobTable")
        self.classes = spec_classes(self.specs) if self.tables else []
        self.row_rate = row_rate if self.classes else 0.0

    def propose(self, lineage, incumbent_id: str | None) -> KnobProposal | None:
        """An untried, implementable assignment, or None when none is found (space exhausted)."""
        nodes = [n for n in lineage.nodes() if n.template == self.template]
        loaded = {}
        for n in nodes:
            try:
                loaded[n.id] = self._load(n.knobs)
            except ValueError:  # recorded under an older knob space
                pass
        tried = {self._key(k) for k in loaded.values()}
        pool = ([n for n in nodes if n.status == "committed" and n.id in loaded]
                or [n for n in nodes if n.status == "screened" and n.id in loaded])
        if not pool:
            return None
        by_id = {n.id: n for n in pool}
        skipped = []
        for _ in range(self.tries):
            try:
                if len(pool) >= 2 and self.rng.random() < self.crossover_rate:
                    a, b = self._tournament(pool), self._tournament(pool)
                    if a.id == b.id:
                        continue
                    knobs = self._crossover(loaded[a.id], loaded[b.id])
                    parents, why = [a.id, b.id], f"crossover of {a.id} and {b.id}"
                else:
                    parent = by_id.get(incumbent_id) if incumbent_id in by_id and self.rng.random() < 0.5 else None
                    parent = parent or self._tournament(pool)
                    knobs, changed = self._mutate(loaded[parent.id])
                    parents, why = [parent.id], f"mutation of {parent.id}: {changed}"
            except ValueError:  # a combination the knob space refuses
                continue
            key = self._key(knobs)
            if key in tried:
                continue
            tried.add(key)
            ok, reason = jit.implementable(jit.render(self.template, knobs), self.specs)
            if not ok:
                skipped.append(f"{self._label(knobs)}: {reason}")
                continue
            return KnobProposal(knobs, parents, why, skipped)
        return None

    # -- assignments ----------------------------------------------------------------------------
    def _load(self, values: dict):
        """A node's recorded knobs as the template's KnobTable (a flat dict: no rows) or Knobs."""
        return jit.load_table(self.template, values) if self.tables else jit.load_knobs(self.template, values)

    def _key(self, knobs) -> str:
        """What the assignment gives each spec of the suite, as the kernel acts on it: two tables
        equal on the suite's specs are the same candidate, whatever rows they spell it with."""
        effective = getattr(self.space, "effective", lambda k, spec: k)
        per_spec = [effective(knobs.for_spec(s), s) for s in self.specs] if self.tables else [knobs]
        return json.dumps([dataclasses.asdict(k) for k in per_spec], sort_keys=True)

    def _label(self, knobs) -> str:
        return knobs.key() if self.tables else json.dumps(dataclasses.asdict(knobs), sort_keys=True)

    def _tournament(self, pool, size: int = 3):
        return max(self.rng.sample(pool, min(size, len(pool))), key=lambda n: n.geomean)

    def _new_values(self, current) -> dict:
        """One or two knobs given another value of SPACE than they have in `current`. Knobs the
        template lists in NOT_SEARCHED (measured and rejected where they were made for) keep theirs."""
        skip = getattr(self.space, "NOT_SEARCHED", frozenset())
        names = [k for k, allowed in self.space.SPACE.items() if len(allowed) > 1 and k not in skip]
        picked = self.rng.sample(names, 2 if self.rng.random() < 0.3 else 1)
        return {k: self.rng.choice([v for v in self.space.SPACE[k] if v != getattr(current, k)]) for k in picked}

    def _mutate(self, knobs) -> tuple[object, str]:
        if not self.tables:
            changed = self._new_values(knobs)
            return dataclasses.replace(knobs, **changed), _changes(knobs, changed)
        if self.rng.random() < self.row_rate:
            match = self.rng.choice(self.classes)
            current = knobs.for_spec(next(s for s in self.specs if _matches(match, s)))
            changed = self._new_values(current)
            table = knobs.with_row(match, {**knobs.row(match), **changed})
            return table, f"row {_literal(match)}: {_changes(current, changed)}"
        changed = self._new_values(knobs.default)
        return knobs.with_default(**changed), f"default row: {_changes(knobs.default, changed)}"

    def _crossover(self, a, b):
        """Uniform crossover: each default knob from either parent; each row match from either
        parent that has it (a row only one parent has is kept half of the time)."""
        pick = lambda x, y: x if self.rng.random() < 0.5 else y
        if not self.tables:
            return type(a)(**{f: getattr(pick(a, b), f) for f in _names(a)})
        default = type(a.default)(**{f: getattr(pick(a.default, b.default), f) for f in _names(a.default)})
        rows_a, rows_b = dict(_row_items(a)), dict(_row_items(b))
        rows = []
        for key in dict.fromkeys([*rows_a, *rows_b]):
            if key in rows_a and key in rows_b:
                rows.append(pick(rows_a[key], rows_b[key]))
            elif self.rng.random() < 0.5:
                rows.append(rows_a.get(key) or rows_b[key])
        return type(a)(default, rows)


def spec_classes(specs) -> list[dict]:
    """The matches a per-spec row may take for a suite: the head_dim always (tiles follow it),
    with any of the other spec fields that vary across the suite, at the values its specs have;
    GQA's group sizes also together (any of) when the suite has several. A class that is a whole
    suite of one head_dim is left out (the default row is that)."""
    varying = [f for f in ("dtype", "causal", "qhead_per_kvhead") if len({getattr(s, f) for s in specs}) > 1]
    head_dims = sorted({s.head_dim for s in specs})
    out: dict[str, dict] = {}
    for hd in head_dims:
        in_hd = [s for s in specs if s.head_dim == hd]
        gqa = tuple(sorted({s.qhead_per_kvhead for s in in_hd if s.qhead_per_kvhead > 1}))
        for r in range(0 if len(head_dims) > 1 else 1, len(varying) + 1):
            for subset in itertools.combinations(varying, r):
                values = {tuple(getattr(s, f) for f in subset) for s in in_hd}
                if len(gqa) > 1 and "qhead_per_kvhead" in subset:
                    i = subset.index("qhead_per_kvhead")
                    values |= {v[:i] + (gqa,) + v[i + 1:] for v in values if v[i] > 1}
                for value in sorted(values, key=repr):
                    match = {"head_dim": hd, **dict(zip(subset, value, strict=True))}
                    out.setdefault(json.dumps(match, sort_keys=True), match)
    return list(out.values())


def _matches(match: dict, spec) -> bool:
    return all(getattr(spec, k) in (v if isinstance(v, tuple) else (v,)) for k, v in match.items())


def _row_items(table):
    return [(json.dumps(m, sort_keys=True), (m, o)) for m, o in table.rows]


def _names(knobs) -> list[str]:
    return [f.name for f in dataclasses.fields(knobs)]


def _changes(before, changed: dict) -> str:
    return ", ".join(f"{k} {getattr(before, k)} -> {v}" for k, v in changed.items())


def _literal(match: dict) -> str:
    return "dict(" + ", ".join(f"{k}={v!r}" for k, v in match.items()) + ")"
