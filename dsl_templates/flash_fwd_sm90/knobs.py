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

    def replace(self, **kw) -> "Knobs":
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
    # FA4's d64 tile. Correct (bf16/fp16, causal/full, MHA/GQA 4, H200 2026-11-22); speed
    # unmeasured. Compiles to 128 registers with a 56-byte stack at 3 MMA warp groups.
    64: dict(tile_m=192, tile_n=128, mma_regs=160, producer_regs=32),
    # H200 2026-11-22, bench/seed_vs_fa4.py, d128 suite (24 configs, bf16, 32k tokens): geomean
    # 0.954x FA4 (min 0.908), cuDNN 0.906x. Alternatives at MHA/GQA 32/8, s8k/s16k, TFLOPS vs
    # this row's 611-633 (full) / 587-613 (causal): 3 stages 603-632, tile_n 176 582-638,
    # tile_n 112 555-627, no pingpong 594-623, P in smem 568-606, no overlap 573-605, neither
    # overlap nor pingpong 531-563, tile_m 64 438-472: none better beyond run-to-run noise.
    128: dict(tile_m=128, tile_n=128),
    # FA4's d256 tile. Correct (as d64); speed unmeasured.
    256: dict(tile_m=128, tile_n=80),
}


def default_knobs(spec) -> Knobs:
    """Knobs for an `avo.spec.AttentionSpec`: the DEFAULTS row of the nearest head_dim at or above
    spec.head_dim; GQA packs query heads when the group divides the M tile; the head-grouped CTA
    order only for causal (FA4's orders: unmeasured here which is better for non-causal)."""
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
    p = 0 if k.mma_pv_is_rs else align(k.tile_m * k.tile_n * elem_bytes)
    return 1024 + q + kv + p
