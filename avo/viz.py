"""Pictures and tables of a lineage: `python -m avo.lineage {plot,show,export}`.

- plot: lineage.{png,svg}, the graph laid out by generation (longest path from a root), nodes
  coloured by status and sized by geomean TFLOPS, the committed path drawn heavy; and
  trajectory.{png,svg}, geomean and per-config TFLOPS of each version on the committed path
  with FA4 and cuDNN as measured in the same benchmark runs (the nodes' `baselines`).
- show: one row per node (id, parents, operator, status, geomean, ratio vs FA4, the same-run ratio
  to the incumbent that decided it, diagnosis), the incumbent marked, and what "best" means.
- export: the graph as a Mermaid flowchart or as DOT, to render inside markdown or by graphviz.

matplotlib is an optional dependency (`pip install -e ".[viz]"`), imported only to plot.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import networkx as nx

from avo.lineage import STATUSES, Lineage, LineageError

__all__ = ["BEST", "PATH_COLOR", "STATUS_COLORS", "draw_lineage", "draw_trajectory", "generations", "main", "plot",
           "table", "to_dot", "to_mermaid"]

STATUS_COLORS = {
    "committed": "#2ca02c",
    "rejected": "#8c8c8c",
    "failed_compile": "#d62728",
    "failed_correctness": "#ff7f0e",
    "failed_sanitizer": "#e377c2",  # a race or bad access compute-sanitizer found
    "timeout": "#9467bd",
    "crashed": "#8c564b",
    "screened": "#17becf",  # compiled only, never run
    "pending": "#d9d9d9",
}
OTHER_COLOR = "#d9d9d9"  # a status this table does not know yet
PATH_COLOR = "#1f3b99"  # edges of the committed path
EDGE_COLOR = "#b0b0b0"
BASELINES = {"fa4": ("FA4", "--"), "cudnn": ("cuDNN", ":")}  # name in `baselines` -> label, line style


# ---------------------------------------------------------------------------------------------
# numbers


def generations(graph: nx.DiGraph) -> dict[str, int]:
    """Depth of each node: 0 for a root, else one more than its deepest parent."""
    depth: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        depth[node] = 1 + max((depth[p] for p in graph.predecessors(node)), default=-1)
    return depth


def _geomean(values) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def _baseline_geomean(node, name: str) -> float:
    """Geomean of baseline `name` over the configs the node was scored on (same run)."""
    ref = node.baselines.get(name) or {}
    configs = [c for c in node.scores if c in ref] or list(ref)
    return _geomean(ref[c] for c in configs)


def _color(status: str) -> str:
    return STATUS_COLORS.get(status, OTHER_COLOR)


def _path_edges(lineage: Lineage, suite: str | None = None) -> set[tuple[str, str]]:
    path = [c.id for c in lineage.committed_path(suite)]
    return set(zip(path, path[1:], strict=False))


# ---------------------------------------------------------------------------------------------
# text


BEST = ("best = the incumbent of its suite, the suite's newest committed node: a node is committed only when "
        "its speed ratio to the incumbent of its time, measured side by side in the same run, passes the commit "
        "rule; geomeans from different runs drift and are not compared")


def _ratio(c) -> str:
    """The same-run ratio to the incumbent of its time that decided a node, with its 95% CI when known."""
    ratio, ci = c.extra.get("ratio"), c.extra.get("ratio_ci")
    if not ratio:
        return "-"
    return f"{ratio:.4f}" + (f"[{ci[0]:.4f},{ci[1]:.4f}]" if ci and len(ci) == 2 else "")


def table(lineage: Lineage, width: int = 60) -> str:
    """A fixed-width table, one row per node in creation order (the incumbent marked `*`), then
    what "best" means: the ratio column, not the geomeans of different runs, decided each commit.
    Each suite's incumbent is marked: nodes committed on different suites hold different kernels."""
    suites = {c.suite for c in lineage.nodes("committed")}
    marked = {lineage.best(suite).id for suite in suites}
    rows = [("id", "parents", "operator", "suite", "status", "geomean", "vs FA4", "ratio", "diagnosis")]
    for c in lineage.nodes():
        fa4 = _baseline_geomean(c, "fa4")
        ratio = f"{c.geomean / fa4:.3f}" if fa4 and c.geomean else "-"
        diagnosis = " ".join(c.diagnosis.split())
        if len(diagnosis) > width:
            diagnosis = diagnosis[:width - 3] + "..."
        author = str(c.extra.get("author", "")).split(" (")[0].split(",")[0].strip()
        operator = f"{c.operator}:{author}" if author else c.operator  # who made a hand edit
        rows.append((c.id + ("*" if c.id in marked else ""), ",".join(c.parents) or "-", operator,
                     c.suite or "-", c.status, f"{c.geomean:.1f}" if c.geomean else "-", ratio, _ratio(c),
                     diagnosis))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(f"{r[i]:<{w}}" for i, w in enumerate(widths)) + "  " + r[-1] for r in rows]
    lines.append("")
    lines.append(f"* {BEST}." if marked else "no committed node yet.")
    lines.append("ratio: speed vs the incumbent of its time in the same run [95% CI]; geomean: TFLOPS of its "
                 "own run; vs FA4: geomean over FA4's in that run.")
    return "\n".join(lines)


