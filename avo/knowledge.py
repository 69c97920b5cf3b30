"""Search and read the agent's reading material: knowledge/ (markdown, split into sections) and the
installed reference sources (CuTe DSL, FA4, quack: Python files, split into line windows).

Ranking is BM25 over word tokens, with identifiers also split at underscores, so
`setmaxnreg`, `warpgroup_reg_alloc` and "register allocation" all find something. No network, no
model. Reads are confined to their roots: a path that is absolute or climbs out with `..` (or
through a symlink) is refused with `PathError`.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["KNOWLEDGE_DIR", "Hit", "Index", "PathError", "confined_path", "knowledge_index", "number_lines",
           "read_text", "reference_roots", "source_index"]

KNOWLEDGE_DIR = Path(__file__).resolve().parent.parent / "knowledge"
_WINDOW = 40  # lines per chunk of a source file
_TOKEN = re.compile(r"[A-Za-z0-9_]+")
_K1, _B = 1.2, 0.75


class PathError(ValueError):
    """A path outside the allowed roots (or one that does not exist there)."""


@dataclass(frozen=True)
class Hit:
    path: str  # relative to its root, with the root's label first for reference sources
    heading: str  # markdown heading, or "lines a-b" for source windows
    line: int  # first line of the section (1-based)
    snippet: str
    score: float

    def as_dict(self) -> dict:
        return {"path": self.path, "heading": self.heading, "line": self.line, "snippet": self.snippet,
                "score": round(self.score, 3)}


def _tokens(text: str) -> list[str]:
    out = []
    for word in _TOKEN.findall(text.lower()):
        out.append(word)
        if "_" in word:
            out.extend(p for p in word.split("_") if p)
    return out


class Index:
    """BM25 over (path, heading, line, text) documents."""

    def __init__(self, docs: list[tuple[str, str, int, str]], window: int = 0):
        self.docs = docs
        self.window = window  # > 0: documents are overlapping line windows of this size
        self._tf = [Counter(_tokens(f"{heading} {heading} {text}")) for _, heading, _, text in docs]
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg = sum(self._len) / max(len(self._len), 1)
        df = Counter(term for tf in self._tf for term in tf)
        n = len(docs)
        self._idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    @classmethod
    def from_markdown(cls, root: str | Path) -> Index:
        """One document per heading section of every .md file under root."""
        root = Path(root)
        docs = []
        for path in sorted(root.rglob("*.md")):
            rel = str(path.relative_to(root))
            heading, start, lines = path.stem, 1, []
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if line.startswith("#"):
                    if any(x.strip() for x in lines):
                        docs.append((rel, heading, start, "\n".join(lines)))
                    heading, start, lines = line.lstrip("#").strip(), number, []
                else:
                    lines.append(line)
            if any(x.strip() for x in lines):
                docs.append((rel, heading, start, "\n".join(lines)))
        return cls(docs)

    @classmethod
    def from_sources(cls, roots: dict[str, Path], suffix: str = ".py") -> Index:
        """Overlapping windows of _WINDOW lines of every source file under each labelled root."""
        docs = []
        for label, root in roots.items():
            for path in sorted(Path(root).rglob(f"*{suffix}")):
                rel = f"{label}/{path.relative_to(root)}"
                lines = path.read_text(errors="replace").splitlines()
                step = _WINDOW // 2
                for start in range(0, max(len(lines), 1), step):
                    chunk = lines[start:start + _WINDOW]
                    if chunk:
                        docs.append((rel, f"lines {start + 1}-{start + len(chunk)}", start + 1, "\n".join(chunk)))
                    if start + _WINDOW >= len(lines):
                        break
        return cls(docs, window=_WINDOW)

    def search(self, query: str, k: int = 8, under: str = "") -> list[Hit]:
        """The k best sections for `query` (only paths starting with `under` when given); at most
        two per source file (four per markdown file), never two overlapping windows."""
        terms = [t for t in dict.fromkeys(_tokens(query)) if t in self._idf]
        if not terms:
            return []
        scored = []
        for i, tf in enumerate(self._tf):
            if under and not self.docs[i][0].startswith(under):
                continue
            score = 0.0
            norm = _K1 * (1 - _B + _B * self._len[i] / (self._avg or 1))
            for t in terms:
                f = tf.get(t)
                if f:
                    score += self._idf[t] * f * (_K1 + 1) / (f + norm)
            if score > 0:
                scored.append((score, i))
        scored.sort(key=lambda x: -x[0])
        taken: dict[str, list[int]] = {}
        hits = []
        for score, i in scored:
            path, heading, line, text = self.docs[i]
            lines = taken.setdefault(path, [])
            if len(lines) >= (2 if self.window else 4) or any(abs(line - other) < self.window for other in lines):
                continue
            lines.append(line)
            hits.append(Hit(path, heading, line, _snippet(text, terms), score))
            if len(hits) == k:
                break
        return hits


def _snippet(text: str, terms: list[str], width: int = 360) -> str:
    """The stretch of text around the first line that contains the most query terms."""
    lines = text.splitlines()
    if not lines:
        return ""
    best = max(range(len(lines)), key=lambda i: sum(t in lines[i].lower() for t in terms))
    out, i = [], best
    while i < len(lines) and sum(len(x) + 1 for x in out) < width:
        out.append(lines[i])
        i += 1
    return "\n".join(out).strip()[:width]


def reference_roots() -> dict[str, Path]:
    """The installed reference sources, found without importing them: label -> directory."""
    roots = {}
    for label, package, sub in (("cutlass", "cutlass", ""), ("flash_attn/cute", "flash_attn", "cute"),
                                ("quack", "quack", "")):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]) / sub
        if path.is_dir():
            roots[label] = path.resolve()
    return roots


def confined_path(roots: dict[str, Path], path: str) -> Path:
    """Resolve `path` ("label/rest" or, with a single root labelled "", just "rest") inside one of
    `roots`; refuse absolute paths, `..` and anything whose real path leaves the root."""
    if not isinstance(path, str) or not path.strip():
        raise PathError("empty path")
    path = path.strip()
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        raise PathError(f"{path!r} is absolute: give a path relative to {', '.join(roots) or 'the root'}")
    if ".." in Path(path).parts:
        raise PathError(f"{path!r} climbs out with '..'")
    for label, root in sorted(roots.items(), key=lambda kv: -len(kv[0])):
        if label and not (path == label or path.startswith(label + "/")):
            continue
        rest = path[len(label):].lstrip("/") if label else path
        root = Path(root).resolve()
        target = (root / rest).resolve()
        if target != root and root not in target.parents:
            raise PathError(f"{path!r} resolves outside {label or root}")
        if not target.exists():
            raise PathError(f"{path!r} does not exist")
        return target
    raise PathError(f"{path!r} is not under any of: {', '.join(sorted(roots))}")


def read_text(target: Path, start_line: int = 1, max_lines: int = 400) -> str:
    """Numbered lines of a file (or the listing of a directory)."""
    if target.is_dir():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir()
                         if not p.name.startswith((".", "__pycache__")))
        return "\n".join(entries)
    return number_lines(target.read_text(errors="replace"), start_line, max_lines)


def number_lines(text: str, start_line: int = 1, max_lines: int = 400) -> str:
    """Lines start_line.. of text, numbered, with a note on how to read on."""
    lines = text.splitlines()
    start = max(int(start_line), 1)
    chunk = lines[start - 1:start - 1 + max(int(max_lines), 1)]
    body = "\n".join(f"{start + i:5d}  {line}" for i, line in enumerate(chunk))
    tail = start - 1 + len(chunk)
    if tail < len(lines):
        body += f"\n[... {len(lines) - tail} more lines; call again with start_line={tail + 1}]"
    return body


@lru_cache(maxsize=4)
def _cached_markdown(root: str, stamp: tuple) -> Index:
    return Index.from_markdown(root)


@lru_cache(maxsize=2)
def _cached_sources(key: tuple) -> Index:
    return Index.from_sources({label: Path(p) for label, p in key})


def knowledge_index(root: str | Path = KNOWLEDGE_DIR) -> Index:
    """The markdown index, rebuilt when a file under root changes (the agent's notes do)."""
    root = Path(root)
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(root.rglob("*.md")))
    return _cached_markdown(str(root), stamp)


def source_index(roots: dict[str, Path]) -> Index:
    """The reference-source index (built once per process; about a second)."""
    return _cached_sources(tuple(sorted((k, str(v)) for k, v in roots.items())))

