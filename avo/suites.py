"""Benchmark suites: named sets of attention shapes, declared in configs/suites/<name>.yaml.

A suite expands to timed `ShapeConfig`s (seqlen x causal x heads at a fixed token count, as in
the AVO paper: batch = tokens / seqlen) plus extra correctness-only shapes (ragged lengths).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from avo.reference import attention_flops
from avo.spec import AttentionSpec

__all__ = ["SUITES_DIR", "ShapeConfig", "Suite", "SuiteError", "load_suite", "random_configs", "suite_names"]

SUITES_DIR = Path(__file__).resolve().parent.parent / "configs" / "suites"
_KEYS = {"name", "dtype", "head_dim", "tokens", "seqlens", "causal", "heads", "correctness", "include"}


class SuiteError(ValueError):
    pass


@dataclass(frozen=True)
class ShapeConfig:
    name: str
    batch: int
    seqlen_q: int
    seqlen_k: int
    heads_q: int
    heads_kv: int
    head_dim: int
    causal: bool
    dtype: str = "bf16"

    @property
    def spec(self) -> AttentionSpec:
        return AttentionSpec(dtype=self.dtype, head_dim=self.head_dim, causal=self.causal,
                             qhead_per_kvhead=self.heads_q // self.heads_kv)

    @property
    def flops(self) -> float:
        return attention_flops(self.batch, self.heads_q, self.seqlen_q, self.seqlen_k, self.head_dim, self.causal)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Suite:
    name: str
    timed: tuple[ShapeConfig, ...]
    correctness: tuple[ShapeConfig, ...]  # checked, not timed

    @property
    def specs(self) -> list[AttentionSpec]:
        """Each distinct specialization once, in suite order: what a candidate is compiled for."""
        seen: dict[AttentionSpec, None] = {}
        for config in self.timed + self.correctness:
            seen.setdefault(config.spec)
        return list(seen)


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SuiteError(f"no suite {name_or_path!r}: known suites are {', '.join(suite_names())}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML ({exc})") from None
    unknown = set(data) - _KEYS
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name = data.get("name", path.stem)
    if "include" in data:
        parts = [load_suite(str(path.parent / f"{p}.yaml")) for p in data["include"]]
        return Suite(name, tuple(c for p in parts for c in p.timed), tuple(c for p in parts for c in p.correctness))
    try:
        return _expand(name, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SuiteError(f"{path}: {type(exc).__name__}: {exc}") from None


def _expand(name: str, data: dict) -> Suite:
    dtype, head_dim, tokens = data.get("dtype", "bf16"), int(data["head_dim"]), int(data["tokens"])
    timed, extra = [], []
    for heads_q, heads_kv in data["heads"]:
        if heads_q % heads_kv:
            raise ValueError(f"heads {heads_q}/{heads_kv}: query heads must be a multiple of KV heads")
        family = "mha" if heads_q == heads_kv else "gqa"
        for seqlen in data["seqlens"]:
            if tokens % seqlen:
                raise ValueError(f"tokens {tokens} is not a multiple of seqlen {seqlen}")
            for causal in data["causal"]:
                label = f"{family}{heads_q}x{heads_kv}_s{_short(seqlen)}_{'causal' if causal else 'full'}"
                timed.append(ShapeConfig(label, tokens // seqlen, seqlen, seqlen, heads_q, heads_kv, head_dim,
                                         bool(causal), dtype))
    for batch, seqlen_q, seqlen_k, heads_q, heads_kv in data.get("correctness", []):
        for causal in data["causal"]:
            label = f"check_b{batch}_q{seqlen_q}_k{seqlen_k}_h{heads_q}x{heads_kv}_{'causal' if causal else 'full'}"
            extra.append(ShapeConfig(label, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, bool(causal),
                                     dtype))
    for config in timed + extra:
        _ = config.spec  # AttentionSpec validates dtype and head_dim
    return Suite(name, tuple(timed), tuple(extra))


def random_configs(specs, rng, max_len: int = 1536) -> list[ShapeConfig]:
    """Two ragged correctness shapes per spec, drawn fresh for each evaluation: batch 2-3, one with
    seqlen_q < seqlen_k and one with seqlen_q > seqlen_k, lengths anywhere up to max_len, 1 or 2 KV
    heads. A kernel tuned to pass the suite's fixed shapes meets shapes nobody chose."""
    out = []
    for spec in specs:
        for longer_keys in (True, False):
            short, long = sorted(rng.sample(range(1, max_len + 1), 2))
            seqlen_q, seqlen_k = (short, long) if longer_keys else (long, short)
            batch, heads_kv = rng.randint(2, 3), rng.randint(1, 2)
            heads_q = heads_kv * spec.qhead_per_kvhead
            name = (f"random_b{batch}_q{seqlen_q}_k{seqlen_k}_h{heads_q}x{heads_kv}_"
                    f"{'causal' if spec.causal else 'full'}")
            out.append(ShapeConfig(name, batch, seqlen_q, seqlen_k, heads_q, heads_kv, spec.head_dim, spec.causal,
                                   spec.dtype))
    return out


def _short(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