def _label(c) -> str:
    return f"{c.id} {c.operator}" + (f" {c.geomean:.0f} TFLOPS" if c.geomean else f" {c.status}")


def to_dot(lineage: Lineage) -> str:
    """DOT text: one line per node, one per edge; committed-path edges heavy and coloured."""
    path = _path_edges(lineage)
    on_path = {n for e in path for n in e} | {c.id for c in lineage.committed_path()}
    lines = ["digraph lineage {", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for c in lineage.nodes():
        pen = ", penwidth=3" if c.id in on_path else ""
        lines.append(f'  "{_dot_escape(c.id)}" [label="{_dot_escape(_label(c))}", '
                     f'fillcolor="{_color(c.status)}"{pen}];')
    for u, v in lineage.graph.edges:
        style = f'color="{PATH_COLOR}", penwidth=3' if (u, v) in path else f'color="{EDGE_COLOR}"'
        lines.append(f'  "{_dot_escape(u)}" -> "{_dot_escape(v)}" [{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_mermaid(lineage: Lineage) -> str:
    """A Mermaid flowchart: one line per node, one per edge (`==>` on the committed path)."""
    ids: dict[str, str] = {}
    for c in lineage.nodes():
        safe = re.sub(r"\W", "_", c.id)
        ids[c.id] = safe if safe not in ids.values() else f"{safe}_{len(ids)}"
    path = _path_edges(lineage)
    lines = ["flowchart TD"]
    for c in lineage.nodes():
        label = _label(c).replace('"', "#quot;")
        lines.append(f'  {ids[c.id]}["{label}"]:::{c.status}')
    path_links = []
    for i, (u, v) in enumerate(lineage.graph.edges):
        arrow = "==>" if (u, v) in path else "-->"
        if (u, v) in path:
            path_links.append(str(i))
        lines.append(f"  {ids[u]} {arrow} {ids[v]}")
    for status in sorted({c.status for c in lineage.nodes()}):
        color = _color(status)
        lines.append(f"  classDef {status} fill:{color},color:#000")
    if path_links:
        lines.append(f"  linkStyle {','.join(path_links)} stroke:{PATH_COLOR},stroke-width:3px")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# pictures


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError('plotting needs matplotlib: pip install -e ".[viz]"') from None
    return Figure(figsize=(width, height), layout="constrained")


FAILED = ("failed_compile", "failed_correctness", "failed_sanitizer", "timeout", "crashed")
MAX_WIDTH_IN = 40.0  # a figure wider than this is unreadable on a screen: nodes shrink instead
LABEL_LIMIT = 60  # past this many drawn nodes only the committed ones carry a label


def _statuses(names) -> set[str]:
    """Status names, with `failed` standing for every failure status."""
    out = set()
    for name in names:
        out |= set(FAILED) if name == "failed" else {name}
    unknown = out - set(STATUSES)
    if unknown:
        raise LineageError(f"unknown status(es) {sorted(unknown)}; use {', '.join((*STATUSES, 'failed'))}")
    return out


def _view(lineage: Lineage, hide=(), fold: bool = False):
    """(graph, nodes, folded counts) to draw: nodes of a `hide` status are dropped (committed ones
    never), their children linked to the nearest shown ancestor; with `fold`, each shown node gets
    one summary node per hidden status among the nodes hanging off it ("+12 screened")."""
    import networkx as nx

    hidden = {c.id for c in lineage.nodes() if c.status in hide and c.status != "committed"}
    shown = [c for c in lineage.nodes() if c.id not in hidden]
    anchor: dict[str, str | None] = {}  # hidden node -> nearest shown ancestor

    def nearest(node_id):
        if node_id not in hidden:
            return node_id
        if node_id not in anchor:
            parents = list(lineage.graph.predecessors(node_id))
            anchor[node_id] = nearest(parents[0]) if parents else None
        return anchor[node_id]

    graph = nx.DiGraph()
    graph.add_nodes_from(c.id for c in shown)
    for c in shown:
        for p in lineage.graph.predecessors(c.id):
            a = nearest(p)
            if a is not None and a != c.id:
                graph.add_edge(a, c.id)
    folded: dict[str, tuple[str, int]] = {}
    if fold:
        counts: dict[tuple[str, str], int] = {}
        for h in sorted(hidden):
            a = nearest(next(iter(lineage.graph.predecessors(h)), h)) if lineage.graph.in_degree(h) else None
            key = (a or "root", lineage.get(h).status)
            counts[key] = counts.get(key, 0) + 1
        for (a, status), n in sorted(counts.items()):
            fid = f"+{n} {status} <- {a}"
            folded[fid] = (status, n)
            graph.add_node(fid)
            if a != "root":
                graph.add_edge(a, fid)
    return graph, shown, folded


def draw_lineage(lineage: Lineage, hide=(), fold: bool = False, suite: str | None = None):
    """The graph by generation (top to bottom), a matplotlib Figure. Node area grows with geomean
    TFLOPS, the label gives it; the committed path (to the best of `suite`, or to the newest
    commit) has heavy blue edges and outlined nodes.
    `hide` drops nodes of those statuses ("failed" = every failure), `fold` shows them as one
    counted node per parent and status. Past MAX_WIDTH_IN the figure stops growing and nodes
    shrink; past LABEL_LIMIT nodes only committed ones are labelled, so 500 nodes stay legible."""
    if lineage.graph.number_of_nodes() == 0:
        raise LineageError(f"the lineage at {lineage.root} has no nodes to draw")
    hide = _statuses(hide)
    graph, nodes, folded = _view(lineage, hide, fold)
    depth = generations(graph)
    order = [c.id for c in nodes] + list(folded)  # creation order within a generation, folds last
    layers: dict[int, list[str]] = {}
    for n in order:
        layers.setdefault(depth[n], []).append(n)
    pos = nx.multipartite_layout(graph, subset_key=layers, align="horizontal")
    pos = {n: (x, -y) for n, (x, y) in pos.items()}  # generation 0 on top

    widest = max(len(layer) for layer in layers.values())
    width = min(MAX_WIDTH_IN, max(6.0, 1.6 * widest))
    shrink = min(1.0, width / (1.6 * widest))  # node area scales with the room each one gets
    fig = _figure(width, max(4.0, 1.3 * (max(depth.values()) + 1)))
    from matplotlib.lines import Line2D

    ax = fig.add_subplot()
    top = max((c.geomean for c in nodes), default=0.0) or 1.0
    path = _path_edges(lineage, suite)
    on_path = {c.id for c in lineage.committed_path(suite)}
    sizes = [shrink * (500 + 1500 * c.geomean / top) for c in nodes] + [shrink * 300] * len(folded)
    colors = [_color(c.status) for c in nodes] + [_color(status) for status, _ in folded.values()]
    edges = list(graph.edges)
    nx.draw_networkx_edges(graph, pos, ax=ax, edgelist=edges, arrows=True, arrowstyle="-|>",
                           nodelist=order, node_size=sizes,
                           edge_color=[PATH_COLOR if e in path else EDGE_COLOR for e in edges],
                           width=[3.0 if e in path else 1.0 for e in edges])
    nx.draw_networkx_nodes(graph, pos, ax=ax, nodelist=order, node_size=sizes, node_color=colors,
                           node_shape="o",
                           edgecolors=[PATH_COLOR if n in on_path else "#404040" for n in order],
                           linewidths=[2.5 if n in on_path else 0.5 for n in order])
    labelled = [c for c in nodes if len(order) <= LABEL_LIMIT or c.status == "committed"]
    labels = {c.id: c.id + (f"\n{c.geomean:.0f}" if c.geomean else "") for c in labelled}
    labels.update({f: f"+{n}" for f, (_, n) in folded.items()})
    nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=7 if len(order) <= LABEL_LIMIT else 5)
    present = [s for s in STATUSES if any(c.status == s for c in nodes) or any(f[0] == s for f in folded.values())]
    handles = [Line2D([], [], marker="o", linestyle="", markersize=8, color=_color(s), label=s)
               for s in present]
    handles.append(Line2D([], [], color=PATH_COLOR, linewidth=3, label="committed path"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    best = lineage.best(suite)
    hidden_note = ""
    if hide:
        count = len(lineage) - len(nodes)
        hidden_note = f"; {count} {'/'.join(sorted(hide))} {'folded' if fold else 'hidden'}"
    fig.suptitle(f"lineage: {len(lineage)} candidates, {len(on_path)} on the committed path{hidden_note} "
                 f"(label: geomean TFLOPS of its own run)\n"
                 + (f"best{' on ' + suite if suite else ''} = {best.id}: the newest committed node; each commit "
                    "passed a same-run speed ratio to the incumbent of its time" if best else "nothing committed yet"),
                 fontsize=9)
    ax.margins(0.12)
    ax.set_axis_off()
    return fig


def draw_trajectory(lineage: Lineage, suite: str | None = None):
    """Left: geomean TFLOPS of each committed-path version (the path to the best of `suite`, or to
    the newest commit of any suite), with the FA4 and cuDNN geomeans of the same runs. Right:
    per-config TFLOPS (solid) with each baseline in the config's colour."""
    path = lineage.committed_path(suite)
    if not path:
        raise LineageError(f"the lineage at {lineage.root} has no committed node")
    x = list(range(len(path)))
    fig = _figure(max(8.0, 0.9 * len(path) + 6), 4.0)
    ax_geo, ax_cfg = fig.subplots(1, 2)
    # geomeans of different suites do not compare: a line never joins two versions of different suites
    segments = [[0]]
    for i in range(1, len(path)):
        (segments[-1].append(i) if path[i].suite == path[i - 1].suite else segments.append([i]))

    def plot_geo(ys, **style):
        for n, seg in enumerate(segments):
            ax_geo.plot(seg, [ys[i] for i in seg], **{**style, "label": style["label"] if n == 0 else None})

    plot_geo([c.geomean for c in path], marker="o", color="black", linewidth=2, label="avo")
    for i, c in enumerate(path):  # what decided the commit: the same-run ratio, not the geomean
        if c.extra.get("ratio"):
            ax_geo.annotate(f"{c.extra['ratio']:.3f}x", (i, c.geomean), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
    for name, (label, style) in BASELINES.items():
        ys = [_baseline_geomean(c, name) or math.nan for c in path]
        if any(not math.isnan(y) for y in ys):
            # marked points: a baseline measured beside only some versions still shows
            plot_geo(ys, linestyle=style, marker="x", color="black", alpha=0.6, label=f"{label} (same run)")
    configs = sorted({cfg for c in path for cfg in c.scores})
    handles = []  # the legend names configs; the baselines' line styles are told once, in a note
    for i, cfg in enumerate(configs):
        color = f"C{i % 10}"
        handles += ax_cfg.plot(x, [c.scores.get(cfg, math.nan) for c in path], marker="o", color=color, label=cfg)
        for name, (label, style) in BASELINES.items():
            ys = [(c.baselines.get(name) or {}).get(cfg, math.nan) for c in path]
            if any(not math.isnan(y) for y in ys):
                ax_cfg.plot(x, ys, linestyle=style, marker="x", color=color, alpha=0.7, label=f"{cfg} {label}")
    for ax, title in ((ax_geo, "geomean TFLOPS"), (ax_cfg, "TFLOPS per config")):
        names = [f"{c.id} {c.suite}" if len(segments) > 1 and c.suite else c.id for c in path]
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("TFLOPS")
        ax.grid(alpha=0.3)
    ax_geo.legend(fontsize=7, frameon=False)
    ax_cfg.legend(handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_cfg.text(1.01, 0.0, "x marks: " + ", ".join(f"{label} {'dashed' if style == '--' else 'dotted'}"
                                                    for label, style in BASELINES.values()) + " (same run)",
                transform=ax_cfg.transAxes, fontsize=7, va="bottom")
    archs = sorted({c.arch for c in path if c.arch})
    fig.suptitle("committed versions" + (f" ({', '.join(archs)})" if archs else "")
                 + f"; best = {path[-1].id}, the newest" + (f" on {suite}" if suite else "")
                 + "; Nx = its same-run speed ratio to the incumbent before it",
                 fontsize=10)
    return fig


def plot(lineage: Lineage, out_dir: str | Path, hide=(), fold: bool = False, suite: str | None = None) -> list[Path]:
    """Write lineage.{png,svg} (nodes of `hide` statuses dropped or, with `fold`, counted) and, when
    something is committed (on `suite`, when given), trajectory.{png,svg}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"lineage": draw_lineage(lineage, hide, fold, suite)}
    if lineage.committed_path(suite):
        figures["trajectory"] = draw_trajectory(lineage, suite)
    written = []
    for name, fig in figures.items():
        for suffix in ("png", "svg"):
            path = out_dir / f"{name}.{suffix}"
            fig.savefig(path, dpi=150)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avo.lineage", description="Pictures and tables of a lineage.")
    ap.add_argument("--archive", default="archive", help="lineage directory (default: archive/)")
    sub = ap.add_subparsers(dest="command", required=True)
    p_plot = sub.add_parser("plot", help="write lineage.{png,svg} and trajectory.{png,svg}")
    p_plot.add_argument("--out", default=None, help="output directory (default: the archive directory)")
    p_plot.add_argument("--hide", default="", metavar="STATUSES",
                        help="comma-separated statuses not to draw, e.g. screened,failed (failed: every failure)")
    p_plot.add_argument("--suite", default=None,
                        help="the trajectory follows the best of this suite (default: the newest commit of any)")
    p_plot.add_argument("--fold", action="store_true",
                        help="draw the --hide statuses as one counted node per parent instead of dropping them")
    sub.add_parser("show", help="print one row per node")
    p_export = sub.add_parser("export", help="the graph as Mermaid or DOT")
    p_export.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p_export.add_argument("--out", default=None, help="write lineage.mmd / lineage.dot here instead of printing")
    for p in (p_plot, p_export):  # also accepted after the subcommand
        p.add_argument("--archive", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    try:
        lineage = Lineage.load(args.archive)
        if len(lineage) == 0:
            raise LineageError(f"no lineage at {args.archive} (no lineage.json, or no nodes in it)")
        if args.command == "show":
            print(table(lineage))
        elif args.command == "plot":
            hide = [h.strip() for h in args.hide.split(",") if h.strip()]
            for path in plot(lineage, args.out or args.archive, hide, args.fold, args.suite):
                print(path)
        else:
            text = to_mermaid(lineage) if args.format == "mermaid" else to_dot(lineage)
            if args.out is None:
                sys.stdout.write(text)
            else:
                path = Path(args.out) / ("lineage.mmd" if args.format == "mermaid" else "lineage.dot")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(path)
    except (LineageError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
