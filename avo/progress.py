"""What a run tells the person watching it: a JSONL event log always (runs/<name>/events.jsonl),
a live panel on a terminal (rich, when installed), plain log lines otherwise. The panel has a line
per candidate in flight: where it runs (GPU, host) and its stage (`stage` events, avo.cluster)."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from pathlib import Path

__all__ = ["Progress"]


class Progress:
    def __init__(self, events_path: str | Path, title: str, live: bool | None = None):
        self.events_path = Path(events_path)
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.recent: deque = deque(maxlen=12)
        self.counts: dict[str, int] = {}
        self.best: dict = {}
        self.baselines: dict = {}
        self.tokens = 0
        self.cost = 0.0
        self.started = time.time()
        self.in_flight: dict[str, dict] = {}  # candidate id -> its latest `stage` event
        self._lock = threading.Lock()  # events come from a thread per GPU
        self._live = None
        if live is None:
            live = sys.stdout.isatty()
        if live:
            try:
                from rich.live import Live

                self._live = Live(self._panel(), refresh_per_second=2, transient=False)
                self._live.start()
            except ImportError:
                self._live = None

    def event(self, kind: str, **data) -> None:
        with self._lock:
            self._event(kind, data)

    def _event(self, kind: str, data: dict) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **data}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        if kind == "candidate":
            self.counts[data["status"]] = self.counts.get(data["status"], 0) + 1
            self.recent.append(data)
            self.tokens += int(data.get("tokens") or 0)
            self.cost += float(data.get("cost_usd") or 0.0)
            self.in_flight.pop(data.get("id"), None)
        elif kind == "incumbent":
            self.best = data
        elif kind == "baselines":
            self.baselines = data.get("geomean", {})
        elif kind == "stage":
            self.in_flight[data["id"]] = {**data, "since": record["time"]}
        elif kind in ("stage_done", "lost"):
            if self.in_flight.get(data["id"], {}).get("stage") == data.get("stage") or kind == "lost":
                self.in_flight.pop(data["id"], None)
        if self._live is not None:
            self._live.update(self._panel())
        else:
            print(self._line(kind, data), flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()

    def _line(self, kind: str, data: dict) -> str:
        stamp = time.strftime("%H:%M:%S")
        if kind == "candidate":
            ratio = f" ratio {data['ratio']:.4f}" if data.get("ratio") else ""
            return (f"[{stamp}] {data['id']} {data['operator']:6s} {data['status']:18s} "
                    f"geomean {_tflops(data.get('geomean')):>7s}{ratio}  {str(data.get('diagnosis', ''))[:110]}")
        if kind in ("stage", "stage_done"):
            took = f" done in {data['end'] - data['start']:.1f} s" if kind == "stage_done" else ""
            return f"[{stamp}] {_where(data):>14s}  {data['id']} {data['stage']}{took}"
        details = " ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict | list))
        return f"[{stamp}] {kind}: {details}"

    def _panel(self):
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=True)
        for column in ("id", "operator", "status", "geomean", "ratio", "diagnosis"):
            table.add_column(column, overflow="fold" if column == "diagnosis" else "ellipsis")
        for c in self.recent:
            table.add_row(c["id"], c["operator"], c["status"], _tflops(c.get("geomean")),
                          f"{c['ratio']:.4f}" if c.get("ratio") else "-", str(c.get("diagnosis", ""))[:90])
        minutes = (time.time() - self.started) / 60
        best = (f"best {self.best.get('id', '-')} geomean {self.best.get('geomean', 0):.1f}"
                if self.best else "best: none yet")
        anchors = "  ".join(f"{k} {v:.1f}" for k, v in self.baselines.items())
        counts = "  ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        header = f"{best}   {anchors}\n{counts}   tokens {self.tokens}   cost ${self.cost:.2f}   {minutes:.1f} min"
        now = time.time()
        flights = [f"{_where(f):>14s}  {f['id']}  {f['stage']:8s} {now - f['since']:6.0f} s"
                   for f in sorted(self.in_flight.values(), key=lambda f: (_where(f), f["id"]))]
        return Panel(Group(Text(header), *([Text("\n".join(flights))] if flights else []), table), title=self.title)


def _where(data: dict) -> str:
    """Where a stage runs: `gpu1`, `10.0.0.7 gpu0`, `cpu` (a compile)."""
    slot = "cpu" if data.get("gpu") is None else f"gpu{data['gpu']}"
    return f"{data['host']} {slot}" if data.get("host") else slot


def _tflops(value) -> str:
    """A geomean for the log: `-` where nothing was measured (failed or screened), never 0.0."""
    return f"{value:.1f}" if value else "-"
