"""The lineage: every candidate ever evaluated, committed or not, as a networkx DiGraph.

Nodes carry a `Candidate` record (as a dict); edges run parent -> child. A committed node carries
its `speed` (extra["speed"]): its ratio to the incumbent it was judged against times that node's
speed, the seed 1.0, so the commits of one suite and arch stand on one scale and `commit_bar` can
keep the commit tolerance from adding up along the chain. The graph is persisted
in a directory (the tracked `archive/` by default) as versioned node-link JSON plus the kernel
source of every committed node, so `load(save(g))` gives the same graph and a killed run resumes
from the last write. Every write goes through a temp file and an atomic rename.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from avo.atomic import atomic_write

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["STATUSES", "Candidate", "Lineage", "LineageError", "read_nodes"]

FORMAT_VERSION = 1
STATUSES = ("committed", "rejected", "failed_compile", "failed_correctness", "failed_sanitizer", "timeout", "crashed",
            "screened", "pending")  # screened: compiled only (no matching GPU), never run


class LineageError(Exception):
    pass


@dataclass
class Candidate:
    """One node. `scores` maps a config name to TFLOPS (0 where it failed correctness)."""

    id: str
    parents: list[str] = field(default_factory=list)
    operator: str = "seed"  # seed | knobs | agent | manual
    status: str = "pending"
    template: str | None = None
    # the knobs its template was rendered with: one flat assignment, or a per-spec knob table
    # {"default": {...}, "rows": [[match, overrides], ...]} (avo.jit.load_table reads both)
    knobs: dict = field(default_factory=dict)
    source_hash: str = ""
    source_path: str = ""  # where the source lives: archive/sources/<id>.py once committed
    scores: dict = field(default_factory=dict)
    geomean: float = 0.0
    baselines: dict = field(default_factory=dict)  # e.g. {"fa4": {cfg: tflops}, "cudnn": {...}} same run
    diagnosis: str = ""  # why it failed or what the harness saw
    rationale: str = ""  # what the operator meant to try
    timing: dict = field(default_factory=dict)  # seconds per stage: compile, verify, bench
    cost: dict = field(default_factory=dict)  # tokens, dollars, device seconds
    arch: str = ""  # the arch it was measured on (sm_90a) or compiled for
    suite: str = ""  # the suite its scores are on: geomeans of different suites do not compare
    created: float = field(default_factory=time.time)
    # when it was recorded committed: steps side by side commit in another order than they were
    # created in (None: not committed, or committed before this was kept, when `created` stands in)
    committed_at: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise LineageError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")


class Lineage:
    """The graph plus the directory it lives in."""

    def __init__(self, root: str | Path, graph: nx.DiGraph | None = None):
        # networkx is imported where a graph is built: avo.ops reads the archive on a model's
        # first call through read_nodes, and networkx alone costs ~0.1 s to import
        import networkx as nx

        self.root = Path(root)
        self.graph = graph if graph is not None else nx.DiGraph()
        # concurrent agent steps read and write one graph: every method holds this; a caller that
        # must read then write without another writer between (avo.evolve.Run) holds it too
        self.lock = threading.RLock()

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Lineage:
        """Load from `root`, or start empty where there is no lineage yet."""
        import networkx as nx

        root = Path(root)
        data = _read(root)
        if data is None:
            return cls(root)
        graph = nx.node_link_graph(data["graph"], directed=True, edges="edges")
        return cls(root, graph)

    def __contains__(self, node_id: str) -> bool:
        with self.lock:
            return node_id in self.graph

    def __len__(self) -> int:
        with self.lock:
            return self.graph.number_of_nodes()

    def get(self, node_id: str) -> Candidate:
        with self.lock:
            if node_id not in self.graph:
                raise LineageError(f"no node {node_id!r} in the lineage at {self.root}")
            return Candidate(id=node_id, **copy.deepcopy(self.graph.nodes[node_id]))

    def nodes(self, status: str | None = None) -> list[Candidate]:
        with self.lock:
            out = [Candidate(id=node_id, **copy.deepcopy(attrs)) for node_id, attrs in self.graph.nodes(data=True)]
        out = [c for c in out if status is None or c.status == status]
        return sorted(out, key=lambda c: c.created)

    def best(self, suite: str | None = None, arch: str | None = None) -> Candidate | None:
        """The incumbent: the latest node recorded committed, optionally of one suite/arch. A node is
        committed only when, measured side by side with the incumbent of its time, it is at most
        COMMIT_TOLERANCE below the best so far (commit_bar), so the latest is the best so far up to
        that tolerance, which does not add up over commits; geomeans taken in different runs drift
        and are not compared."""
        committed = [c for c in self.nodes("committed")
                     if (suite is None or c.suite == suite) and (arch is None or c.arch == arch)]
        return max(committed, key=lambda c: c.committed_at or c.created) if committed else None

    def speed(self, node: Candidate | str) -> float:
        """A committed node's speed on its chain's scale: extra["speed"] where it was recorded, else
        its recorded ratio times the speed of the node it was judged against (extra["judged_against"],
        or avo.eval's "timed_against"), recursively; 1.0 for the seed, a node judged against no
        incumbent, and an older node that does not say what it was judged against. An incumbent of
        another suite lends its speed as it stands (the closest estimate there is)."""
        with self.lock:
            if isinstance(node, str) and node not in self.graph:
                raise LineageError(f"no node {node!r} in the lineage at {self.root}")
            # a Candidate speaks for itself: the one being recorded may still be pending in the graph
            extra = self.graph.nodes[node]["extra"] if isinstance(node, str) else node.extra
            seen, factors = {node if isinstance(node, str) else node.id}, []
            while "speed" not in extra:
                ratio = extra.get("ratio")
                against = extra.get("judged_against") or extra.get("timed_against")
                if ratio is None or against is None or against in seen or against not in self.graph:
                    return math.prod(factors)  # the start of a chain: 1.0
                factors.append(ratio)
                seen.add(against)
                extra = self.graph.nodes[against]["extra"]
            return extra["speed"] * math.prod(factors)

    def commit_bar(self, incumbent: Candidate | str | None, suite: str | None = None,
                   arch: str | None = None) -> float:
        """The lower bound a candidate's paired ratio to `incumbent` must clear to be committed:
        (1 - COMMIT_TOLERANCE) * best / speed(incumbent), best the highest speed of the committed
        nodes of `suite` and `arch` (default: the incumbent's) and of the incumbent itself. Against
        the best so far it is 1 - COMMIT_TOLERANCE; against an incumbent committed 0.4% below the best,
        ~0.999. None (no incumbent) or a node not in this lineage: 1 - COMMIT_TOLERANCE. An incumbent
        recorded on another suite or arch stands, on this one, where the newest committed node of
        this suite and arch with its source stands (its own chain holds another suite's ratios:
        v0079, hdim256, set a bar of 1.0046 on paper, where its source was the best)."""
        from avo.stats import COMMIT_BAR

        with self.lock:
            node_id = getattr(incumbent, "id", incumbent)
            if node_id is None or node_id not in self.graph:
                return COMMIT_BAR
            attrs = self.graph.nodes[node_id]
            suite = attrs["suite"] if suite is None else suite
            arch = attrs["arch"] if arch is None else arch
            committed = [(n, a) for n, a in self.graph.nodes(data=True)
                         if a["status"] == "committed" and a["suite"] == suite and a["arch"] == arch]
            own = self.speed(node_id)
            if (attrs["suite"], attrs["arch"]) != (suite, arch) and attrs.get("source_hash"):
                same = [(n, a) for n, a in committed if a.get("source_hash") == attrs["source_hash"]]
                if same:  # the newest, as best() picks it
                    newest, _ = max(same, key=lambda na: (na[1].get("committed_at") or na[1]["created"], na[0]))
                    own = self.speed(newest)
            best = max([own] + [self.speed(n) for n, _ in committed])
            return COMMIT_BAR if best <= own else COMMIT_BAR * best / own

    def committed_path(self, suite: str | None = None, arch: str | None = None) -> list[Candidate]:
        """The chain of committed ancestors of the incumbent, seed first."""
        best = self.best(suite, arch)
        if best is None:
            return []
        chain = [best]
        while True:
            parents = [self.get(p) for p in chain[-1].parents if p in self.graph]
            committed = [p for p in parents if p.status == "committed"]
            if not committed:
                return chain[::-1]
            chain.append(max(committed, key=lambda c: c.created))

    def source(self, node_id: str) -> str:
        node = self.get(node_id)
        path = Path(node.source_path)
        if not path.is_absolute():
            path = self.root / path
        if not path.exists():
            raise LineageError(f"source of {node_id} not found at {path}")
        return path.read_text()

    def new_id(self, prefix: str = "v") -> str:
        with self.lock:
            n = self.graph.number_of_nodes()
            while f"{prefix}{n:04d}" in self.graph:
                n += 1
            return f"{prefix}{n:04d}"

    # -- writing ------------------------------------------------------------------------------
    def add(self, candidate: Candidate, source_text: str | None = None) -> Candidate:
        """Add or update a node, with edges from its parents, and persist. A committed node's
        source is stored under sources/ so the lineage never depends on generated/."""
        with self.lock:
            missing = [p for p in candidate.parents if p not in self.graph]
            if missing:
                raise LineageError(f"parents {missing} of {candidate.id} are not in the lineage")
            if candidate.status == "committed":
                if source_text is None:
                    raise LineageError(f"committed node {candidate.id} needs its source text")
                rel = Path("sources") / f"{candidate.id}.py"
                atomic_write(self.root / rel, source_text)
                candidate.source_path = str(rel)
                candidate.committed_at = candidate.committed_at or time.time()
                if "speed" not in candidate.extra:
                    candidate.extra["speed"] = self.speed(candidate)
            self.graph.add_node(candidate.id, **_attrs(candidate))
            for parent in candidate.parents:
                self.graph.add_edge(parent, candidate.id)
            self.save()
            return candidate

    def update(self, node_id: str, **fields) -> Candidate:
        with self.lock:
            node = self.get(node_id)
            for key, value in fields.items():
                if not hasattr(node, key):
                    raise LineageError(f"Candidate has no field {key!r}")
                setattr(node, key, value)
            node.__post_init__()
            self.graph.add_node(node_id, **_attrs(node))
            self.save()
            return node

    def save(self) -> Path:
        import networkx as nx

        with self.lock:
            data = {"format_version": FORMAT_VERSION,
                    "graph": nx.node_link_data(self.graph, edges="edges")}
            path = self.root / "lineage.json"
            atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
            return path


def _read(root: Path) -> dict | None:
    path = root / "lineage.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LineageError(f"{path} is not valid JSON ({exc}); restore it from git or remove it") from None
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise LineageError(f"{path} has format_version {version}; this avo reads {FORMAT_VERSION}")
    return data


def read_nodes(root: str | Path) -> list[Candidate]:
    """The nodes of the lineage at `root` in creation order, read without building the graph
    (no networkx): what avo.ops needs to choose a kernel. Empty where there is no lineage."""
    data = _read(Path(root))
    nodes = [Candidate(**attrs) for attrs in data["graph"]["nodes"]] if data else []
    return sorted(nodes, key=lambda c: c.created)


def _attrs(candidate: Candidate) -> dict:
    # the node key is the id; node-link JSON keeps it under "id" itself
    attrs = asdict(candidate)
    del attrs["id"]
    return attrs


def main(argv: list[str] | None = None) -> int:
    """`python -m avo.lineage {plot,show,export}`: see avo/viz.py."""
    from avo import viz

    return viz.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
