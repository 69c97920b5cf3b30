"""The offline variation operator: search a template's declared knob space, no model needed.

New assignments come from the committed parents (screened ones when nothing could be measured):
mutation of one or two knobs of a parent picked by tournament (the incumbent half of the time), or
uniform crossover of two parents. Assignments already in the lineage are never proposed again, and
combinations the kernel's own `can_implement` rejects are skipped before anything compiles.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass

from avo import jit

__all__ = ["KnobOperator", "KnobProposal"]


@dataclass
class KnobProposal:
    knobs: object  # the template's Knobs instance
    parents: list[str]
    rationale: str
    skipped: list[str]  # assignments can_implement rejected on the way, with the reason


class KnobOperator:
    def __init__(self, template: str, specs, rng: random.Random, crossover_rate: float = 0.3, tries: int = 200):
        self.template, self.specs, self.rng = template, list(specs), rng
        self.space = jit.knob_space(template)
        self.crossover_rate, self.tries = crossover_rate, tries

    def propose(self, lineage, incumbent_id: str | None) -> KnobProposal | None:
        """An untried, implementable assignment, or None when none is found (space exhausted)."""
        nodes = [n for n in lineage.nodes() if n.template == self.template]
        tried = {_key(n.knobs) for n in nodes}
        pool = [n for n in nodes if n.status == "committed"] or [n for n in nodes if n.status == "screened"]
        if not pool:
            return None
        by_id = {n.id: n for n in pool}
        skipped = []
        for _ in range(self.tries):
            if len(pool) >= 2 and self.rng.random() < self.crossover_rate:
                a, b = self._tournament(pool), self._tournament(pool)
                if a.id == b.id:
                    continue
                values = {k: (a.knobs if self.rng.random() < 0.5 else b.knobs)[k] for k in a.knobs}
                parents, why = [a.id, b.id], f"crossover of {a.id} and {b.id}"
            else:
                parent = by_id.get(incumbent_id) if incumbent_id in by_id and self.rng.random() < 0.5 else None
                parent = parent or self._tournament(pool)
                values, changed = self._mutate(parent.knobs)
                parents, why = [parent.id], f"mutation of {parent.id}: " + ", ".join(
                    f"{k} {parent.knobs.get(k)} -> {v}" for k, v in changed.items())
            try:
                knobs = jit.load_knobs(self.template, values)
            except ValueError:
                continue
            key = _key(dataclasses.asdict(knobs))
            if key in tried:
                continue
            tried.add(key)
            ok, reason = jit.implementable(jit.render(self.template, knobs), self.specs)
            if not ok:
                skipped.append(f"{key}: {reason}")
                continue
            return KnobProposal(knobs, parents, why, skipped)
        return None

    def _tournament(self, pool, size: int = 3):
        return max(self.rng.sample(pool, min(size, len(pool))), key=lambda n: n.geomean)

    def _mutate(self, knobs: dict) -> tuple[dict, dict]:
        values = dict(knobs)
        names = [k for k, allowed in self.space.SPACE.items() if len(allowed) > 1 and k in values]
        changed = {}
        for name in self.rng.sample(names, 2 if self.rng.random() < 0.3 else 1):
            choices = [v for v in self.space.SPACE[name] if v != values[name]]
            values[name] = changed[name] = self.rng.choice(choices)
        return values, changed


def _key(knobs: dict) -> str:
    return json.dumps(knobs, sort_keys=True)
