"""Knob space of the Blackwell (sm_100a) FlashAttention forward seed kernel (`template.py.j2`).

A `Knobs` instance is rendered into the template as literals; together with the source hash and
the cutlass-dsl version it is the compile-cache key, hence frozen. `SPACE` declares the values each
field may take; a combination drawn from SPACE is either implemented or rejected by the kernel's
`can_implement(spec)` with a reason (tensor memory, shared memory or register budget).

No row below is a measurement: there is no B200 here. The defaults follow FA4's published
choices for this chip (flash_attn/cute/flash_fwd_sm100.py, 4.0.0b36) and are compile- and
resource-checked only (knowledge/blackwell.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["Knobs", "SPACE", "DEFAULTS", "default_knobs", "smem_bytes", "tmem_columns"]


@dataclass(frozen=True)
class Knobs:
    # Keys per K/V block: the N of S = Q K^T and the K of O += P V. S takes tile_n TMEM columns
    # per Q tile, P (16 bit) tile_n / 2 of them, inside S.
    tile_n: int = 128
    kv_stages: int = 2  # depth of the K and of the V TMA pipelines (each has its own mbarriers)
    softmax_regs: int = 192  # setmaxnreg of each of the two softmax warp groups
    correction_regs: int = 80  # setmaxnreg of the correction warp group
    other_regs: int = 48  # setmaxnreg of the MMA / load / epilogue warp group
    # Of every ex2_emu_period 16-column chunks of S, the last is exponentiated on the FMA pipes
    # (degree-3 polynomial) instead of MUFU; 0 = all on MUFU.
    ex2_emu_period: int = 0
    # Conditional rescaling: the running row max is only raised when the new max exceeds it by
    # more than this many powers of two (P stays <= 2^threshold); 0.0 = always exact max.
    rescale_threshold: float = 0.0
    # GQA: the query heads of one KV head share the M tiles (K/V loaded once per group); off,
    # each CTA is one query head and reads its KV head's K/V (L2 serves the group).
    pack_gqa: bool = False
    # 128-row Q tiles per CTA, one softmax warp group each: 2 ping-pong (FA4's design); 1 where
    # two tiles' S and O do not fit the 512 TMEM columns (head_dim 256).
    q_tiles: int = 2

    def replace(self, **kw) -> Knobs:
        return replace(self, **kw)


SPACE: dict[str, tuple] = {
    "tile_n": (64, 128),
    "kv_stages": (1, 2, 3),
    "softmax_regs": (160, 176, 184, 192, 200, 208),
    "correction_regs": (56, 64, 80, 96),
    "other_regs": (24, 32, 48, 56),
    "ex2_emu_period": (0, 2, 3, 4),
    "rescale_threshold": (0.0, 8.0),
    "pack_gqa": (False, True),
    "q_tiles": (1, 2),
}
assert set(SPACE) == {f.name for f in fields(Knobs)}

# Default knobs per head_dim: the fields that differ from Knobs(). Not timed (no B200). The
# register split is FA4's for d > 64 (192 / 80 / 48); FA4's d <= 64 split (200 / 64 / 48) left
# 8 bytes of stack (a spill) in this kernel's cubin at d64, 192 / 80 none (compile report,
# 2026-11-22). K/V stages: as many as 227 KB of shared memory holds (3 at d64, 2 at d128).
# Exact-max softmax and MUFU-only exp2 until a B200 says the knobs pay.
DEFAULTS: dict[int, dict] = {
    64: dict(tile_n=128, kv_stages=3),
    128: dict(tile_n=128, kv_stages=2),
    # one Q tile: S (128) + O (256) = 384 of 512 TMEM columns; 2 K/V stages of 64 keys fit smem
    256: dict(q_tiles=1, tile_n=64, kv_stages=2),
}


def default_knobs(spec) -> Knobs:
    """Knobs for an `avo.spec.AttentionSpec`: the DEFAULTS row of the nearest head_dim at or above
    spec.head_dim (the largest row for anything bigger, which can_implement then rejects)."""
    hd = min((h for h in DEFAULTS if h >= spec.head_dim), default=max(DEFAULTS))
    return Knobs(**DEFAULTS[hd])


def tmem_columns(head_dim: int, k: Knobs) -> int:
    """TMEM columns the layout uses: S_i (tile_n, P inside) and O_i (head_dim) per Q tile."""
    return k.q_tiles * (k.tile_n + head_dim)


def smem_bytes(head_dim: int, elem_bytes: int, k: Knobs) -> int:
    """Dynamic shared memory the kernel allocates: mbarriers and three fp32 row vectors per Q
    tile, two Q tiles (O is staged in their place), K and V stages; buffers aligned to 1 KB."""
    def align(x):
        return (x + 1023) // 1024 * 1024

    head = align(512 + 3 * k.q_tiles * 128 * 4)
    q = align(k.q_tiles * 128 * head_dim * elem_bytes)
    kv = 2 * align(k.kv_stages * k.tile_n * head_dim * elem_bytes)
    return head + q + kv
