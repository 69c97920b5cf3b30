"""Knob space of the Hopper (sm_90a) FlashAttention forward seed kernel (`template.py.j2`).

A `Knobs` instance is rendered into the template as literals; together with the source hash and
the cutlass-dsl version it is the compile-cache key, hence frozen. `SPACE` declares the values each
field may take; a combination drawn from SPACE is either implemented correctly or rejected by the
kernel's `can_implement(spec)` with a reason (e.g. shared memory or register budget).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["Knobs", "SPACE", "DEFAULTS", "default_knobs", "smem_bytes"]


@dataclass(frozen=True)
class Knobs:
    # Rows of Q per CTA. The number of MMA (consumer) warp groups is derived: tile_m // 64, each
    # warp group owns 64 rows (one WGMMA M atom); the CTA has one more warp group, the producer.
    tile_m: int = 128
    tile_n: int = 128  # keys per K/V block (WGMMA N of QK^T, K of PV); multiple of 16
    num_stages: int = 2  # depth of the K and V TMA pipelines (each has its own mbarriers)
    mma_regs: int = 240  # setmaxnreg for each MMA warp group
    producer_regs: int = 24  # setmaxnreg for the producer warp group
    intra_wg_overlap: bool = True  # softmax of block j overlaps the QK^T of block j+1 and PV of j
    mma_pv_is_rs: bool = True  # P stays in registers for PV (WGMMA RS); False: P goes through smem
    pingpong: bool = True  # named barriers order the GEMM issue of the MMA warp groups (needs >= 2)
    pack_gqa: bool = False  # query heads of one KV head share an M tile (K/V read once per group)
    # CTA order: True groups the heads whose K/V fit in L2 (heads fastest, then m blocks);
    # False walks the m blocks of one head at a time. Causal is longest-first either way.
    head_swizzle: bool = True

    @property
    def num_mma_warp_groups(self) -> int:
        return self.tile_m // 64

    def replace(self, **kw) -> Knobs:
        return replace(self, **kw)


SPACE: dict[str, tuple] = {
    "tile_m": (64, 128, 192),
    "tile_n": (64, 80, 96, 112, 128, 144, 160, 176, 192),
    "num_stages": (1, 2, 3),
    "mma_regs": (160, 184, 200, 216, 232, 240, 256),
    "producer_regs": (24, 32, 40, 56),
    "intra_wg_overlap": (False, True),
    "mma_pv_is_rs": (False, True),
    "pingpong": (False, True),
    "pack_gqa": (False, True),
    "head_swizzle": (False, True),
}
assert set(SPACE) == {f.name for f in fields(Knobs)}

# Default knobs per head_dim: the fields that differ from Knobs(). Beside each row, the
# measurement that justifies it.
DEFAULTS: dict[int, dict] = {
    # FA4's d64 tile. H200 2026-11-22 (bench/seed_vs_fa4.py, MHA 16h s8k bf16, TFLOPS):
    # full 524 vs FA4 534 (0.98x), causal 476 vs 496 (0.96x); tile_m 128 (240 regs): 427 / 442.
    64: dict(tile_m=192, tile_n=128, mma_regs=160, producer_regs=32),
    # H200 2026-11-22, bench/seed_vs_fa4.py, d128 suite (24 configs, bf16, 32k tokens), same
    # run: geomean 0.978x FA4 (min 0.941, GQA 32/8 causal s16k), cuDNN 0.906x. Variants at
    # MHA / GQA 32/8, s8k / s16k vs this row's 632-663 (full) and 599-614 (causal) TFLOPS:
    # tile_n 176 651-666 full (a candidate) but 596-625 causal; 3 stages 632-645 / 591-617;
    # no pingpong 618-639 / 585-631; an earlier run: P in smem, no overlap, tile_n 112 and
    # tile_m 64 all lower (568-606, 573-605, 555-627, 438-472).
    128: dict(tile_m=128, tile_n=128),
    # FA4's d256 tile. H200 2026-11-22, MHA 16h s8k: full 677 vs FA4 712 (0.95x), causal 660
    # vs 677 (0.98x); tile_n 64: 680 / 656, the same within noise.
    256: dict(tile_m=128, tile_n=80),
}


def default_knobs(spec) -> Knobs:
    """Knobs for an `avo.spec.AttentionSpec`: the DEFAULTS row of the nearest head_dim at or above
    spec.head_dim; GQA packs query heads when the group divides the M tile; the head-grouped CTA
    order only for causal (H200 2026-11-22, d128 s8k/s16k: non-causal with it 579-611 TFLOPS vs
    632-663 without; causal without it 579-628 vs 599-614 with, a wash)."""
    hd = min((h for h in DEFAULTS if h >= spec.head_dim), default=max(DEFAULTS))
    k = Knobs(**DEFAULTS[hd], head_swizzle=spec.causal)
    if spec.qhead_per_kvhead > 1 and k.tile_m % spec.qhead_per_kvhead == 0:
        k = k.replace(pack_gqa=True)
    return k


def smem_bytes(head_dim: int, elem_bytes: int, k: Knobs) -> int:
    """Dynamic shared memory the kernel allocates (1 KB alignment per buffer, barriers included);
    the compiler does not check it against the 227 KB limit, so can_implement does."""
    def align(x):
        return (x + 1023) // 1024 * 1024

    q = align(k.tile_m * head_dim * elem_bytes)  # the O tile reuses Q's buffer
    kv = 2 * align(k.tile_n * head_dim * elem_bytes * k.num_stages)
    p = 1024 if k.mma_pv_is_rs else align(k.tile_m * k.tile_n * elem_bytes)  # RS: a stand-in
    return 1024 + q + kv + p
