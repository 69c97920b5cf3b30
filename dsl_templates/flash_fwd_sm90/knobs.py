"""Knob space of the Hopper (sm_90a) FlashAttention forward seed kernel (`template.py.j2`).

A `Knobs` instance is one assignment; a `KnobTable` gives each spec its own (a default Knobs and
ordered override rows keyed on spec fields). The table is rendered into the template as Python
literals (KNOBS, KNOBS_BY_SPEC), so one source serves every spec with its own choices; the source
hash and the cutlass-dsl version are the compile-cache key. `SPACE` declares the values each
field may take; a combination drawn from SPACE is either implemented correctly or rejected by the
kernel's `can_implement(spec)` with a reason (e.g. shared memory or register budget).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from avo.spec import AttentionSpec

__all__ = ["NOT_SEARCHED", "Knobs", "KnobTable", "SEED_TABLE", "SPACE", "default_knobs", "effective", "smem_bytes"]


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
    # With intra_wg_overlap: scale O by the previous block's softmax factor after issuing QK^T and
    # before PV (the multiplies overlap the QK^T GEMM) instead of after the PV wait (FA4 does this
    # for head_dim > 128, where O is 128 registers per thread). d256: +4.4% (the seed table's d256
    # row); at d128 ptxas then leaves most of the softmax FFMAs after the PV wait (a d256 knob).
    rescale_o_before_pv: bool = False
    # Every mbarrier wait of the MMA warp groups probes once (try_wait) before its waiting loop;
    # ptxas then polls twice before sleeping. d64 +0.17% (v0048), with unmask_full_blocks d64
    # +0.3%, paper +0.6% (v0049/v0050); at d256 the two cost 3% (H100 2026-11-22, v0050's source
    # on hdim256 0.9703x v0043): both off in the d256 row, which then compiles to v0043's SASS.
    try_wait_first: bool = True
    # A non-causal K/V block whose keys all lie inside seqlen_k skips the bounds mask (a uniform
    # branch instead of a compare per column and a select per element on each tile's first block).
    unmask_full_blocks: bool = True
    # The causal mask through one bitmask per row and 32 columns (R2P) instead of a compare per
    # column. H100 2026-11-23, judged against the seed of the time: hdim64 1.0012x [1.0007, 1.0020]
    # (v0052), paper 0.9991x [0.9971, 1.0014] (a tie), hdim256 0.9980x [0.9958, 0.9993]: a d64 knob.
    bitmask_causal_mask: bool = False
    # Tiles one CTA computes one after the other (1: one tile per CTA, FA4's launch). More: the grid
    # shrinks by that factor, and each CTA's pipelines run on from tile to tile, so the next tile's
    # first K block loads during this tile's last PV GEMM and epilogue, and no launch or setup sits
    # between tiles. Needs pingpong off. H100 2026-11-23, paper vs v0056: 2 tiles 0.9736x (v0057):
    # the K/V loop grows by 37 instructions, which costs more than the per-tile costs saved.
    tiles_per_cta: int = 1
    # O staged in a shared buffer of its own instead of Q's: with tiles_per_cta > 1 the next tile's
    # Q then loads during this tile's last PV GEMM and epilogue (Q's buffer is free after the last
    # QK^T GEMM). One more tile_m x head_dim buffer (fits at d64 and d128). With 2 tiles 0.9736x (v0058).
    separate_o_buffer: bool = False
    # Every k-th column of each softmax row (k = this; 0: none) computes its exp2 on the FMA pipes (a
    # degree-3 polynomial, 9 instructions) instead of the MUFU (16 results per clock per SM). At d64
    # a tile's exp2s take the MUFU as long as its GEMMs take the tensor cores (192 x 128 exps per
    # K block at 16 per clock: 1536 clocks, the same as its two GEMMs at peak), so the warp groups'
    # softmaxes queue on the MUFU; FA4 does this on Blackwell. H100 2026-11-23, hdim64 vs v0052: k=8
    # 0.9556x, k=4 0.8988x, k=2 0.8062x (v0061-v0063): d64 is issue-bound, not MUFU-bound.
    exp2_fma_every: int = 0
    # The softmax row sums on the tensor cores: each PV GEMM also multiplies P by a K/V-block-tall
    # column of ones (a second WGMMA, N = 8, from the same P registers), and that accumulator is
    # rescaled with O, so it holds the row sums at the end. This drops the per-element FADDs of
    # the row sums (64 per thread and K block at d64 and d128) and the final shuffles, for about
    # 1/16 more tensor work at d128 (1/8 at d64). The sums are of P as rounded for the GEMM (bf16 or
    # fp16), the same P as O's numerator. Needs mma_pv_is_rs. H100 2026-11-23: hdim64 0.9848x,
    # paper 0.7986x (v0065, v0066): the N=8 GEMM in the PV group costs far more than the FADDs.
    row_sum_by_mma: bool = False
    # A row keeps its running max until the new max exceeds it by more than 8 (log2 units of the
    # scaled scores), and O is rescaled only when some row of the warp took a new max (a warp
    # vote, a uniform branch): after the first K blocks the max rarely moves that far, so the
    # 32 (d64) or 64 (d128) FMULs per thread and K block of O's rescale are skipped. P is then at
    # most 2^8, the row sums at most 2^8 per key: far inside fp32, bf16 and fp16. FA4 does this on
    # Blackwell. The paths that rescale O after the PV GEMM only (not rescale_o_before_pv). H100
    # 2026-11-23: causal d128 +0.4-1.6% per config (v0069), d256 1.0089x (v0070): the seed table's.
    lazy_rescale: bool = False
    # Non-causal only: the tiles of the last, partial wave (n_tiles mod NUM_SMS) are split along
    # the keys over a cluster of this many CTAs (0: off), whose partial O and row statistics are
    # combined through distributed shared memory (no workspace in global memory). The paper's
    # shapes are 4096 (MHA) or 8192 (GQA) tiles on 132 SMs: 31.03 or 62.06 waves, so the last 4
    # or 8 tiles run alone for a whole tile time (~3% / ~1.5%); split 8 ways they take ~1/8 of it.
    # The rest of the tiles run in a launch of their own, just before. H100 2026-11-23: paper (d128,
    # 8) 0.9994x v0069 (v0071): long full configs up to +1.5%, s4k full -0.5 to -0.8% (the second
    # launch); hdim256 (8) 1.0008x (v0073); hdim64 (2) 1.0013x (v0074; v0075 with one launch where
    # there is no last wave to split, the seed table's). The last
    # wave cost far less than the 3% the tile count suggests (likely: the SMs do not finish in step).
    tail_kv_split: int = 0
    # Non-causal only: CTAs of two adjacent m blocks of a head run as a cluster and share their
    # K/V blocks: each loads half of every block by TMA multicast into both CTAs' shared memory,
    # which halves the K/V traffic from L2 (an estimated ~6 TB/s on the paper's d128 shapes, and
    # the GPU runs at its power cap). Needs the 3-D grid (head_swizzle off) and one tile per CTA.
    # H100 2026-11-23, paper vs v0069: 0.9910x [0.9884, 0.9931] (v0072), full configs -1 to -4%:
    # the two CTAs wait on each other's releases, which costs more than the traffic saved.
    kv_multicast: bool = False
    # With tail_kv_split: the split launch may start while the main launch drains (programmatic
    # dependent launch): each main CTA signals at its start, so once the last one is resident the
    # split tiles' clusters take SMs as they free instead of after the whole main grid has ended,
    # and the launch gap between the two goes. The two write disjoint tiles and read only inputs;
    # each split CTA waits for the main grid before it exits, so the forward ends when both have.
    # H100 2026-11-23: paper (d128, split 8) 1.0028x [1.0011, 1.0046] v0071, full configs +0.2 to
    # +0.8% (v0077); hdim64 1.0005x (v0078); hdim256 1.0014x, a tie (v0079). With 4-CTA clusters
    # at d128 instead of 8: 1.0002x [0.9987, 1.0017] v0079 (v0080).
    tail_pdl: bool = False
    # With tail_kv_split: split the last wave only when each CTA of a split gets at least this many
    # K/V blocks (a rule at run time on seqlen_k; below it the one unsplit launch). With few keys
    # per CTA the second launch and the merge may cost more than the last wave they shorten. H100
    # 2026-11-23, MHA full d128 (split 8, PDL) against no split, a knob A/B: s4k (4 blocks per
    # CTA) 0.9940x, s8k (8) 1.0023x, s16k (16) 1.019x, s32k (32) 1.037x. Judged with 8 at d128
    # (no split at s4k) on paper against v0079: 0.9994x [0.9972, 1.0014], a tie; the s4k full
    # configs -0.04 to +0.13% (v0083, committed; bench/results/2026-11-23e_h100).
    tail_split_min_blocks: int = 1
    # Q held in registers for the QK^T GEMM (WGMMA RS), loaded from shared memory once per tile
    # (ldmatrix) after it lands: every K/V block's QK^T GEMM then reads only K from shared memory,
    # 1/5 less operand traffic per block at d64 and d128 (Q 64 x d and K tile_n x d per warp group,
    # V tile_n x d), and less energy per block on a GPU that runs at its power cap. Costs
    # head_dim / 4 registers per thread (32 at d128; 223 of 240 used, no spills). H100 2026-11-23,
    # paper (all d128) vs v0079: 0.9923x [0.9899, 0.9942] (v0081), GQA full -1.1 to -1.4%: the
    # operand traffic from shared memory is not what limits the d128 loop.
    q_in_registers: bool = False
    # With intra_wg_overlap and P in registers: P goes to 16 bit into a second register buffer while
    # the PV GEMM still reads the first (the two alternate from K/V block to K/V block), before the
    # wait for that GEMM instead of after it. After the wait only O's rescale then stands between
    # the PV GEMM landing and the next QK^T issue (the conversions read the S accumulator, which the
    # next QK^T GEMM overwrites). Costs tile_n / 4 registers per thread (32 at d128; d64's 160
    # cannot hold them). Compiled for d128 (2026-11-23): 64 B of stack (P spilled around the first
    # block) and ptxas then serializes every WGMMA (a wait after each HGMMA, in every loop): the 240
    # registers of a d128 MMA thread cannot hold a second P.
    p_double_buffer: bool = False
    # The producer, once its tile's first loads are issued, prefetches into L2 (TMA prefetch, no
    # shared memory) the Q tile of the tile NUM_SMS places later in the launch order: about the
    # tile some SM starts one tile time from now, whose first load then hits L2 instead of DRAM.
    # Q is the one operand a tile reads that no earlier tile brought into L2 (the K/V blocks are
    # shared by the m blocks of a head); its DRAM latency sits in every tile's start, when the
    # SM's tensor cores wait (1 CTA per SM). One tile's Q per CTA: 16-64 KB of L2 per SM. H100
    # 2026-11-23, paper against v0079: 0.9950x [0.9943, 0.9957] (v0084): MHA s4k full +0.3%,
    # causal -0.4 to -1.1%, the rest -0.1 to -0.6%: a tile's start does not wait on Q's DRAM
    # latency enough to repay the producer's extra work and the L2 it takes.
    prefetch_next_q: bool = False
    # The softmax row sums as this many interleaved chains of adds, summed at the end (1: one chain,
    # TensorSSA's reduce). At d64 ptxas leaves 59 of a K/V block's 66 exp2s after the wait for the
    # PV GEMM (FA4's kernel: 53), where ncu puts our loop's extra time (knowledge/tried.md); with 4
    # chains it leaves 54-56. H100 2026-11-23, hdim64 against v0083: 0.9788x [0.9781, 0.9795]
    # (v0086), every config lower: where ptxas puts the exp2s is not the whole story.
    row_sum_chains: int = 1
    # The overlapped loop's unmasked K/V blocks take no row max: P = exp2(S - m) with m each row's
    # max as the blocks before left it (the first block and the masked ones take theirs), and each
    # thread's sum of a row's P values then checks that no P exceeded FROZEN_MAX_SUM_LIMIT (an
    # upper bound on every one of them; +inf when a score overflowed the exp2). Where a row of the
    # warp went over, the warp computes that block's scores again from Q and K in shared memory
    # and takes the exact online softmax (new max, O and the sums rescaled); softmax is exact for
    # any reference m, so the result only differs in rounding. Drops per K/V block and thread the
    # row max (64 FMNMX at tile_n 128, its shuffles), the rescale factor's exp2 and O's rescale (32
    # FMULs at d64, 64 at d128); rows whose max keeps rising pay the slow path instead. Yields to
    # lazy_rescale, rescale_o_before_pv, row_sum_by_mma, p_double_buffer, exp2_fma_every,
    # row_sum_chains and intra_wg_overlap off, which change that softmax their own way (effective()).
    frozen_row_max: bool = False
    # With frozen_row_max: a warp where some row went over moves each such row's reference up to
    # its largest P (P, the row sums and O scaled once by 1 / that P, which then is 1 as in the
    # exact softmax; about 150 instructions) instead of recomputing the block's scores from shared
    # memory one fp32 FMA at a time (about 18k instructions per thread at d64); only a P past
    # 2^120 (or +inf) still takes that rescore. Without it, a key far above a row's standing max
    # arriving late in the row's visit (an attention sink: key 0 is visited last) or logits that
    # keep rising cost the rescore: H100 2026-11-23 (seventh session, bench/frozen_inputs.py at
    # 2ebedbb, s8k, against the exact softmax of v0083), v0088 at d128: sink 0.65x (causal
    # 0.52x), rising 0.097x; with it (v0091): sink 1.005x / 1.013x, rising 0.87x / 0.85x, d64 sink
    # 1.05x, rising 0.86x. On the judge's N(0, 1) inputs a tie at d128 and d256 (v0091 0.9985x [0.9965,
    # 1.0005], v0093 0.9993x [0.9978, 1.0004]) and 0.9992x [0.9985, 0.9998] at d64 (v0092,
    # rejected). On in the seed everywhere; not searched: turning it off only buys that 0.1% on
    # the inputs the judge times, against those cliffs on inputs it does not.
    frozen_over_in_place: bool = False
    # With frozen_over_in_place: the in-place rescale of P, the sums and the row max runs before the
    # wait for the PV GEMM (it overlaps that GEMM, as the exact softmax's row max does); only O's
    # rescale waits for it. Where every block goes over (logits that keep rising) the in-place
    # path after the wait cost 13-15% against the exact softmax (H100 2026-11-23, seventh session,
    # bench/frozen_inputs.py at 2ebedbb). Judged (H100 2026-11-23, eighth session): paper v0094
    # 1.0250x [1.0226, 1.0274] v0091 (every config +0.6 to +5%; 1.078x FA4; on the judge's shaped
    # logits sink 1.021x, rising 1.030x, falling 1.024x), hdim256 v0096 0.9999x [0.9988, 1.0015]
    # v0093 (a tie; rising 1.013x), hdim64 v0095 0.9896x [0.9892, 0.9901] v0087 (rejected). On in
    # the seed for d128 and d256 (TABLE_ROWS); not searched.
    frozen_over_early: bool = False

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
    "rescale_o_before_pv": (False, True),
    "try_wait_first": (False, True),
    "unmask_full_blocks": (False, True),
    "bitmask_causal_mask": (False, True),
    "tiles_per_cta": (1, 2, 4),
    "separate_o_buffer": (False, True),
    "exp2_fma_every": (0, 2, 4, 8),
    "row_sum_by_mma": (False, True),
    "lazy_rescale": (False, True),
    "tail_kv_split": (0, 2, 4, 8),
    "kv_multicast": (False, True),
    "tail_pdl": (False, True),
    "tail_split_min_blocks": (1, 2, 4, 8, 16),
    "q_in_registers": (False, True),
    "p_double_buffer": (False, True),
    "prefetch_next_q": (False, True),
    "row_sum_chains": (1, 4),
    "frozen_row_max": (False, True),
    "frozen_over_in_place": (False, True),
    "frozen_over_early": (False, True),
}
assert set(SPACE) == {f.name for f in fields(Knobs)}
# Knobs the knob operator leaves as they are: each was measured and lost on the suites it was made
# for (the comment at each field says where and by how much). They stay valid values, for old
# nodes' tables and for hand-made candidates; random search would only spend trials on them.
NOT_SEARCHED = frozenset({"tiles_per_cta", "separate_o_buffer", "exp2_fma_every", "row_sum_by_mma",
                          "kv_multicast", "q_in_registers", "p_double_buffer", "prefetch_next_q",
                          "row_sum_chains", "frozen_over_in_place", "frozen_over_early"})
assert NOT_SEARCHED <= set(SPACE)

# The seed's knob table: one source serves every spec, each with its own knobs (KnobTable). Beside
# each row, the measurement that justifies it.
#
# The default is d128's. H200 2026-11-22, bench/seed_vs_fa4.py, d128 suite (24 configs, bf16, 32k
# tokens), same run: geomean 0.978x FA4 (min 0.941, GQA 32/8 causal s16k), cuDNN 0.906x. Variants
# at MHA / GQA 32/8, s8k / s16k vs its 632-663 (full) and 599-614 (causal) TFLOPS: tile_n 176
# 651-666 full (a candidate) but 596-625 causal; 3 stages 632-645 / 591-617; no pingpong 618-639 /
# 585-631; an earlier run: P in smem, no overlap, tile_n 112 and tile_m 64 all lower (568-606,
# 573-605, 555-627, 438-472).
TABLE_DEFAULT = Knobs(head_swizzle=False)
TABLE_ROWS = (
    # frozen_row_max on every spec (H100 2026-11-23, sixth session, each against v0083 on its suite):
    # hdim64 1.0635x [1.0627, 1.0642] (v0087, 1.046x FA4), paper (d128, in place of lazy rescale on
    # causal) 1.0298x [1.0276, 1.0314] (v0088, 1.062x FA4), hdim256 (in place of lazy rescale)
    # 1.0053x [1.0019, 1.0072] (v0089, 1.019x FA4). A row, not the default: a knob record that
    # predates the knob (a lineage node's table or flat knobs) reads the default for it, off.
    # With the in-place rescale where a row goes over (frozen_over_in_place, H100 2026-11-23,
    # seventh session): paper v0091 0.9985x [0.9965, 1.0005] v0088 (1.058x FA4), hdim256 v0093
    # 0.9993x [0.9978, 1.0004] v0089 (1.020x FA4), hdim64 0.9992x [0.9985, 0.9998] v0087 (v0092,
    # rejected: 0.08%), and without the rescore's cliffs on sink and rising-logit inputs (the
    # knob's comment has the numbers): kept on for d64 too. Its rescale before the PV wait
    # (frozen_over_early): paper v0094 1.0250x v0091, hdim256 v0096 a tie, hdim64 0.9896x (v0095,
    # rejected): d128 and d256 only.
    (dict(), dict(frozen_row_max=True, frozen_over_in_place=True)),
    (dict(head_dim=(128, 256)), dict(frozen_over_early=True)),
    # FA4's d64 tile. H200 2026-11-22 (bench/seed_vs_fa4.py, MHA 16h s8k bf16, TFLOPS):
    # full 524 vs FA4 534 (0.98x), causal 476 vs 496 (0.96x); tile_m 128 (240 regs): 427 / 442.
    # 3 stages: H100 2026-11-22, hdim64 suite vs v0043, 0.9997x [0.9993, 1.0002] (a tie, v0045), kept
    # so that the seed's d64 kernel is the measured v0049 (1.0031x v0045, 0.983x FA4).
    (dict(head_dim=64), dict(tile_m=192, num_stages=3, mma_regs=160, producer_regs=32)),
    # The causal mask as a bitmask (R2P): d64 1.0012x, paper (d128) a tie with causal configs
    # 1.001-1.008x, hdim256 0.998x (H100 2026-11-23, v0052-v0054).
    (dict(head_dim=(64, 128)), dict(bitmask_causal_mask=True)),
    # FA4's d256 tile. H200 2026-11-22, MHA 16h s8k: full 677 vs FA4 712 (0.95x), causal 660
    # vs 677 (0.98x); tile_n 64: 680 / 656, the same within noise. O rescaled before the PV issue
    # (the d256 seed until lazy rescale replaced it):
    # H100 2026-11-22, hdim256 suite, judged against v0041 (lineage v0043): 1.0441x [1.0401, 1.0486],
    # 0.9943x FA4 (v0041 was 0.959x), 1.144x cuDNN.
    # Lazy rescale instead (issue 13, H100 2026-11-23, against v0043): O rescaled after the PV
    # GEMM only when a row's max moved by more than 2^8, 1.0089x [1.0012, 1.0128], 1.0061x FA4;
    # since replaced by frozen_row_max (the first row), which drops the rescale and the max.
    (dict(head_dim=256), dict(tile_n=80, try_wait_first=False, unmask_full_blocks=False)),
    # The head-grouped CTA order for causal only. H200 2026-11-22, d128 s8k/s16k: non-causal with
    # it 579-611 TFLOPS vs 632-663 without; causal without it 579-628 vs 599-614 with, a wash.
    (dict(causal=True), dict(head_swizzle=True)),
    # GQA packs the query heads of a KV head into one M tile where the group divides it: tile_m
    # 128 (d128, d256) and 192 (d64).
    (dict(qhead_per_kvhead=(2, 4, 8, 16, 32, 64)), dict(pack_gqa=True)),
    (dict(head_dim=(128, 256), qhead_per_kvhead=128), dict(pack_gqa=True)),
    (dict(head_dim=64, qhead_per_kvhead=(3, 6, 12, 24, 48, 96, 192)), dict(pack_gqa=True)),
    # From issue 13's GQA transfer (a 30-minute knob run on the gqa suite, H100 2026-11-23,
    # bench/results/gqa_transfer/): causal GQA unpacked (its v0004, 1.0086x [1.0057, 1.0113]: causal
    # configs +2-4% but s32k -3%), no ping-pong (its v0007, 1.0055x [1.0026, 1.0083]). Brought back
    # to the paper suite against v0053 (H100 2026-11-23): no ping-pong for GQA only 1.0080x
    # [1.0054, 1.0104] (v0055), for all of d128 1.0118x [1.0097, 1.0141] (v0056, 1.015x FA4).
    (dict(head_dim=128), dict(pingpong=False)),
    (dict(head_dim=128, causal=True, qhead_per_kvhead=(2, 4, 8, 16, 32, 64, 128)), dict(pack_gqa=False)),
    # Lazy rescale on causal d128 (H100 2026-11-23, paper suite against v0056): on all of d128
    # 1.0026x [1.0000, 1.0044] with causal configs +0.5-1.6% and full ones flat or below; causal
    # only 1.0021x [0.9998, 1.0044] (causal +0.4-1.6%), 1.023x FA4. At d64: 0.9905x (full -1.7%).
    # Its row, (dict(head_dim=128, causal=True), dict(lazy_rescale=True)), went when frozen_row_max
    # (the first row) replaced it: 1.0298x on paper against v0083, causal configs +1.8-3.3%.
    # The last wave split over 2-CTA clusters at d64 (H100 2026-11-23, hdim64 suite against v0052):
    # 1.0013x [1.0009, 1.0018] (v0074): GQA full +0.7% (5472 tiles, 60 in the last wave), MHA full
    # -0.2% (2752 tiles, 112 left: too many to split, the two launches cost). At d128 (paper, 8 CTAs)
    # a tie, 0.9994x (v0071: s16k/s32k full up to +1.5%, s4k full -0.5 to -0.8%); d256 a tie (v0073).
    # Since, one launch when there is no last wave to split: against v0074 1.0004x [0.9999, 1.0010],
    # MHA full +0.17% (v0075).
    # With the split launch overlapping the main one's drain (tail_pdl), on every head_dim (H100
    # 2026-11-23, one source, judged by the sampler with the candidate's checks at the round's end):
    # paper against v0071 (d128 split 8 alone) 1.0028x [1.0011, 1.0046], full configs +0.2-0.8%,
    # 1.031x FA4 (v0077); hdim64 against v0075 1.0005x [1.0001, 1.0008] (v0078); hdim256 against
    # v0073 (d256 split 8 alone) 1.0014x [0.9989, 1.0039], MHA full +0.7% (v0079).
    (dict(head_dim=64, causal=False), dict(tail_kv_split=2, tail_pdl=True)),
    # No split at d128 below 8 K/V blocks per CTA of a split (s4k and shorter), H100 2026-11-23,
    # paper against v0079: 0.9994x [0.9972, 1.0014], a tie, s4k full -0.04 to +0.13% (v0083).
    (dict(head_dim=128, causal=False), dict(tail_kv_split=8, tail_pdl=True, tail_split_min_blocks=8)),
    (dict(head_dim=256, causal=False), dict(tail_kv_split=8, tail_pdl=True)),
)

SPEC_FIELDS = tuple(f.name for f in fields(AttentionSpec))  # what a row may match on


@dataclass(frozen=True)
class KnobTable:
    """The knobs of one kernel source for every spec: `default`, then every row (match, overrides)
    whose match holds for the spec, in order (later rows win). A match maps AttentionSpec fields to
    a value or a tuple of values (any of); overrides map Knobs fields to values of SPACE. Built
    from any sequences, kept normalized (match fields in spec order, value tuples sorted, overrides
    in Knobs order), so equal tables compare, hash and serialize equal."""

    default: Knobs = TABLE_DEFAULT
    rows: tuple = ()

    def __post_init__(self):
        default = self.default
        if isinstance(default, dict):
            default = TABLE_DEFAULT.replace(**_checked_knobs(default, "default"))
        elif not isinstance(default, Knobs):
            raise ValueError(f"knob table default must be Knobs or a dict, not {type(default).__name__}")
        _checked_knobs(asdict(default), "default")
        rows = tuple(_checked_row(i, row) for i, row in enumerate(self.rows))
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "rows", rows)

    def for_spec(self, spec) -> Knobs:
        values = {}
        for match, overrides in self.rows:
            if _matches(match, spec):
                values.update(overrides)
        return self.default.replace(**values)

    def with_default(self, **values) -> KnobTable:
        return KnobTable(self.default.replace(**_checked_knobs(values, "default")), self.rows)

    def with_row(self, match: dict, overrides: dict) -> KnobTable:
        """This table with the row of `match` replaced by (match, overrides), or appended."""
        new = _checked_row(len(self.rows), (match, overrides))
        rows = [new if m == new[0] else (m, o) for m, o in self.rows]
        return KnobTable(self.default, rows if new in rows else [*rows, new])

    def row(self, match: dict) -> dict:
        """The overrides of the row of `match` ({} when the table has none)."""
        key = _checked_match(match, "match")
        return next((dict(o) for m, o in self.rows if m == key), {})

    def without_row(self, match: dict) -> KnobTable:
        key = _checked_match(match, "match")
        return KnobTable(self.default, [(m, o) for m, o in self.rows if m != key])

    def as_dict(self) -> dict:
        """JSON-ready: {"default": {...}, "rows": [[match, overrides], ...]} (a tuple in a match is
        a list); what the lineage records."""
        return {"default": asdict(self.default),
                "rows": [[{k: list(v) if isinstance(v, tuple) else v for k, v in m.items()}, dict(o)]
                         for m, o in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> KnobTable:
        """From as_dict()'s form, or from a flat knobs dict (one assignment for every spec, as
        lineage nodes recorded before tables: no rows; fields it lacks from TABLE_DEFAULT)."""
        if not isinstance(data, dict):
            raise ValueError(f"knob table must be a dict, not {type(data).__name__}")
        if set(data) <= {"default", "rows"} and data:
            return cls(data.get("default", {}), data.get("rows", ()))
        return cls(data, ())

    def key(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key())

    def literal_rows(self) -> list[str]:
        """Each row as the Python literal the template renders: (dict(a=1), dict(b=True))."""
        def lit(d):
            return "dict(" + ", ".join(f"{k}={v!r}" for k, v in d.items()) + ")"

        return [f"({lit(m)}, {lit(o)})" for m, o in self.rows]


def _matches(match: dict, spec) -> bool:
    return all(getattr(spec, name) in (v if isinstance(v, tuple) else (v,)) for name, v in match.items())


def _checked_knobs(values: dict, where: str) -> dict:
    names = [f.name for f in fields(Knobs)]
    for name, value in values.items():
        if name not in SPACE:
            raise ValueError(f"knob table {where}: unknown knob {name!r}; knobs: {', '.join(names)}")
        if value not in SPACE[name] or isinstance(value, bool) != isinstance(SPACE[name][0], bool):
            raise ValueError(f"knob table {where}: {name}={value!r} not in {list(SPACE[name])}")
    return {name: values[name] for name in names if name in values}


def _checked_row(i: int, row) -> tuple[dict, dict]:
    where = f"row {i}"
    try:
        match, overrides = row
    except (TypeError, ValueError):
        raise ValueError(f"knob table {where}: a row is (match, overrides), got {row!r}") from None
    if not isinstance(match, dict) or not isinstance(overrides, dict):
        raise ValueError(f"knob table {where}: match and overrides must be dicts, got {row!r}")
    if not overrides:
        raise ValueError(f"knob table {where}: overrides nothing")
    return _checked_match(match, where), _checked_knobs(overrides, where)


def _checked_match(match: dict, where: str) -> dict:
    """The match normalized: fields in AttentionSpec order, a tuple of values sorted (one value
    alone is kept bare), each value one an AttentionSpec accepts for its field."""
    unknown = [name for name in match if name not in SPEC_FIELDS]
    if unknown:
        raise ValueError(f"knob table {where}: unknown spec field {unknown[0]!r} in match; fields: "
                         f"{', '.join(SPEC_FIELDS)}")
    base, out = AttentionSpec(), {}
    for name in (n for n in SPEC_FIELDS if n in match):
        value = match[name]
        values = tuple(value) if isinstance(value, list | tuple) else (value,)
        if not values:
            raise ValueError(f"knob table {where}: {name} matches no value")
        for v in values:
            try:
                ok = type(v) is type(getattr(base, name)) and AttentionSpec(**{name: v}) is not None
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"knob table {where}: {name}={v!r} is not a valid AttentionSpec {name}")
        values = tuple(sorted(set(values)))
        out[name] = values if len(values) > 1 else values[0]
    return out


SEED_TABLE = KnobTable(TABLE_DEFAULT, TABLE_ROWS)


def effective(knobs: Knobs, spec) -> Knobs:
    """The knobs as the kernel acts on them for `spec`: pack_gqa means nothing without GQA,
    frozen_row_max yields to a knob that changes the overlapped loop's softmax another way (the
    template's frozen_row_max_yields), frozen_over_in_place means nothing without it, nor
    frozen_over_early without frozen_over_in_place. Two
    assignments equal here compile to the same kernel (the knob operator never proposes both)."""
    if spec.qhead_per_kvhead == 1:
        knobs = knobs.replace(pack_gqa=False)
    if knobs.frozen_row_max and (not knobs.intra_wg_overlap or knobs.lazy_rescale or knobs.rescale_o_before_pv
                                 or knobs.row_sum_by_mma or knobs.p_double_buffer or knobs.exp2_fma_every > 0
                                 or knobs.row_sum_chains > 1):
        knobs = knobs.replace(frozen_row_max=False)
    if knobs.frozen_over_in_place and not knobs.frozen_row_max:
        knobs = knobs.replace(frozen_over_in_place=False)
    if knobs.frozen_over_early and not knobs.frozen_over_in_place:
        knobs = knobs.replace(frozen_over_early=False)
    return knobs


def default_knobs(spec) -> Knobs:
    """Knobs for an `avo.spec.AttentionSpec`: the seed table's (TABLE_ROWS says why)."""
    return SEED_TABLE.for_spec(spec)


def smem_bytes(head_dim: int, elem_bytes: int, k: Knobs) -> int:
    """Dynamic shared memory the kernel allocates (1 KB alignment per buffer, barriers included);
    the compiler does not check it against the 227 KB limit, so can_implement does."""
    def align(x):
        return (x + 1023) // 1024 * 1024

    q = align(k.tile_m * head_dim * elem_bytes)  # the O tile reuses Q's buffer
    kv = 2 * align(k.tile_n * head_dim * elem_bytes * k.num_stages)
    p = 1024 if k.mma_pv_is_rs else align(k.tile_m * k.tile_n * elem_bytes)  # RS: a stand-in
    return 1024 + q + kv + p
