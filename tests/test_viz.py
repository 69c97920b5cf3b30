"""Lineage pictures, table and exports on an 8-node fixture with every kind of outcome."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avo import viz
from avo.lineage import Candidate, Lineage, LineageError

REPO = Path(__file__).resolve().parent.parent
FA4 = {"mha_s4k": 400.0, "gqa_s8k": 500.0}
CUDNN = {"mha_s4k": 350.0, "gqa_s8k": 450.0}
# id: (parents, operator, status, scores); geomean is computed from the scores
NODES = {
    "v0000": ([], "seed", "committed", {"mha_s4k": 280.0, "gqa_s8k": 320.0}),
    "v0001": (["v0000"], "knobs", "failed_compile", {}),
    "v0002": (["v0000"], "agent", "committed", {"mha_s4k": 300.0, "gqa_s8k": 360.0}),
    "v0003": (["v0002"], "agent", "failed_correctness", {}),
    "v0004": (["v0002"], "knobs", "rejected", {"mha_s4k": 290.0, "gqa_s8k": 350.0}),
    "v0005": (["v0002"], "agent", "committed", {"mha_s4k": 360.0, "gqa_s8k": 450.0}),
    "v0006": (["v0005", "v0004"], "agent", "timeout", {}),
    "v0007": (["v0005"], "agent", "crashed", {}),
}
GENERATIONS = {"v0000": 0, "v0001": 1, "v0002": 1, "v0003": 2, "v0004": 2, "v0005": 2, "v0006": 3, "v0007": 3}
PATH = ["v0000", "v0002", "v0005"]


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else 0.0


@pytest.fixture
def lineage(tmp_path):
    lineage = Lineage.load(tmp_path / "archive")
    for i, (node_id, (parents, operator, status, scores)) in enumerate(NODES.items()):
        committed = status == "committed"
        lineage.add(Candidate(id=node_id, parents=parents, operator=operator, status=status, scores=scores,
                              geomean=_geomean(list(scores.values())), arch="sm_90a", created=1000.0 + i,
                              baselines={"fa4": FA4, "cudnn": CUDNN} if scores else {},
                              diagnosis="x" * 200 if node_id == "v0003" else ""),
                    source_text=f"KERNEL = {node_id!r}\n" if committed else None)
    return lineage


def test_generations_are_depth_from_the_roots(lineage):
    assert viz.generations(lineage.graph) == GENERATIONS


def test_lineage_figure_draws_every_node_by_status_and_generation(lineage):
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_hex
    from matplotlib.patches import FancyArrowPatch

    ax = viz.draw_lineage(lineage).axes[0]
    (nodes,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    offsets = nodes.get_offsets()
    assert len(offsets) == len(NODES) == lineage.graph.number_of_nodes()
    # drawn in creation order: colour by status, one row per generation, top to bottom
    assert [to_hex(c) for c in nodes.get_facecolors()] == [viz.STATUS_COLORS[NODES[n][2]] for n in NODES]
    rows = {}
    for node_id, (_, y) in zip(NODES, offsets, strict=True):
        rows.setdefault(GENERATIONS[node_id], set()).add(round(float(y), 6))
    assert all(len(ys) == 1 for ys in rows.values())
    by_generation = [next(iter(rows[g])) for g in sorted(rows)]
    assert by_generation == sorted(set(by_generation), reverse=True)  # strictly downwards
    xs = dict(zip(NODES, offsets[:, 0].tolist(), strict=True))  # creation order, left to right
    assert xs["v0003"] < xs["v0004"] < xs["v0005"] and xs["v0006"] < xs["v0007"]
    # area grows with geomean: the incumbent is the biggest, failures the smallest
    sizes = dict(zip(NODES, nodes.get_sizes(), strict=True))
    assert max(sizes, key=sizes.get) == "v0005"
    assert sizes["v0001"] == sizes["v0003"] == min(sizes.values())
    # one arrow per edge; exactly the committed path's edges are heavy and blue
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == lineage.graph.number_of_edges() == 8
    heavy = [a for a in arrows if to_hex(a.get_edgecolor()) == viz.PATH_COLOR]
    assert len(heavy) == len(PATH) - 1 and all(a.get_linewidth() == 3.0 for a in heavy)


def test_trajectory_plots_committed_versions_and_same_run_baselines(lineage):
    ax_geo, ax_cfg = viz.draw_trajectory(lineage).axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax_geo.get_lines()}
    assert lines["avo"] == pytest.approx([_geomean(list(NODES[n][3].values())) for n in PATH])
    assert lines["FA4 (same run)"] == pytest.approx([_geomean(list(FA4.values()))] * 3)
    assert lines["cuDNN (same run)"] == pytest.approx([_geomean(list(CUDNN.values()))] * 3)
    assert [t.get_text() for t in ax_geo.get_xticklabels()] == PATH
    per_config = {line.get_label(): list(line.get_ydata()) for line in ax_cfg.get_lines()}
    assert len(per_config) == 2 * 3  # two configs, each with avo, FA4, cuDNN
    assert per_config["gqa_s8k"] == [320.0, 360.0, 450.0]
    assert per_config["mha_s4k FA4"] == [400.0] * 3


def test_trajectory_follows_the_best_of_a_suite(lineage, tmp_path):
    """A newer commit on another suite becomes the archive's best; --suite keeps the trajectory on
    one suite's path (the README draws the paper suite's)."""
    for node_id in PATH:
        lineage.update(node_id, suite="paper")
    lineage.add(Candidate(id="v0008", parents=["v0000"], operator="manual", status="committed",
                          scores={"mha_s8k_d256": 700.0}, geomean=700.0, arch="sm_90a", suite="hdim256",
                          created=2000.0, baselines={"fa4": {"mha_s8k_d256": 690.0}}),
                source_text="KERNEL = 'v0008'\n")
    ticks = lambda fig: [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks(viz.draw_trajectory(lineage)) == ["v0000 paper", "v0008 hdim256"]
    assert ticks(viz.draw_trajectory(lineage, suite="paper")) == PATH
    from avo.lineage import main as lineage_main

    assert lineage_main(["--archive", str(lineage.root), "plot", "--out", str(tmp_path / "p"), "--suite", "paper"]) == 0
    assert (tmp_path / "p" / "trajectory.png").exists()


def test_plot_writes_png_and_svg(lineage, tmp_path):
    written = viz.plot(lineage, tmp_path / "pics")
    assert sorted(p.name for p in written) == ["lineage.png", "lineage.svg", "trajectory.png", "trajectory.svg"]
    for path in written:
        head = path.read_bytes()[:400]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head


def test_dot_export_has_one_line_per_node_and_edge(lineage):
    dot = viz.to_dot(lineage)
    node_lines = re.findall(r'^  "(v\d+)" \[label=', dot, re.M)
    edge_lines = re.findall(r'^  "(v\d+)" -> "(v\d+)" \[(.*)\];$', dot, re.M)
    assert sorted(node_lines) == sorted(NODES)
    assert sorted((u, v) for u, v, _ in edge_lines) == sorted(lineage.graph.edges)
    heavy = [(u, v) for u, v, style in edge_lines if viz.PATH_COLOR in style]
    assert heavy == list(zip(PATH, PATH[1:], strict=False))
    assert f'"v0001" [label="v0001 knobs failed_compile", fillcolor="{viz.STATUS_COLORS["failed_compile"]}"' in dot
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")


def test_mermaid_export_has_one_line_per_node_and_edge(lineage):
    text = viz.to_mermaid(lineage)
    assert text.startswith("flowchart TD\n")
    nodes = re.findall(r'^  (\w+)\["[^"]*"\]:::(\w+)$', text, re.M)
    assert nodes == [(n, NODES[n][2]) for n in NODES]
    edges = re.findall(r"^  (\w+) (-->|==>) (\w+)$", text, re.M)
    assert len(edges) == 8 and sorted((u, v) for u, _, v in edges) == sorted(lineage.graph.edges)
    assert [(u, v) for u, arrow, v in edges if arrow == "==>"] == list(zip(PATH, PATH[1:], strict=False))
    assert 'v0005["v0005 agent 402 TFLOPS"]:::committed' in text


def test_table_has_ratio_vs_fa4_same_run_ratio_best_and_truncated_diagnosis(lineage):
    lineage.update("v0005", extra={"ratio": 1.0213, "ratio_ci": [1.0101, 1.0330]})
    lineage.update("v0002", extra={"ratio": 1.004})
    lines = viz.table(lineage).splitlines()
    assert lines[0].split() == ["id", "parents", "operator", "suite", "status", "geomean", "vs", "FA4", "ratio",
                                "diagnosis"]
    rows = lines[1:1 + len(NODES)]
    assert [line.split()[0] for line in rows] == [n + ("*" if n == "v0005" else "") for n in NODES]
    row = dict(zip(NODES, rows, strict=True))
    ratio = _geomean([360.0, 450.0]) / _geomean(list(FA4.values()))
    suite = row["v0005"].split()[3]
    assert row["v0005"].split()[:8] == ["v0005*", "v0002", "agent", suite, "committed", "402.5", f"{ratio:.3f}",
                                        "1.0213[1.0101,1.0330]"]
    assert row["v0002"].split()[7] == "1.0040"  # no interval recorded: the ratio alone
    assert row["v0006"].split()[1] == "v0005,v0004" and row["v0006"].split()[5:8] == ["-", "-", "-"]
    assert row["v0003"].endswith("x" * 57 + "...")
    assert lines[-2] == f"* {viz.BEST}." and "newest committed node" in viz.BEST
    # each suite's incumbent is marked: an older commit of another suite keeps its mark
    lineage.update("v0002", suite="hdim64")
    marks = [line.split()[0] for line in viz.table(lineage).splitlines()[1:1 + len(NODES)] if "*" in line.split()[0]]
    assert marks == ["v0002*", "v0005*"]
    lineage.update("v0004", operator="manual", extra={"author": "Ada (a person), by hand"})
    assert viz.table(lineage).splitlines()[5].split()[2] == "manual:Ada"  # who made a hand edit


def _big_lineage(root, n=500):
    """A 500-node run as compile-only knob searches make them: mostly screened and failed children
    of a few committed nodes, some screened nodes with children of their own."""
    lineage = Lineage.load(root)
    statuses = ["screened"] * 6 + ["failed_compile", "timeout", "rejected", "committed"]
    committed = ["v0000"]
    lineage.graph.add_node("v0000", **_node_attrs("committed", 300.0, 0))
    for i in range(1, n):
        status = statuses[i % len(statuses)]
        parent = committed[-1] if i % 7 else f"v{i - 1:04d}"
        node_id = f"v{i:04d}"
        lineage.graph.add_node(node_id, **_node_attrs(status, 300.0 + i / 10 if status in ("committed", "rejected")
                                                      else 0.0, i))
        lineage.graph.add_edge(parent, node_id)
        if status == "committed":
            committed.append(node_id)
    return lineage


def _node_attrs(status, geomean, i):
    from dataclasses import asdict

    attrs = asdict(Candidate(id="x", status=status, geomean=geomean, created=1000.0 + i, arch="sm_90a",
                             source_path=f"sources/v{i:04d}.py"))
    del attrs["id"]
    return attrs


def test_500_nodes_stay_readable_and_fold(tmp_path):
    from matplotlib.collections import PathCollection

    lineage = _big_lineage(tmp_path / "big")
    fig = viz.draw_lineage(lineage)
    width, _ = fig.get_size_inches()
    assert width <= viz.MAX_WIDTH_IN
    ax = fig.axes[0]
    committed = {c.id for c in lineage.nodes("committed")}
    texts = {t.get_text().split("\n")[0] for t in ax.texts}
    assert texts == committed  # past LABEL_LIMIT only committed nodes are named: no spilled labels
    (drawn,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(drawn.get_offsets()) == 500

    hidden = viz.draw_lineage(lineage, hide=["screened", "failed"]).axes[0]
    (drawn,) = [c for c in hidden.collections if isinstance(c, PathCollection)]
    kept = [c for c in lineage.nodes() if c.status in ("committed", "rejected")]
    assert len(drawn.get_offsets()) == len(kept) and len(kept) < 120

    folded_fig = viz.draw_lineage(lineage, hide=["screened", "failed"], fold=True)
    (drawn,) = [c for c in folded_fig.axes[0].collections if isinstance(c, PathCollection)]
    counts = [int(t.get_text()[1:]) for t in folded_fig.axes[0].texts if t.get_text().startswith("+")]
    assert sum(counts) == 500 - len(kept) and len(drawn.get_offsets()) == len(kept) + len(counts) < 300
    title = folded_fig._suptitle.get_text()
    folded_statuses = "crashed/failed_compile/failed_correctness/failed_sanitizer/screened/timeout"
    assert f"{500 - len(kept)} {folded_statuses} folded" in title


def test_hidden_nodes_children_hang_off_the_nearest_shown_ancestor(lineage):
    lineage.add(Candidate(id="v0008", parents=["v0007"], operator="agent", status="rejected", created=2000.0))
    graph, shown, folded = viz._view(lineage, viz._statuses(["failed"]))
    assert "v0007" not in graph and graph.has_edge("v0005", "v0008")  # v0007 crashed: hidden
    assert "v0006" not in graph and not folded
    with pytest.raises(LineageError, match="unknown status"):
        viz._statuses(["great"])


def test_cli_dispatches_from_avo_lineage(lineage, tmp_path, capsys):
    archive = str(lineage.root)
    assert viz.main(["--archive", archive, "export", "--format", "dot", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "lineage.dot").read_text() == viz.to_dot(lineage)
    assert viz.main(["--archive", archive, "plot", "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").iterdir())) == 4
    assert viz.main(["--archive", archive, "plot", "--hide", "failed", "--fold", "--out", str(tmp_path / "q")]) == 0
    assert len(list((tmp_path / "q").iterdir())) == 4
    assert viz.main(["--archive", str(tmp_path / "nothing"), "show"]) == 1
    expected = f"error: no lineage at {tmp_path / 'nothing'} (no lineage.json, or no nodes in it)"
    assert capsys.readouterr().err.strip() == expected
    proc = subprocess.run([sys.executable, "-m", "avo.lineage", "--archive", archive, "export", "--format",
                           "mermaid"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == viz.to_mermaid(lineage)


def test_missing_matplotlib_is_a_clear_error(lineage, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=re.escape('plotting needs matplotlib: pip install -e ".[viz]"')):
        viz.draw_lineage(lineage)
