# FlashAttention forward for Hopper (sm_90a) in CuTe DSL: the avo seed kernel (issue 3).
# Rendered from dsl_templates/flash_fwd_sm90/template.py.j2 with the knob table below.
#
# Roles: warp group 0 is the producer (one warp issues the TMA loads of Q, K, V); warp groups
# 1..tile_m/64 are the MMA warp groups, each owning 64 rows of the Q tile: S = Q K^T (WGMMA SS),
# online softmax in exp2 with the scale folded in (frozen_row_max: the unmasked blocks against the
# rows' standing maxima, checked by their sums), O += P V (WGMMA RS or SS), then the epilogue
# (O through smem and a TMA store, LSE straight to global memory). One CTA per (m block, head,
# batch); causal takes the longest tiles first; head_swizzle groups the CTAs of the heads whose
# K/V fit in L2 (measured better for causal only, see knobs.py).

import math

import cuda.bindings.driver as cuda

import cutlass
import cutlass.cute as cute
import cutlass.memory
import cutlass.pipeline as pipeline
import cutlass.utils.hopper_helpers as sm90_utils
from cutlass import Float32, Int32, Int64, Uint32, const_expr
from cutlass._mlir.dialects import llvm
from cutlass.cutlass_dsl import T, dsl_user_op
from cutlass.cute.nvgpu import cpasync, warpgroup
from cutlass.tensor_utils import LayoutEnum

# The knobs of every specialization this source compiles for: KNOBS, then each row of
# KNOBS_BY_SPEC whose match holds for the spec (AttentionSpec fields: dtype, head_dim, causal,
# qhead_per_kvhead; a tuple means any of) overrides some of them, rows in order, later rows win.
# Values come from SPACE in dsl_templates/flash_fwd_sm90/knobs.py; can_implement checks each spec.
KNOBS = dict(
    tile_m=128,
    tile_n=128,
    num_stages=2,
    mma_regs=240,
    producer_regs=24,
    intra_wg_overlap=True,
    mma_pv_is_rs=True,
    pingpong=True,
    pack_gqa=False,
    head_swizzle=False,
    rescale_o_before_pv=False,
    try_wait_first=True,
    unmask_full_blocks=True,
    bitmask_causal_mask=False,
    tiles_per_cta=1,
    separate_o_buffer=False,
    exp2_fma_every=0,
    row_sum_by_mma=False,
    lazy_rescale=False,
    tail_kv_split=0,
    kv_multicast=False,
    tail_pdl=False,
    tail_split_min_blocks=1,
    q_in_registers=False,
    p_double_buffer=False,
    prefetch_next_q=False,
    row_sum_chains=1,
    frozen_row_max=False,
    frozen_over_in_place=False,
    frozen_over_early=False,
)
KNOBS_BY_SPEC = [
    (dict(), dict(frozen_row_max=True, frozen_over_in_place=True, frozen_over_early=True)),
    (dict(head_dim=64), dict(tile_m=192, num_stages=3, mma_regs=160, producer_regs=32)),
    (dict(head_dim=(64, 128)), dict(bitmask_causal_mask=True)),
    (dict(head_dim=256), dict(tile_n=80, try_wait_first=False, unmask_full_blocks=False)),
    (dict(causal=True), dict(head_swizzle=True)),
    (dict(qhead_per_kvhead=(2, 4, 8, 16, 32, 64)), dict(pack_gqa=True)),
    (dict(head_dim=(128, 256), qhead_per_kvhead=128), dict(pack_gqa=True)),
    (dict(head_dim=64, qhead_per_kvhead=(3, 6, 12, 24, 48, 96, 192)), dict(pack_gqa=True)),
    (dict(head_dim=128), dict(pingpong=False)),
    (dict(head_dim=128, causal=True, qhead_per_kvhead=(2, 4, 8, 16, 32, 64, 128)), dict(pack_gqa=False)),
    (dict(head_dim=64, causal=False), dict(tail_kv_split=2, tail_pdl=True)),
    (dict(head_dim=128, causal=False), dict(tail_kv_split=8, tail_pdl=True, tail_split_min_blocks=8)),
    (dict(head_dim=256, causal=False), dict(tail_kv_split=8, tail_pdl=True)),
]


def knobs_for(spec) -> dict:
    """The knobs of one spec: KNOBS, then every row of KNOBS_BY_SPEC that matches it."""
    fields = spec.as_dict()
    knobs = dict(KNOBS)
    for match, overrides in KNOBS_BY_SPEC:
        if all(fields[name] in (v if isinstance(v, tuple) else (v,)) for name, v in match.items()):
            knobs.update(overrides)
    return knobs


def frozen_row_max_yields(knobs: dict) -> bool:
    """frozen_row_max replaces the overlapped loop's softmax; a knob that changes that softmax
    another way (or takes the loop without overlap) wins over it. knobs.effective() says the same."""
    return (not knobs["intra_wg_overlap"] or knobs["lazy_rescale"] or knobs["rescale_o_before_pv"]
            or knobs["row_sum_by_mma"] or knobs["p_double_buffer"] or knobs["exp2_fma_every"] > 0
            or knobs["row_sum_chains"] > 1)


def launch_regs(num_threads: int) -> int:
    """Registers per thread at launch: the compiler spreads the 64K register file over the block
    (168 at 384 threads, 128 at 512). setmaxnreg.inc only takes what other warp groups of the same
    CTA gave back with setmaxnreg.dec (the CTA's pool is its launch allocation), and blocks until
    it can: a split that needs more hangs the MMA warp groups forever (archive v0023 and v0028,
    240x2 + 32 = 65,536 > 64,512)."""
    return min(255, 65536 // num_threads) // 8 * 8


SMEM_LIMIT = 232448  # sm_90 opt-in dynamic shared memory per block
# SMs of an H100 SXM or H200 (one CTA each): where the last, partial wave starts (tail_kv_split).
# On a part with fewer SMs (H100 PCIe: 114) the split lands on the wrong tiles: slower, not wrong.
NUM_SMS = 132
# What one launch of the kernel covers: every tile (tail_kv_split off), or, with it, the tiles of
# the full waves, then (a second launch, clusters of tail_kv_split CTAs) the tiles of the last one.
PART_ALL, PART_MAIN, PART_TAIL = 0, 1, 2
L2_BYTES_FOR_KV = 40 * 1024 * 1024  # part of H100/H200's 50 MB L2 the scheduler fills with K/V
LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)

# Named barriers (0 is __syncthreads).
BAR_EPILOGUE = 1
BAR_SCHED_WG1 = 2  # BAR_SCHED_WG1 + i: "MMA warp group i may issue its GEMMs"
# row_sum_by_mma: the N of the ones GEMM (WGMMA's smallest) and of the ones tile in shared memory
ROW_SUM_N = 8
# lazy_rescale: how far (log2 units of the scaled scores) a row's max may grow before it is taken
# and O rescaled; P is then at most 2^LAZY_RESCALE_LOG2
LAZY_RESCALE_LOG2 = 8.0
# frozen_row_max: the most a thread's sum of one row's P values over a K/V block may reach before
# the block's softmax is done again exactly; it bounds every P, so P stays far inside fp16's range
FROZEN_MAX_SUM_LIMIT = 4096.0
# frozen_over_in_place: the largest P a row may rescale in place; above it (or +inf: the score
# overflowed exp2) the block is rescored. 2^-120 is still a normal float: exp2's flush-to-zero
# turns the factor of a shift of 127 or more into 0 (and the row's sums and O with it)
FROZEN_OVER_PEAK_LIMIT = 2.0**120
# tail_kv_split: fp32 words of padding after each staged row of O
SPLIT_ROW_PAD = 8


# exp2 on the FMA pipes (knob exp2_fma_every): n = round(x) with the 1.5 * 2^23 trick, 2^(x - n) as
# a degree-3 polynomial on [-0.5, 0.5] (max relative error 1.0e-4, below bf16's 3.9e-3; the constant
# term is exactly 1), n added into the exponent field. x is clamped to -127 first: -inf (a masked
# score) then gives 2^0 with -127 in the exponent, which is exactly +0.0; above -127 the exponent
# field stays >= 0 (x in [-127, -126.5) rounds to n = -127 with f >= 0, so 2^f >= 1). Inline PTX so
# that no compiler folds (x + 1.5 * 2^23) - 1.5 * 2^23 back into x.
EXP2_POLY = ("0f3F317AFA", "0f3E780559", "0f3D614FA2")  # 0.69328274, 0.2422079, 0.05500758


@dsl_user_op
def exp2_fma(x: Float32, *, loc=None, ip=None) -> Float32:
    c1, c2, c3 = EXP2_POLY
    asm = (
        "{\n\t.reg .f32 t, r, n, f, p;\n\t.reg .b32 rb, pb;\n\t"
        "max.ftz.f32 t, $1, 0fC2FE0000;\n\t"
        "add.rn.ftz.f32 r, t, 0f4B400000;\n\t"
        "sub.rn.ftz.f32 n, r, 0f4B400000;\n\t"
        "sub.rn.ftz.f32 f, t, n;\n\t"
        f"fma.rn.ftz.f32 p, f, {c3}, {c2};\n\t"
        f"fma.rn.ftz.f32 p, p, f, {c1};\n\t"
        "fma.rn.ftz.f32 p, p, f, 0f3F800000;\n\t"
        "mov.b32 rb, r;\n\tshl.b32 rb, rb, 23;\n\tmov.b32 pb, p;\n\tadd.s32 pb, pb, rb;\n\t"
        "mov.b32 $0, pb;\n\t}"
    )
    return Float32(
        llvm.inline_asm(T.f32(), [Float32(x).ir_value(loc=loc, ip=ip)], asm, "=f,f",
                        has_side_effects=False, is_align_stack=False,
                        asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)
    )


# Distributed shared memory (tail_kv_split): the address of a shared-memory word in another CTA
# of the cluster, and loads and stores there. Side effects on the loads and stores keep them
# between the cluster barriers that order them.
@dsl_user_op
def dsmem_addr(smem_addr: Int32, rank: Int32, *, loc=None, ip=None) -> Int32:
    return Int32(llvm.inline_asm(
        T.i32(), [Int32(smem_addr).ir_value(loc=loc, ip=ip), Int32(rank).ir_value(loc=loc, ip=ip)],
        "mapa.shared::cluster.u32 $0, $1, $2;", "=r,r,r", has_side_effects=False, is_align_stack=False,
        asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip))


@dsl_user_op
def ld_dsmem_f32(addr: Int32, *, loc=None, ip=None) -> Float32:
    return Float32(llvm.inline_asm(
        T.f32(), [Int32(addr).ir_value(loc=loc, ip=ip)], "ld.shared::cluster.f32 $0, [$1];", "=f,r",
        has_side_effects=True, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip))


@dsl_user_op
def st_dsmem_f32(addr: Int32, val: Float32, *, loc=None, ip=None) -> None:
    llvm.inline_asm(
        None, [Int32(addr).ir_value(loc=loc, ip=ip), Float32(val).ir_value(loc=loc, ip=ip)],
        "st.shared::cluster.f32 [$0], $1;", "r,f",
        has_side_effects=True, is_align_stack=False, asm_dialect=llvm.AsmDialect.AD_ATT, loc=loc, ip=ip)


# ---------------------------------------------------------------------------------------------
# Register-fragment views of a WGMMA accumulator ((2, 2, N/8), MMA_M, MMA_N):
#   mode 0.0: column pair, mode 0.1: row +8, mode 0.2: column group of 8.
# ---------------------------------------------------------------------------------------------
def acc_view_mn(t: cute.Tensor) -> cute.Tensor:
    """(rows, cols) view of an accumulator fragment: ((2, MMA_M), (2, N/8, MMA_N))."""
    s = t.layout.shape
    c = cute.make_layout(s)  # compact index of the fragment
    mn = cute.make_layout(
        ((s[0][1], s[1]), (s[0][0], s[0][2], s[2])),
        stride=((c.stride[0][1], c.stride[1]), (c.stride[0][0], c.stride[0][2], c.stride[2])),
    )
    return cute.make_tensor(t.iterator, cute.composition(t.layout, mn))


def reduce_in_four_chains(vals: cute.Tensor, n: int, combine):
    """combine over vals[0:n] (n a multiple of 4) as four interleaved chains, then pairwise: short
    dependences for ptxas to schedule around (the softmax row max; the row sums with
    row_sum_chains 4). Plain Python, traced inline: the loops unroll at trace time."""
    acc = [vals[0], vals[1], vals[2], vals[3]]
    for c in range(4, n, 4):
        for j in range(4):
            acc[j] = combine(acc[j], vals[c + j])
    return combine(combine(acc[0], acc[1]), combine(acc[2], acc[3]))


@cute.jit
def wgmma(
    tiled_mma: cute.TiledMma,
    acc: cute.Tensor,
    tCrA: cute.Tensor,
    tCrB: cute.Tensor,
    zero_init: cutlass.Constexpr[bool],
    wait: cutlass.Constexpr[int],
    also=None,
):
    """Issue one warp group's WGMMAs over the K mode; wait (if wait >= 0) until at most
    `wait` groups are in flight. also: (tiled_mma, acc, tCrB) of a second GEMM on the same A,
    issued in the same group (one wait covers both)."""
    warpgroup.fence()
    gemm_k_blocks(tiled_mma, acc, tCrA, tCrB, zero_init)
    if const_expr(also is not None):
        gemm_k_blocks(also[0], also[1], tCrA, also[2], zero_init)
    warpgroup.commit_group()
    if const_expr(wait >= 0):
        warpgroup.wait_group(wait)


@cute.jit
def gemm_k_blocks(tiled_mma: cute.TiledMma, acc: cute.Tensor, tCrA: cute.Tensor, tCrB: cute.Tensor,
                  zero_init: cutlass.Constexpr[bool]):
    """acc (+)= A B, one WGMMA per K block (the first one overwrites acc where zero_init)."""
    atom = cute.make_mma_atom(tiled_mma.op)
    atom.set(warpgroup.Field.ACCUMULATE, not zero_init)
    for k in cutlass.range_constexpr(cute.size(tCrA.shape[2])):
        cute.gemm(atom, acc, tCrA[None, None, k], tCrB[None, None, k], acc)
        atom.set(warpgroup.Field.ACCUMULATE, True)


@cute.jit
def to_half(src: cute.Tensor, dst: cute.Tensor):
    """fp32 -> bf16/fp16 over two register fragments with the same compact element order,
    converted as flat vectors so the conversions pair up (cvt.rn.bf16x2.f32) for any tile_n."""
    n = cute.size(src)
    if const_expr(dst.element_type is cutlass.BFloat16):
        # cvt.rn.bf16x2 as an opaque (side-effecting) PTX op: LLVM cannot carry the fp32 values
        # across the loop's back edge and convert at the top of the next iteration
        pairs_src = cute.make_tensor(src.iterator, cute.make_layout((2, n // 2)))
        pairs_dst = cute.make_tensor(dst.iterator, cute.make_layout((2, n // 2)))
        for i in cutlass.range_constexpr(n // 2):
            packed = cute.arch.cvt_f32x2_bf16x2(pairs_src[None, i].load())
            pairs_dst[None, i].store(cute.TensorSSA(packed, (2,), cutlass.BFloat16))
    else:
        chunk = 8 if n % 8 == 0 else 2
        src_c = cute.make_tensor(src.iterator, cute.make_layout((chunk, n // chunk)))
        dst_c = cute.make_tensor(dst.iterator, cute.make_layout((chunk, n // chunk)))
        for i in cutlass.range_constexpr(n // chunk):
            dst_c[None, i].store(src_c[None, i].load().to(dst.element_type))


class FlashAttentionForwardSm90:
    arch = "sm_90a"

    def __init__(self, spec):
        ok, reason = self.can_implement(spec)
        if not ok:
            raise ValueError(f"flash_fwd_sm90 cannot implement {spec}: {reason}")
        self.spec = spec
        self.dtype = spec.cutlass_dtype
        self.head_dim = spec.head_dim
        self.is_causal = spec.causal
        self.qhead_per_kvhead = spec.qhead_per_kvhead
        knobs = knobs_for(spec)
        self.tile_m = knobs["tile_m"]
        self.tile_n = knobs["tile_n"]
        self.num_stages = knobs["num_stages"]
        self.mma_regs = knobs["mma_regs"]
        self.producer_regs = knobs["producer_regs"]
        self.intra_wg_overlap = knobs["intra_wg_overlap"]
        self.mma_pv_is_rs = knobs["mma_pv_is_rs"]
        self.head_swizzle = knobs["head_swizzle"]
        self.rescale_o_before_pv = knobs["rescale_o_before_pv"]
        self.try_wait_first = knobs["try_wait_first"]
        self.unmask_full_blocks = knobs["unmask_full_blocks"]
        self.bitmask_causal_mask = knobs["bitmask_causal_mask"]
        self.tiles_per_cta = knobs["tiles_per_cta"]
        self.separate_o_buffer = knobs["separate_o_buffer"]
        self.exp2_fma_every = knobs["exp2_fma_every"]
        self.row_sum_by_mma = knobs["row_sum_by_mma"]
        self.lazy_rescale = knobs["lazy_rescale"] and not knobs["rescale_o_before_pv"]
        self.kv_split = 0 if spec.causal else knobs["tail_kv_split"]
        self.kv_mcast = knobs["kv_multicast"] and not spec.causal
        self.tail_pdl = knobs["tail_pdl"] and self.kv_split > 0
        self.tail_min_blocks = knobs["tail_split_min_blocks"]
        self.q_in_regs = knobs["q_in_registers"]
        self.p_double_buffer = knobs["p_double_buffer"]
        self.prefetch_next_q = knobs["prefetch_next_q"] and not self.kv_mcast
        self.row_sum_chains = knobs["row_sum_chains"]
        self.frozen_row_max = knobs["frozen_row_max"] and not frozen_row_max_yields(knobs)
        self.frozen_over_in_place = knobs["frozen_over_in_place"] and self.frozen_row_max
        self.frozen_over_early = knobs["frozen_over_early"] and self.frozen_over_in_place
        self.pack_gqa = knobs["pack_gqa"] and spec.qhead_per_kvhead > 1
        self.num_mma_wg = self.tile_m // 64
        self.num_mma_threads = 128 * self.num_mma_wg
        self.num_threads = self.num_mma_threads + 128
        self.launch_regs = launch_regs(self.num_threads)
        self.use_sched_barrier = knobs["pingpong"] and self.num_mma_wg >= 2
        # setmaxnreg target per warp group (producer first): avo.resources checks it against the
        # registers the CTA gets at launch, the v0023/v0028 hang
        self.register_split = (self.producer_regs, *([self.mma_regs] * self.num_mma_wg))

    @staticmethod
    def smem_bytes(spec) -> int:
        def align(x):
            return (x + 1023) // 1024 * 1024

        k = knobs_for(spec)
        e = 2  # bf16 / fp16
        q = align(k["tile_m"] * spec.head_dim * e)
        kv = 2 * align(k["tile_n"] * spec.head_dim * e * k["num_stages"])
        # With P in registers sP is an 8-element stand-in, still aligned to 1 KB.
        p = 1024 if k["mma_pv_is_rs"] else align(k["tile_m"] * k["tile_n"] * e)
        o = q if k["separate_o_buffer"] else 0
        ones = align(ROW_SUM_N * k["tile_n"] * e) if k["row_sum_by_mma"] else 0
        return 1024 + q + kv + p + o + ones

    @staticmethod
    def split_buffer_bytes(spec) -> int:
        """tail_kv_split: O in fp32 (tile_m rows of head_dim + SPLIT_ROW_PAD words) and each row's
        max and sum, staged in the K and V buffers once the tile's GEMMs are done."""
        k = knobs_for(spec)
        return 4 * k["tile_m"] * (spec.head_dim + SPLIT_ROW_PAD + 2)

    @staticmethod
    def can_implement(spec) -> tuple[bool, str]:
        if spec.dtype not in ("bf16", "fp16"):
            return False, f"dtype {spec.dtype} not supported (bf16, fp16)"
        if spec.head_dim not in (64, 128, 256):
            return False, f"head_dim {spec.head_dim} not supported (64, 128, 256)"
        k = knobs_for(spec)
        tile_m, tile_n, mma_regs, producer_regs = k["tile_m"], k["tile_n"], k["mma_regs"], k["producer_regs"]
        num_mma_wg = tile_m // 64
        num_threads = 128 * num_mma_wg + 128
        regs_at_launch = launch_regs(num_threads)
        if tile_m % 64 or not 1 <= num_mma_wg <= 3:
            return False, f"tile_m {tile_m} must be 64, 128 or 192"
        if k["rescale_o_before_pv"] and not k["intra_wg_overlap"]:
            return False, "rescale_o_before_pv needs intra_wg_overlap (it moves the rescale of the overlapped loop)"
        if tile_n % 16 or not 16 <= tile_n <= 256:
            return False, f"tile_n {tile_n} must be a multiple of 16 in [16, 256]"
        if k["num_stages"] < 1:
            return False, "num_stages must be >= 1"
        if k["pingpong"] and num_mma_wg < 2:
            return False, "pingpong needs >= 2 MMA warp groups (tile_m >= 128)"
        if k["p_double_buffer"] and not (k["intra_wg_overlap"] and k["mma_pv_is_rs"]):
            return False, "p_double_buffer needs intra_wg_overlap and mma_pv_is_rs (P in registers, overlapped)"
        if k["row_sum_by_mma"] and not k["mma_pv_is_rs"]:
            return False, "row_sum_by_mma needs mma_pv_is_rs (its GEMM reads P from the PV GEMM's registers)"
        if k["tiles_per_cta"] > 1 and k["pingpong"]:
            return False, "tiles_per_cta > 1 needs pingpong off (its barrier handshake is per tile)"
        if k["kv_multicast"] and not spec.causal:
            if k["tiles_per_cta"] > 1 or k["tail_kv_split"] or k["head_swizzle"]:
                return False, ("kv_multicast needs tiles_per_cta 1, tail_kv_split 0 and head_swizzle off"
                               " (the two CTAs of a cluster: adjacent m blocks of one head)")
        if k["tail_kv_split"] and not spec.causal:
            if k["tiles_per_cta"] > 1:
                return False, "tail_kv_split needs tiles_per_cta 1 (a split tile is one CTA's whole work)"
            kv_bytes = 2 * k["tile_n"] * spec.head_dim * 2 * k["num_stages"]
            need = FlashAttentionForwardSm90.split_buffer_bytes(spec)
            if need > kv_bytes:
                return False, f"tail_kv_split stages {need} B in the K/V buffers, which hold {kv_bytes} B"
        regs = 128 * (num_mma_wg * mma_regs + producer_regs)
        if regs > regs_at_launch * num_threads:
            return False, (
                f"register split {mma_regs}x{num_mma_wg} + {producer_regs} needs {regs} registers"
                f" per CTA > the {regs_at_launch * num_threads} it gets at launch ({regs_at_launch} x"
                f" {num_threads} threads)"
            )
        if mma_regs % 8 or producer_regs % 8 or not 24 <= producer_regs <= mma_regs <= 256:
            return False, "setmaxnreg counts must be multiples of 8 in [24, 256]"
        # Registers per MMA thread for O (64 x d fp32 over 128 threads), S (64 x tile_n fp32)
        # and P (16 bit, in registers for RS): what is left must hold addresses and statistics.
        acc_regs = spec.head_dim // 2 + tile_n // 2 + (tile_n // 4 if k["mma_pv_is_rs"] else 0)
        acc_regs += tile_n // 4 if k["p_double_buffer"] else 0
        if acc_regs > mma_regs - 24:
            return False, (
                f"accumulators need ~{acc_regs} registers per MMA thread, too many for"
                f" mma_regs {mma_regs}"
            )
        smem = FlashAttentionForwardSm90.smem_bytes(spec)
        if smem > SMEM_LIMIT:
            return False, f"needs {smem} B of shared memory > {SMEM_LIMIT}"
        if k["pack_gqa"] and spec.qhead_per_kvhead > 1 and tile_m % spec.qhead_per_kvhead:
            return False, (
                f"pack_gqa needs qhead_per_kvhead ({spec.qhead_per_kvhead}) to divide tile_m"
                f" ({tile_m})"
            )
        return True, ""

    # -----------------------------------------------------------------------------------------
    # Host side: layouts, TMA descriptors, launch
    # -----------------------------------------------------------------------------------------
    def _smem_layout(self, rows: int, cols: int, stages=None):
        atom = warpgroup.make_smem_layout_atom(
            sm90_utils.get_smem_layout_atom(LayoutEnum.ROW_MAJOR, self.dtype, cols), self.dtype
        )
        if stages is None:
            return cute.tile_to_shape(atom, (rows, cols), (0, 1))
        return cute.tile_to_shape(atom, (rows, cols, stages), (0, 1, 2))

    def _shared_storage(self, sQ_layout, sK_layout, sV_layout, sP_cosize: int, ones_cosize: int = 0):
        """The shared memory struct: barriers, then Q, K, V, P (a stand-in with P in registers),
        and O's staging buffer where separate_o_buffer (else O is staged in Q's buffer)."""
        def tile(cosize):
            return cute.struct.Align[cute.struct.MemRange[self.dtype, cosize], 1024]

        stages, separate_o, ones = self.num_stages, self.separate_o_buffer, self.row_sum_by_mma

        class SharedStorage:  # plain Python here (not traced): the `if` picks the fields
            mbar_q: cute.struct.MemRange[Int64, 2]
            mbar_k: cute.struct.MemRange[Int64, 2 * stages]
            mbar_v: cute.struct.MemRange[Int64, 2 * stages]
            sQ: tile(cute.cosize(sQ_layout))
            sK: tile(cute.cosize(sK_layout))
            sV: tile(cute.cosize(sV_layout))
            sP: tile(sP_cosize)
            if separate_o:
                sO: tile(cute.cosize(sQ_layout))
            if ones:
                sOnes: tile(ones_cosize)

        return cute.struct(SharedStorage)

    @staticmethod
    def _permute(t: cute.Tensor, modes) -> cute.Tensor:
        return cute.make_tensor(t.iterator, cute.select(t.layout, mode=modes))

    def _packed_tma(self, op, mX: cute.Tensor, smem_layout, nheads_kv):
        """TMA for a (seqlen, d, heads_q, batch) tensor whose M tile holds the qhead_per_kvhead
        query heads of one KV head for tile_m // qhead_per_kvhead positions. The descriptor is
        built on ((heads_q, seqlen), d, batch), which keeps it 4-D; the coordinate tensor is then
        re-split into ((qhead_per_kvhead, seqlen), d, heads_kv, batch)."""
        g = self.qhead_per_kvhead
        t = self._permute(mX, [2, 0, 1, 3])  # (heads_q, seqlen, d, batch)
        t = cute.group_modes(t, 0, 2)  # ((heads_q, seqlen), d, batch)
        atom, tma_t = cpasync.make_tiled_tma_atom(
            op, t, smem_layout, ((g, self.tile_m // g), self.head_dim)
        )
        s, d = tma_t.shape, tma_t.stride
        layout = cute.make_layout(
            ((g, s[0][1]), s[1], nheads_kv, s[2]),
            stride=((d[0][0], d[0][1]), d[1], d[0][0] * g, d[2]),
        )
        return atom, cute.make_tensor(tma_t.iterator, layout)

    @cute.jit
    def __call__(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mV: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        softmax_scale: Float32,
        stream: cuda.CUstream,
    ):
        # (batch, seqlen, heads, d) -> (seqlen, d, heads, batch): the tile modes first.
        mQ, mK, mV, mO = [self._permute(t, [1, 3, 2, 0]) for t in (mQ, mK, mV, mO)]
        seqlen_q = mQ.shape[0]
        nheads_q = mQ.shape[2]
        nheads_kv = mK.shape[2]
        batch = mQ.shape[3]

        tiled_mma_qk = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            cute.nvgpu.OperandMajorMode.K,
            cute.nvgpu.OperandMajorMode.K,
            Float32,
            atom_layout_mnk=(self.num_mma_wg, 1, 1),
            tiler_mn=(64, self.tile_n),
            a_source=warpgroup.OperandSource.RMEM if self.q_in_regs else warpgroup.OperandSource.SMEM,
        )
        tiled_mma_pv = sm90_utils.make_trivial_tiled_mma(
            self.dtype,
            self.dtype,
            cute.nvgpu.OperandMajorMode.K,
            cute.nvgpu.OperandMajorMode.MN,
            Float32,
            atom_layout_mnk=(self.num_mma_wg, 1, 1),
            tiler_mn=(64, self.head_dim),
            a_source=warpgroup.OperandSource.RMEM if self.mma_pv_is_rs else warpgroup.OperandSource.SMEM,
        )

        sQ_layout = self._smem_layout(self.tile_m, self.head_dim)
        sK_layout = self._smem_layout(self.tile_n, self.head_dim, self.num_stages)
        sV_layout = self._smem_layout(self.tile_n, self.head_dim, self.num_stages)
        sP_layout = None
        if const_expr(not self.mma_pv_is_rs):
            sP_layout = self._smem_layout(self.tile_m, self.tile_n)
        sP_cosize = cute.cosize(sP_layout) if const_expr(not self.mma_pv_is_rs) else 8

        ones_cosize = ROW_SUM_N * self.tile_n if const_expr(self.row_sum_by_mma) else 0
        SharedStorage = self._shared_storage(sQ_layout, sK_layout, sV_layout, sP_cosize, ones_cosize)

        load_op = cpasync.CopyBulkTensorTileG2SOp()
        store_op = cpasync.CopyBulkTensorTileS2GOp()
        if const_expr(self.pack_gqa):
            tma_atom_Q, tma_Q = self._packed_tma(load_op, mQ, sQ_layout, nheads_kv)
            tma_atom_O, tma_O = self._packed_tma(store_op, mO, sQ_layout, nheads_kv)
            rows_q = seqlen_q * self.qhead_per_kvhead
            heads_grid = nheads_kv
        else:
            tma_atom_Q, tma_Q = cpasync.make_tiled_tma_atom(
                load_op, mQ, sQ_layout, (self.tile_m, self.head_dim)
            )
            tma_atom_O, tma_O = cpasync.make_tiled_tma_atom(
                store_op, mO, sQ_layout, (self.tile_m, self.head_dim)
            )
            rows_q = seqlen_q
            heads_grid = nheads_q
        kv_load_op, kv_multicast = load_op, 1
        if const_expr(self.kv_mcast):
            kv_load_op, kv_multicast = cpasync.CopyBulkTensorTileG2SMulticastOp(), 2
        tma_atom_K, tma_K = cpasync.make_tiled_tma_atom(
            kv_load_op, mK, cute.select(sK_layout, mode=[0, 1]), (self.tile_n, self.head_dim), kv_multicast
        )
        tma_atom_V, tma_V = cpasync.make_tiled_tma_atom(
            kv_load_op, mV, cute.select(sV_layout, mode=[0, 1]), (self.tile_n, self.head_dim), kv_multicast
        )

        num_m_blocks = cute.ceil_div(rows_q, self.tile_m)
        # Without the head swizzle the grid is (m blocks, heads, batch): the hardware hands CTAs out
        # x fastest, the order of the 1-D grid, yet this measured 1.011x [1.006, 1.016] the 1-D
        # grid on the H100 (MHA non-causal, issue 13, archive/attempts/13/grid3d.py); why, is not
        # known (ncu: the same L2 requests, fewer barrier stalls).
        grid = (cute.ceil_div(num_m_blocks * heads_grid * batch, self.tiles_per_cta), 1, 1)
        if const_expr(not self.head_swizzle):
            grid = (cute.ceil_div(num_m_blocks, self.tiles_per_cta), heads_grid, batch)
        args = (
            tma_Q,
            tma_K,
            tma_V,
            tma_O,
            mLSE,
            tma_atom_Q,
            tma_atom_K,
            tma_atom_V,
            tma_atom_O,
            softmax_scale * LOG2_E,
            num_m_blocks,
            heads_grid,
            heads_grid * batch,
            sQ_layout,
            sK_layout,
            sV_layout,
            sP_layout if const_expr(not self.mma_pv_is_rs) else sQ_layout,
            tiled_mma_qk,
            tiled_mma_pv,
            SharedStorage,
        )
        launch = dict(block=[self.num_threads, 1, 1], stream=stream, min_blocks_per_mp=1)
        if const_expr(self.kv_mcast):
            # clusters of two m blocks (an odd count gets one more, past the end: it loads its half
            # of the K/V blocks for its partner, and its rows are clipped from the output)
            self.kernel(*args, PART_ALL).launch(
                grid=(cute.ceil_div(num_m_blocks, 2) * 2, heads_grid, batch), cluster=(2, 1, 1), **launch
            )
        elif const_expr(self.kv_split == 0):
            self.kernel(*args, PART_ALL).launch(grid=grid, **launch)
        else:
            # With a last wave to split, two launches: the tiles of the full waves (a 1-D grid in
            # the order of the 3-D one above; when every tile is in the last wave, one CTA that
            # returns at once), then the last wave's tiles split along the keys over clusters.
            # Without one, the single launch of the unsplit kernel (the second launch alone cost
            # 0.2% on d64 MHA, where the last wave is too long to split).
            num_tiles = num_m_blocks * heads_grid * batch
            n_tail = self.tail_tiles(num_tiles, mK.shape[0])
            if n_tail > 0:
                self.kernel(*args, PART_MAIN).launch(grid=(cutlass.max(num_tiles - n_tail, 1), 1, 1), **launch)
                self.kernel(*args, PART_TAIL).launch(
                    grid=(n_tail * self.kv_split, 1, 1), cluster=(self.kv_split, 1, 1),
                    use_pdl=self.tail_pdl, **launch
                )
            else:
                self.kernel(*args, PART_ALL).launch(grid=grid, **launch)

    @cute.jit
    def tail_tiles(self, num_tiles: Int32, seqlen_k: Int32) -> Int32:
        """How many tiles (the last ones) the split launch takes: those of the last, partial wave
        when kv_split CTAs for each fit in one wave and each CTA gets at least tail_min_blocks K/V
        blocks."""
        partial = num_tiles % NUM_SMS
        n_tail = Int32(0)
        min_blocks = self.kv_split * self.tail_min_blocks
        if partial * self.kv_split <= NUM_SMS and cute.ceil_div(seqlen_k, self.tile_n) >= min_blocks:
            n_tail = partial
        return n_tail

    # -----------------------------------------------------------------------------------------
    # Device side
    # -----------------------------------------------------------------------------------------
    @cute.kernel
    def kernel(
        self,
        mQ: cute.Tensor,
        mK: cute.Tensor,
        mV: cute.Tensor,
        mO: cute.Tensor,
        mLSE: cute.Tensor,
        tma_atom_Q: cute.CopyAtom,
        tma_atom_K: cute.CopyAtom,
        tma_atom_V: cute.CopyAtom,
        tma_atom_O: cute.CopyAtom,
        scale_log2: Float32,
        num_m_blocks: Int32,
        heads_grid: Int32,
        num_hb: Int32,
        sQ_layout: cute.ComposedLayout,
        sK_layout: cute.ComposedLayout,
        sV_layout: cute.ComposedLayout,
        sP_layout: cute.ComposedLayout,  # unused (a stand-in) when P stays in registers
        tiled_mma_qk: cute.TiledMma,
        tiled_mma_pv: cute.TiledMma,
        SharedStorage: cutlass.Constexpr,
        part: cutlass.Constexpr,
    ):
        if const_expr(self.tail_pdl and part == PART_MAIN):
            # tail_pdl: this CTA no longer holds the split launch back (it needs nothing from us)
            cute.arch.griddepcontrol_launch_dependents()
        split_tile, has_work = None, True
        if const_expr(part != PART_ALL):
            # tail_kv_split: which tile (a linear index), and which slice of its keys (the rank in
            # the cluster; 0 in the main launch). A CTA (cluster) past the tiles of its launch returns.
            num_tiles = num_m_blocks * num_hb
            n_tail = self.tail_tiles(num_tiles, mK.shape[0])
            bx = cute.arch.block_idx()[0]
            tile, rank, limit = bx, Int32(0), num_tiles - n_tail
            if const_expr(part == PART_TAIL):
                tile = num_tiles - n_tail + bx // self.kv_split
                rank = bx % self.kv_split
                limit = num_tiles
            split_tile, has_work = (tile, rank), tile < limit
        if has_work:
            self.kernel_body(
                mQ, mK, mV, mO, mLSE, tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O, scale_log2,
                num_m_blocks, heads_grid, num_hb, sQ_layout, sK_layout, sV_layout, sP_layout,
                tiled_mma_qk, tiled_mma_pv, SharedStorage, part, split_tile,
            )
        if const_expr(self.tail_pdl and part == PART_TAIL):
            # tail_pdl: the split launch may have started before the main one ended; it ends only
            # after it, so whatever the stream runs next sees every tile of O written
            cute.arch.griddepcontrol_wait()

    @cute.jit
    def kernel_body(
        self, mQ, mK, mV, mO, mLSE, tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O, scale_log2,
        num_m_blocks, heads_grid, num_hb, sQ_layout, sK_layout, sV_layout, sP_layout,
        tiled_mma_qk, tiled_mma_pv, SharedStorage: cutlass.Constexpr, part: cutlass.Constexpr,
        split_tile,
    ):
        """One CTA's work; split_tile (tail_kv_split): its (linear tile, key slice)."""
        warp_idx = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        if warp_idx == 0:
            for atom in (tma_atom_Q, tma_atom_K, tma_atom_V, tma_atom_O):
                cpasync.prefetch_descriptor(atom)

        smem = cutlass.memory.SmemAllocator()
        storage = smem.allocate(SharedStorage)

        tma_warp = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        mma_warps = pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_mma_threads // 32)
        bytes_q = cute.size_in_bytes(self.dtype, sQ_layout)
        bytes_kv = cute.size_in_bytes(self.dtype, cute.select(sK_layout, mode=[0, 1]))
        # With several tiles per CTA, Q's buffer is released once per tile: by every MMA warp after
        # its last QK^T GEMM where O has a buffer of its own, else (O staged in Q's buffer) by the
        # warp that waits for O's TMA store to have read it.
        q_readers = mma_warps
        if const_expr(self.tiles_per_cta > 1 and not self.separate_o_buffer):
            q_readers = pipeline.CooperativeGroup(pipeline.Agent.Thread, 1)
        pipe_q = pipeline.PipelineTmaAsync.create(
            barrier_storage=storage.mbar_q.data_ptr(),
            num_stages=1,
            producer_group=tma_warp,
            consumer_group=q_readers,
            tx_count=bytes_q,
            defer_sync=True,
        )
        # kv_multicast: a stage is filled by both CTAs of the cluster (each TMA writes its half into
        # both), so it is empty only when both CTAs' MMA warps have released it: each warp arrives
        # on both CTAs' empty barriers
        kv_pipe = dict(num_stages=self.num_stages, producer_group=tma_warp, consumer_group=mma_warps,
                       tx_count=bytes_kv, defer_sync=True)
        if const_expr(self.kv_mcast):
            kv_pipe.update(
                consumer_group=pipeline.CooperativeGroup(pipeline.Agent.Thread, self.num_mma_threads),
                cta_layout_vmnk=cute.make_layout((1, 2, 1, 1)), mcast_mode_mn=(0, 1),
                enable_multicast_signaling=True,
            )
        pipe_k = pipeline.PipelineTmaAsync.create(barrier_storage=storage.mbar_k.data_ptr(), **kv_pipe)
        pipe_v = pipeline.PipelineTmaAsync.create(barrier_storage=storage.mbar_v.data_ptr(), **kv_pipe)
        if const_expr(self.row_sum_by_mma):
            # the ones tile of the row-sum GEMM: every thread writes its share (all values are 1,
            # so the swizzle does not matter); the fence makes the writes visible to WGMMA (the
            # async proxy), the CTA barrier below orders them before any GEMM
            ones_flat = storage.sOnes.get_tensor(cute.make_layout(ROW_SUM_N * self.tile_n))
            t0 = cute.arch.thread_idx()[0]
            for i in cutlass.range_constexpr(-(-ROW_SUM_N * self.tile_n // self.num_threads)):
                if t0 + i * self.num_threads < ROW_SUM_N * self.tile_n:
                    ones_flat[t0 + i * self.num_threads] = self.dtype(1.0)
            cute.arch.fence_view_async_shared()
        cute.arch.mbarrier_init_fence()
        if const_expr(self.kv_mcast):
            # the partner's TMA and MMA warps use this CTA's barriers from the start
            cute.arch.cluster_arrive_relaxed()
            cute.arch.cluster_wait()
        else:
            cute.arch.sync_threads()

        sQ = storage.sQ.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sK = storage.sK.get_tensor(sK_layout.outer, swizzle=sK_layout.inner)
        sV = storage.sV.get_tensor(sV_layout.outer, swizzle=sV_layout.inner)
        sP = None
        if const_expr(not self.mma_pv_is_rs):
            sP = storage.sP.get_tensor(sP_layout.outer, swizzle=sP_layout.inner)
        sO = sQ
        if const_expr(self.separate_o_buffer):
            sO = storage.sO.get_tensor(sQ_layout.outer, swizzle=sQ_layout.inner)
        sOnes = None
        if const_expr(self.row_sum_by_mma):
            ones_layout = self._smem_layout(ROW_SUM_N, self.tile_n)
            sOnes = storage.sOnes.get_tensor(ones_layout.outer, swizzle=ones_layout.inner)

        seqlen_q = mLSE.shape[2]
        seqlen_k = mK.shape[0]
        if const_expr(self.tiles_per_cta == 1):
            split_rank = None
            if const_expr(split_tile is None):
                m_block, head_idx, batch_idx = self.tile_coords(num_m_blocks, heads_grid, num_hb, seqlen_k)
                n_block_min, n_block_max = self.n_block_range(m_block, seqlen_q, seqlen_k)
            else:
                m_block, head_idx, batch_idx = self.tile_coords(
                    num_m_blocks, heads_grid, num_hb, seqlen_k, linear=split_tile[0])
                n_block_min, n_block_max = self.n_block_range(m_block, seqlen_q, seqlen_k)
                if const_expr(part == PART_TAIL):
                    split_rank = split_tile[1]
                    n_all = n_block_max
                    n_block_min = split_rank * n_all // self.kv_split
                    n_block_max = (split_rank + 1) * n_all // self.kv_split

            if warp_idx < 4:
                cute.arch.setmaxregister_decrease(self.producer_regs)
                if warp_idx == 0:
                    prefetch = None
                    if const_expr(self.prefetch_next_q and part != PART_TAIL):
                        prefetch = self.next_tile(num_m_blocks, heads_grid, num_hb, seqlen_k, split_tile)
                    self.producer(
                        mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V,
                        pipe_q, pipe_k, pipe_v, m_block, head_idx, batch_idx, n_block_min, n_block_max,
                        prefetch=prefetch,
                    )
                if const_expr(split_rank is not None):
                    # the two cluster barriers of combine_kv_split count every thread of the cluster
                    cute.arch.cluster_arrive()
                    cute.arch.cluster_wait()
                    cute.arch.cluster_arrive()
                    cute.arch.cluster_wait()
            else:
                cute.arch.setmaxregister_increase(self.mma_regs)
                tidx = cute.arch.thread_idx()[0] - 128
                split = None
                if const_expr(split_rank is not None):
                    # K's buffer as fp32 words, V's right after it: free once the GEMMs are done
                    split = (split_rank, cute.recast_ptr(storage.sK.data_ptr(), dtype=Float32))
                self.consumer(
                    mO, mLSE, sQ, sK, sV, sP, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv,
                    pipe_q, pipe_k, pipe_v, tidx, scale_log2, m_block, head_idx, batch_idx,
                    seqlen_q, seqlen_k, n_block_min, n_block_max, sOnes=sOnes, split=split,
                )
            if const_expr(self.kv_mcast):
                # no CTA leaves while its partner may still arrive on its barriers
                cute.arch.cluster_arrive()
                cute.arch.cluster_wait()
        else:
            # Several tiles per CTA, one after the other: the pipeline states go on from tile to
            # tile, so the producer loads the next tile's first K block while the MMA warp groups
            # finish this one (its last PV GEMM, the epilogue), and no CTA launch or setup sits
            # between two tiles (issue 13: s4k reads ~4% below s8k, per-tile fixed costs).
            n_tiles = self.num_tiles_of_cta(num_m_blocks, num_hb)
            if warp_idx < 4:
                cute.arch.setmaxregister_decrease(self.producer_regs)
                if warp_idx == 0:
                    state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
                    q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
                    for i in cutlass.range(n_tiles, unroll=1):
                        m_block, head_idx, batch_idx = self.tile_coords(
                            num_m_blocks, heads_grid, num_hb, seqlen_k, i)
                        n_block_min, n_block_max = self.n_block_range(m_block, seqlen_q, seqlen_k)
                        state, q_state = self.producer(
                            mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V,
                            pipe_q, pipe_k, pipe_v, m_block, head_idx, batch_idx, n_block_min, n_block_max,
                            state, q_state,
                        )
            else:
                cute.arch.setmaxregister_increase(self.mma_regs)
                tidx = cute.arch.thread_idx()[0] - 128
                state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
                q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
                # Unrolled: each tile's K/V loop is compiled as a one-tile kernel's is. Inside a
                # loop over tiles ptxas rebuilt the QK^T GEMM's shared-memory descriptors before
                # every HGMMA (489 instead of 452 instructions per K/V block at d128: v0057's loss)
                for i in cutlass.range_constexpr(self.tiles_per_cta):
                    if i < n_tiles:
                        m_block, head_idx, batch_idx = self.tile_coords(num_m_blocks, heads_grid, num_hb,
                                                                        seqlen_k, i)
                        n_block_min, n_block_max = self.n_block_range(m_block, seqlen_q, seqlen_k)
                        state, q_state = self.consumer(
                            mO, mLSE, sQ, sK, sV, sP, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv,
                            pipe_q, pipe_k, pipe_v, tidx, scale_log2, m_block, head_idx, batch_idx,
                            seqlen_q, seqlen_k, n_block_min, n_block_max, state, q_state, sOnes,
                        )

    @cute.jit
    def num_tiles_of_cta(self, num_m_blocks: Int32, num_hb: Int32):
        """How many tiles this CTA takes (tiles_per_cta > 1): tile i of CTA x is x + i * gridDim.x
        of the grid's first mode, while that is inside it."""
        limit = num_m_blocks
        if const_expr(self.head_swizzle):
            limit = num_m_blocks * num_hb
        first = cute.arch.block_idx()[0]
        return cute.ceil_div(limit - first, cute.arch.grid_dim()[0])

    @cute.jit
    def tile_coords(self, num_m_blocks: Int32, heads_grid: Int32, num_hb: Int32, seqlen_k: Int32, i=None,
                    linear=None):
        """Map the linear CTA index to (m_block, head, batch). CTAs are taken in sections of
        `swz` (head, batch) pairs, heads fastest within a section, m blocks outermost; with
        head_swizzle swz is the largest power of two of heads whose K/V fit in L2, else 1 (m
        blocks fastest, one head at a time). Causal visits m blocks last-first (longest first).
        With tiles_per_cta > 1, the CTA's tile i: its index plus i times the grid's first mode.
        linear (tail_kv_split's launches): the tile's index in the 1-D order, given."""
        if const_expr(linear is not None and not self.head_swizzle):  # the 3-D grid's order
            hb = linear // num_m_blocks
            m_block = linear - hb * num_m_blocks
            if const_expr(self.is_causal):
                m_block = num_m_blocks - 1 - m_block
            batch_idx = hb // heads_grid
            return m_block, hb - batch_idx * heads_grid, batch_idx
        if const_expr(not self.head_swizzle):  # the 3-D grid of __call__
            bx, by, bz = cute.arch.block_idx()
            if const_expr(i is not None):
                bx = bx + i * cute.arch.grid_dim()[0]
            m_block = bx
            if const_expr(self.is_causal):
                m_block = num_m_blocks - 1 - bx
            return m_block, by, bz
        tile = cute.arch.block_idx()[0]
        if const_expr(linear is not None):
            tile = linear
        if const_expr(i is not None):
            tile = tile + i * cute.arch.grid_dim()[0]
        swz = Int32(1)
        if const_expr(self.head_swizzle):
            kv_bytes = Int64(seqlen_k) * (2 * self.head_dim * 2)
            heads_in_l2 = Int32(Int64(L2_BYTES_FOR_KV) // cutlass.max(kv_bytes, Int64(1)))
            for i in cutlass.range_constexpr(1, 9):
                if heads_in_l2 >= (1 << i):
                    swz = Int32(1 << i)
        section_tiles = swz * num_m_blocks
        section = tile // section_tiles
        r = tile - section * section_tiles
        num_full = num_hb // swz
        hb_in_section = swz
        if section >= num_full:
            hb_in_section = num_hb - num_full * swz
        m_idx = r // hb_in_section
        hb = section * swz + (r - m_idx * hb_in_section)
        m_block = m_idx
        if const_expr(self.is_causal):
            m_block = num_m_blocks - 1 - m_idx
        batch_idx = hb // heads_grid
        head_idx = hb - batch_idx * heads_grid
        return m_block, head_idx, batch_idx

    @cute.jit
    def next_tile(self, num_m_blocks: Int32, heads_grid: Int32, num_hb: Int32, seqlen_k: Int32,
                  split_tile):
        """(is there one, its (m_block, head, batch)): the tile NUM_SMS places after this CTA's in
        the launch order (prefetch_next_q)."""
        if const_expr(split_tile is not None):  # the main launch: a 1-D grid in the 3-D order
            linear = split_tile[0]
        elif const_expr(self.head_swizzle):
            linear = cute.arch.block_idx()[0]
        else:
            bx, by, bz = cute.arch.block_idx()
            linear = bx + num_m_blocks * (by + heads_grid * bz)
        nxt = linear + NUM_SMS
        return nxt < num_m_blocks * num_hb, self.tile_coords(num_m_blocks, heads_grid, num_hb, seqlen_k,
                                                             linear=nxt)

    @cute.jit
    def n_block_range(self, m_block: Int32, seqlen_q: Int32, seqlen_k: Int32):
        """K/V blocks [min, max) this M tile visits; always >= 1 block, so rows that see no key
        (causal, seqlen_q > seqlen_k) go through one fully masked block: O = 0, LSE = -inf."""
        n_block_max = cute.ceil_div(seqlen_k, self.tile_n)
        if const_expr(self.is_causal):
            row_end = (m_block + 1) * self.tile_m
            if const_expr(self.pack_gqa):
                row_end = cute.ceil_div(row_end, self.qhead_per_kvhead)
            key_end = row_end + seqlen_k - seqlen_q  # keys < key_end are visible to some row
            n_causal = Int32(0)
            if key_end > 0:
                n_causal = cute.ceil_div(key_end, self.tile_n)
            n_block_max = cutlass.min(n_block_max, n_causal)
        n_block_max = cutlass.max(n_block_max, 1)
        return Int32(0), n_block_max

    # -----------------------------------------------------------------------------------------
    # Producer: one warp issues the TMA loads in the order the MMA warp groups consume them
    # -----------------------------------------------------------------------------------------
    def q_tile(self, mQ, sQ, tma_atom_Q, m_block, head_idx, batch_idx):
        """Q's tile (m_block, head, batch) partitioned for its TMA atom: (shared side, global side)."""
        gQ = cute.local_tile(mQ[None, None, head_idx, batch_idx], (self.tile_m, self.head_dim), (m_block, 0))
        return cpasync.tma_partition(tma_atom_Q, 0, cute.make_layout(1), cute.group_modes(sQ, 0, 2),
                                     cute.group_modes(gQ, 0, 2))

    @cute.jit
    def producer(
        self, mQ, mK, mV, sQ, sK, sV, tma_atom_Q, tma_atom_K, tma_atom_V,
        pipe_q, pipe_k, pipe_v, m_block, head_idx, batch_idx, n_block_min, n_block_max,
        state=None, q_state=None, prefetch=None,
    ):
        """One tile's loads; with tiles_per_cta > 1 the pipeline states come from the previous
        tile and are returned for the next. prefetch (prefetch_next_q): (is there a next tile, its
        coordinates), whose Q goes to L2 once this tile's first loads are issued."""
        head_kv = head_idx
        if const_expr(not self.pack_gqa):
            head_kv = head_idx // self.qhead_per_kvhead
        tQsQ, tQgQ = self.q_tile(mQ, sQ, tma_atom_Q, m_block, head_idx, batch_idx)
        gK = cute.local_tile(mK[None, None, head_kv, batch_idx], (self.tile_n, self.head_dim), (None, 0))
        gV = cute.local_tile(mV[None, None, head_kv, batch_idx], (self.tile_n, self.head_dim), (None, 0))
        # kv_multicast: this CTA loads its half of each K/V block, into both CTAs of the cluster
        kv_rank, kv_ctas, kv = 0, cute.make_layout(1), {}
        if const_expr(self.kv_mcast):
            kv_rank, kv_ctas = cute.arch.block_idx_in_cluster(), cute.make_layout(2)
            kv = dict(mcast_mask=Uint32(0b11))
        tKsK, tKgK = cpasync.tma_partition(
            tma_atom_K, kv_rank, kv_ctas, cute.group_modes(sK, 0, 2), cute.group_modes(gK, 0, 2)
        )
        tVsV, tVgV = cpasync.tma_partition(
            tma_atom_V, kv_rank, kv_ctas, cute.group_modes(sV, 0, 2), cute.group_modes(gV, 0, 2)
        )

        if const_expr(state is None):
            state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, self.num_stages)
            q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Producer, 1)
        n_block = n_block_max - 1
        # K of the first block before Q: QK^T needs both, K is the larger stream.
        pipe_k.producer_acquire(state)
        cute.copy(tma_atom_K, tKgK[None, n_block], tKsK[None, state.index],
                  tma_bar_ptr=pipe_k.producer_get_barrier(state), **kv)
        pipe_q.producer_acquire(q_state)
        cute.copy(tma_atom_Q, tQgQ, tQsQ, tma_bar_ptr=pipe_q.producer_get_barrier(q_state))
        if const_expr(self.tiles_per_cta > 1):
            q_state.advance()
        if const_expr(prefetch is not None):
            has_next, (m_next, head_next, batch_next) = prefetch
            if has_next:
                cute.prefetch(tma_atom_Q, self.q_tile(mQ, sQ, tma_atom_Q, m_next, head_next, batch_next)[1])
        if const_expr(not self.intra_wg_overlap):
            # Consumption order: K0 V0 K1 V1 ...
            pipe_v.producer_acquire(state)
            cute.copy(tma_atom_V, tVgV[None, n_block], tVsV[None, state.index],
                      tma_bar_ptr=pipe_v.producer_get_barrier(state), **kv)
            state.advance()
            for i in cutlass.range(n_block_max - 1 - n_block_min, unroll=1):
                n_block = n_block_max - 2 - i
                pipe_k.producer_acquire(state)
                cute.copy(tma_atom_K, tKgK[None, n_block], tKsK[None, state.index],
                          tma_bar_ptr=pipe_k.producer_get_barrier(state), **kv)
                pipe_v.producer_acquire(state)
                cute.copy(tma_atom_V, tVgV[None, n_block], tVsV[None, state.index],
                          tma_bar_ptr=pipe_v.producer_get_barrier(state), **kv)
                state.advance()
        else:
            # Consumption order with overlap: K0 K1 V0 K2 V1 ... V_last
            for i in cutlass.range(n_block_max - 1 - n_block_min, unroll=1):
                n_block = n_block_max - 2 - i
                state_prev = state.clone()
                state.advance()
                pipe_k.producer_acquire(state)
                cute.copy(tma_atom_K, tKgK[None, n_block], tKsK[None, state.index],
                          tma_bar_ptr=pipe_k.producer_get_barrier(state), **kv)
                pipe_v.producer_acquire(state_prev)
                cute.copy(tma_atom_V, tVgV[None, n_block + 1], tVsV[None, state_prev.index],
                          tma_bar_ptr=pipe_v.producer_get_barrier(state_prev), **kv)
            pipe_v.producer_acquire(state)
            cute.copy(tma_atom_V, tVgV[None, n_block_min], tVsV[None, state.index],
                      tma_bar_ptr=pipe_v.producer_get_barrier(state), **kv)
            state.advance()
        return state, q_state

    # -----------------------------------------------------------------------------------------
    # MMA warp groups: GEMMs, softmax, epilogue
    # -----------------------------------------------------------------------------------------
    @cute.jit
    def consumer(
        self, mO, mLSE, sQ, sK, sV, sP, sO, tma_atom_O, tiled_mma_qk, tiled_mma_pv,
        pipe_q, pipe_k, pipe_v, tidx, scale_log2, m_block, head_idx, batch_idx,
        seqlen_q, seqlen_k, n_block_min, n_block_max, state=None, q_state=None, sOnes=None,
        split=None,
    ):
        """One tile; with tiles_per_cta > 1 the pipeline states come from the previous tile and
        are returned for the next. split (tail_kv_split's launch): (rank in the cluster, fp32
        staging buffer): this CTA's keys are one slice of the tile's, and rank 0 stores the tile."""
        wg_idx = cute.arch.make_warp_uniform(tidx // 128)
        wg_mma_qk = tiled_mma_qk.get_slice(wg_idx * 128)
        wg_mma_pv = tiled_mma_pv.get_slice(wg_idx * 128)
        thr_mma_qk = tiled_mma_qk.get_slice(tidx)
        # V^T view (d, tile_n, stages) for the PV GEMM's MN-major B operand.
        sVt = cute.composition(
            sV, cute.make_ordered_layout((self.head_dim, self.tile_n, self.num_stages), order=(1, 0, 2))
        )
        if const_expr(self.q_in_regs):  # filled from sQ once Q has landed
            tSrQ = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_shape_A((self.tile_m, self.head_dim)))
        else:
            tSrQ = wg_mma_qk.make_fragment_A(wg_mma_qk.partition_A(sQ))
        tSrK = wg_mma_qk.make_fragment_B(wg_mma_qk.partition_B(sK))
        tOrVt = wg_mma_pv.make_fragment_B(wg_mma_pv.partition_B(sVt))
        if const_expr(self.mma_pv_is_rs):
            tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
        else:
            tOrP = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_A(sP))
        acc_O = cute.make_rmem_tensor(tiled_mma_pv.partition_shape_C((self.tile_m, self.head_dim)), Float32)
        acc_O.fill(0.0)

        # P -> smem (SS PV only) with stmatrix, laid out like the QK^T accumulator.
        tPsP = None
        thr_copy_P = None
        if const_expr(not self.mma_pv_is_rs):
            thr_copy_P = cute.make_tiled_copy_C(
                cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype),
                tiled_mma_qk,
            ).get_slice(tidx)
            tPsP = thr_copy_P.partition_D(sP)

        num_rows = cute.size(acc_view_mn(acc_O), mode=[0])
        row_max = cute.make_rmem_tensor(num_rows, Float32)
        row_sum = cute.make_rmem_tensor(num_rows, Float32)
        row_max.fill(-Float32.inf)
        row_sum.fill(0.0)
        # rescale_o_before_pv: the factor O still owes the last softmax, applied before the next PV
        scores_scale = cute.make_rmem_tensor(num_rows, Float32)
        scores_scale.fill(1.0)

        # Blocks [n_block_causal, n_block_max - 1) straddle the diagonal and need the causal
        # mask; block n_block_max - 1 always goes through the full mask (seqlen and causal).
        n_block_causal = n_block_max - 1
        if const_expr(self.is_causal):
            row_start = m_block * self.tile_m
            if const_expr(self.pack_gqa):
                row_start = row_start // self.qhead_per_kvhead
            first_masked_key = row_start + seqlen_k - seqlen_q + 1
            n_block_causal = Int32(0)
            if first_masked_key > 0:
                n_block_causal = first_masked_key // self.tile_n
            n_block_causal = cutlass.max(n_block_causal, n_block_min)
            n_block_causal = cutlass.min(n_block_causal, n_block_max - 1)

        # row_sum_by_mma: P x ones (tile_n x ROW_SUM_N) into acc_L, every column a row sum
        rsum = None
        if const_expr(self.row_sum_by_mma):
            tiled_mma_sum = sm90_utils.make_trivial_tiled_mma(
                self.dtype, self.dtype, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
                Float32, atom_layout_mnk=(self.num_mma_wg, 1, 1), tiler_mn=(64, ROW_SUM_N),
                a_source=warpgroup.OperandSource.RMEM,
            )
            wg_mma_sum = tiled_mma_sum.get_slice(wg_idx * 128)
            tLrOnes = wg_mma_sum.make_fragment_B(wg_mma_sum.partition_B(sOnes))
            acc_L = cute.make_rmem_tensor(tiled_mma_sum.partition_shape_C((self.tile_m, ROW_SUM_N)), Float32)
            acc_L.fill(0.0)
            rsum = (tiled_mma_sum, tLrOnes, acc_L)
        mma = (tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum)
        mma_b = None  # p_double_buffer: the same GEMMs with P's second register buffer
        if const_expr(self.p_double_buffer):
            tOrP_b = wg_mma_pv.make_fragment_A(wg_mma_pv.partition_shape_A((self.tile_m, self.tile_n)))
            mma_b = (tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP_b, acc_O, thr_copy_P, tPsP, rsum)
        # lazy_rescale: 1 where some row of this warp took a new max in the last softmax
        max_moved = None
        if const_expr(self.lazy_rescale):
            max_moved = cute.make_rmem_tensor(1, Int32)
        stats = (row_max, row_sum, scale_log2, scores_scale, max_moved)
        mask_args = (thr_mma_qk, m_block, seqlen_q, seqlen_k)

        if const_expr(self.use_sched_barrier):
            if wg_idx == 0:
                # Warp group 0 issues first: pre-arrive on its own barrier.
                cute.arch.barrier_arrive(barrier_id=BAR_SCHED_WG1, number_of_threads=256)

        if const_expr(state is None):
            state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, self.num_stages)
            q_state = pipeline.make_pipeline_state(pipeline.PipelineUserType.Consumer, 1)
        self.wait(pipe_q, q_state)
        if const_expr(self.q_in_regs):
            # this thread's slice of Q for the RS QK^T GEMM, in the WGMMA A-fragment layout
            copy_q = cute.make_tiled_copy_A(
                cute.make_copy_atom(cute.nvgpu.warp.LdMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype),
                tiled_mma_qk,
            ).get_slice(tidx)
            cute.copy(copy_q, copy_q.partition_S(sQ), copy_q.retile(tSrQ))

        n_block = n_block_max - 1
        if const_expr(self.intra_wg_overlap):
            self.first_block_overlap(mma, stats, mask_args, pipe_k, state, n_block)
            if const_expr(self.p_double_buffer):
                state = self.blocks_double_buffered(mma, mma_b, stats, mask_args, pipe_k, pipe_v, state,
                                                    n_block - 1, n_block - n_block_causal, wg_idx, True)
                state = self.blocks_double_buffered(mma, mma_b, stats, mask_args, pipe_k, pipe_v, state,
                                                    n_block_causal - 1, n_block_causal - n_block_min,
                                                    wg_idx, False)
            else:
                for i in cutlass.range(n_block - n_block_causal, unroll=1):
                    state = self.block_overlap(mma, stats, mask_args, pipe_k, pipe_v, state,
                                               n_block - 1 - i, wg_idx, True)
                # frozen_row_max: the unmasked blocks check their sums against the row maxima
                # the blocks before left (every row has seen a key by then, or its check fails)
                smem_qk = (sQ, sK) if const_expr(self.frozen_row_max) else None
                for i in cutlass.range(n_block_causal - n_block_min, unroll=1):
                    state = self.block_overlap(mma, stats, mask_args, pipe_k, pipe_v, state,
                                               n_block_causal - 1 - i, wg_idx, False, smem_qk=smem_qk)
            q_state = self.release_q_early(pipe_q, q_state)
            # PV of the last block
            if const_expr(self.rescale_o_before_pv):
                self.rescale_accumulators(mma, scores_scale)
            self.wait(pipe_v, state)
            self.pv_gemm(mma, state.index, 0)
            pipe_v.consumer_release(state)
            state.advance()
        else:
            self.sched_sync(wg_idx)
            state = self.block(mma, stats, mask_args, pipe_k, pipe_v, state, n_block, wg_idx,
                               True, True)
            for i in cutlass.range(n_block - n_block_causal, unroll=1):
                state = self.block(mma, stats, mask_args, pipe_k, pipe_v, state,
                                   n_block - 1 - i, wg_idx, True, False)
            for i in cutlass.range(n_block_causal - n_block_min, unroll=1):
                state = self.block(mma, stats, mask_args, pipe_k, pipe_v, state,
                                   n_block_causal - 1 - i, wg_idx, False, False)
            self.sched_arrive(wg_idx)
            q_state = self.release_q_early(pipe_q, q_state)

        if const_expr(self.row_sum_by_mma):
            for r in cutlass.range_constexpr(num_rows):  # every column holds the whole row's sum
                row_sum[r] = rsum[2][2 * r]
        if const_expr(split is None):
            self.epilogue(acc_O, row_max, row_sum, scale_log2, mO, mLSE, sO, tma_atom_O, tiled_mma_pv,
                          tidx, m_block, head_idx, batch_idx, seqlen_q)
        else:
            if self.combine_kv_split(acc_O, row_max, row_sum, scale_log2, split[0], split[1],
                                     tiled_mma_pv, tidx):
                self.epilogue(acc_O, row_max, row_sum, scale_log2, mO, mLSE, sO, tma_atom_O,
                              tiled_mma_pv, tidx, m_block, head_idx, batch_idx, seqlen_q, True)
        if const_expr(self.tiles_per_cta > 1 and not self.separate_o_buffer):
            # the epilogue's storing warp has waited for O's TMA store to read sQ: the producer may
            # load the next tile's Q there
            if cute.arch.make_warp_uniform(cute.arch.warp_idx()) == 4:
                pipe_q.consumer_release(q_state)
            q_state.advance()
        return state, q_state

    @cute.jit
    def release_q_early(self, pipe_q, q_state):
        """With several tiles per CTA and O's own buffer: this warp's QK^T GEMMs of the tile are
        done, so the producer may load the next tile's Q during the last PV GEMM and the epilogue."""
        if const_expr(self.tiles_per_cta > 1 and self.separate_o_buffer):
            pipe_q.consumer_release(q_state)
            q_state.advance()
        return q_state

    @cute.jit
    def wait(self, pipe, state):
        """Wait for a full stage: with try_wait_first, probe the mbarrier once and enter the
        waiting loop only if that failed (ptxas then polls twice before its NANOSLEEP fallback)."""
        if const_expr(self.try_wait_first):
            pipe.consumer_wait(state, pipe.consumer_try_wait(state))
        else:
            pipe.consumer_wait(state)

    # Ping-pong: warp group i waits on barrier i before issuing its GEMMs and, once they are
    # issued, lets warp group i+1 go, so one group's softmax hides under the other's GEMMs.
    @cute.jit
    def sched_sync(self, wg_idx: Int32):
        if const_expr(self.use_sched_barrier):
            cute.arch.barrier(barrier_id=BAR_SCHED_WG1 + wg_idx, number_of_threads=256)

    @cute.jit
    def sched_arrive(self, wg_idx: Int32):
        if const_expr(self.use_sched_barrier):
            nxt = wg_idx + 1
            if nxt == self.num_mma_wg:
                nxt = 0
            cute.arch.barrier_arrive(barrier_id=BAR_SCHED_WG1 + nxt, number_of_threads=256)

    @cute.jit
    def apply_mask(self, acc_S, mask_args, n_block: Int32, causal: cutlass.Constexpr[bool]):
        """-inf on keys >= seqlen_k and, if causal, on keys right of each row's diagonal."""
        thr_mma_qk, m_block, seqlen_q, seqlen_k = mask_args
        acc_mn = acc_view_mn(acc_S)
        cS = cute.make_identity_tensor((self.tile_m, self.tile_n))
        tScS = acc_view_mn(thr_mma_qk.partition_C(cS))
        # Columns relative to this thread's first column are compile-time constants.
        t0ScS = acc_view_mn(thr_mma_qk.get_slice(0).partition_C(cS))
        col0 = tScS[0, 0][1]
        key_limit = seqlen_k - n_block * self.tile_n - col0
        if const_expr(not causal):
            if const_expr(self.unmask_full_blocks):
                # a block with every key inside seqlen_k (all but a ragged last one) needs no mask:
                # one uniform branch instead of a compare per column and a select per element
                # (issue 13, v0049-v0050, with try_wait_first: +0.3% d64, +0.6% on the paper suite)
                if seqlen_k - n_block * self.tile_n < self.tile_n:
                    self.mask_columns(acc_mn, t0ScS, key_limit)
            else:
                self.mask_columns(acc_mn, t0ScS, key_limit)
        else:
            for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
                row = tScS[r, 0][0] + m_block * self.tile_m
                if const_expr(self.pack_gqa):
                    row = row // self.qhead_per_kvhead
                limit = cutlass.min(row + 1 + seqlen_k - seqlen_q - n_block * self.tile_n - col0, key_limit)
                if const_expr(self.bitmask_causal_mask):
                    self.mask_row_bitmask(acc_mn, t0ScS, r, limit)
                else:
                    for c in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
                        if t0ScS[0, c][1] >= limit:
                            acc_mn[r, c] = -Float32.inf

    @cute.jit
    def mask_row_bitmask(self, acc_mn, t0ScS, r: cutlass.Constexpr[int], limit: Int32):
        """-inf on row r's columns at or past limit, through one bitmask per 32 columns: ptxas
        turns the bit tests into R2P, a few instructions per row where a compare per column stood
        (FA4's causal mask; ISETP 65 -> 5 per masked d64 iteration)."""
        ncol = cute.size(acc_mn, mode=[1])
        # This thread's columns, relative to its first, are 0, 1, 8, 9, 16, 17, ... (the WGMMA
        # accumulator layout), so the columns below limit are the first `kept` of its elements.
        for c in cutlass.range_constexpr(ncol):
            assert t0ScS[0, c][1] == c // 2 * 8 + c % 2, "mask_row_bitmask: unexpected accumulator layout"
        limit = cutlass.max(limit, 0)
        kept = limit // 8 * 2 + cutlass.min(limit % 8, 2)
        for s in cutlass.range_constexpr((ncol + 31) // 32):
            # bits 0 .. kept - 32 s - 1 of this chunk are kept; a shift by 32 or more is undefined
            # in LLVM, so it is clamped and the empty chunk selected
            drop = cutlass.max(32 * (s + 1) - kept, 0)
            bits = Uint32(0) if drop >= 32 else Uint32(0xFFFFFFFF) >> Uint32(cutlass.min(drop, 31))
            for i in cutlass.range_constexpr(min(32, ncol - 32 * s)):
                keep = cutlass.Boolean(bits & (Uint32(1) << i))
                acc_mn[r, 32 * s + i] = acc_mn[r, 32 * s + i] if keep else -Float32.inf

    @cute.jit
    def mask_columns(self, acc_mn, t0ScS, key_limit: Int32):
        """-inf on the columns at or past key_limit (columns relative to this thread's first)."""
        for c in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
            if t0ScS[0, c][1] >= key_limit:
                for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
                    acc_mn[r, c] = -Float32.inf

    @cute.jit
    def online_softmax(self, acc_S, stats, is_first: cutlass.Constexpr[bool]):
        """P = exp2(S*scale_log2 - max*scale_log2) in place; returns the factor for O's rows.
        Row sums stay per-thread partial (reduced over the 4 threads of a row at the end).
        Each row is one vector: max over 4 independent chains, then the whole row's exp2, then
        its sum. Written per row as vectors, ptxas keeps the FFMA/exp2 of the row ahead of the
        wait for the PV GEMM (WARPGROUP.DEPBAR 0) instead of sinking them below it, so the
        softmax overlaps the PV GEMM (issue 13: 5.9% of stall samples sat on that wait)."""
        row_max, row_sum, scale_log2, _, max_moved = stats
        acc_mn = acc_view_mn(acc_S)
        row_scale = cute.make_rmem_tensor(cute.size(row_max), Float32)
        ncol = cute.size(acc_mn, mode=[1])
        for r in cutlass.range_constexpr(cute.size(row_max)):
            row = acc_mn[r, None].load()
            m = self.row_max_of(row, ncol, None if is_first else row_max[r])
            m_prev = row_max[r]
            if const_expr(self.lazy_rescale and not is_first):
                # keep the old max unless the new one is more than LAZY_RESCALE_LOG2 above it (a
                # row that saw only masked keys so far: -inf to finite is a move; -inf to -inf
                # compares NaN, no move)
                grow = (m - m_prev) * scale_log2 > LAZY_RESCALE_LOG2
                m = m if grow else m_prev
                moved = cute.arch.vote_any_sync(grow)
                if const_expr(r == 0):
                    max_moved[0] = Int32(0)
                if moved:
                    max_moved[0] = Int32(1)
            row_max[r] = m
            m_safe = 0.0 if m == -Float32.inf else m  # a row that saw only masked keys
            x = row * scale_log2 - m_safe * scale_log2
            if const_expr(self.exp2_fma_every == 0):
                p = cute.math.exp2(x, fastmath=True)
            else:
                p = self.exp2_split(x, ncol)
            if const_expr(is_first):
                row_scale[r] = 1.0
                if const_expr(not self.row_sum_by_mma):
                    row_sum[r] = self.row_total(p, ncol, Float32(0.0))
            else:
                sc = cute.math.exp2((m_prev - m_safe) * scale_log2, fastmath=True)
                row_scale[r] = sc
                if const_expr(not self.row_sum_by_mma):
                    row_sum[r] = self.row_total(p, ncol, row_sum[r] * sc)
            acc_mn[r, None].store(p)
        return row_scale

    @cute.jit
    def row_max_of(self, row, ncol: cutlass.Constexpr[int], prev=None) -> Float32:
        """The max of a row (this thread's ncol values, and prev where given) over the 4 threads of
        the quad that share the row: four chains here, then two butterfly shuffles."""
        vals = cute.make_rmem_tensor(ncol, Float32)
        vals.store(row)
        m = reduce_in_four_chains(vals, ncol, cute.arch.fmax)
        if const_expr(prev is not None):
            m = cute.arch.fmax(m, prev)
        m = cute.arch.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=2))
        return cute.arch.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=1))

    @cute.jit
    def row_total(self, p, ncol: cutlass.Constexpr[int], init: Float32) -> Float32:
        """init + the sum of a row's P values: one chain of adds, or with row_sum_chains 4 four
        interleaved chains summed at the end (shorter dependences for ptxas to schedule the
        exp2s around)."""
        if const_expr(self.row_sum_chains == 1):
            return p.reduce(cute.ReductionOp.ADD, init, 0)
        ps = cute.make_rmem_tensor(ncol, Float32)
        ps.store(p)
        return init + reduce_in_four_chains(ps, ncol, lambda a, b: a + b)

    @cute.jit
    def exp2_split(self, x, ncol: cutlass.Constexpr[int]):
        """exp2 of a row: every exp2_fma_every-th column on the FMA pipes, the rest on the MUFU."""
        xs = cute.make_rmem_tensor(ncol, Float32)
        xs.store(x)
        k = self.exp2_fma_every
        for c in cutlass.range_constexpr(ncol):
            if const_expr(c % k == k - 1):
                xs[c] = exp2_fma(xs[c])
            else:
                xs[c] = cute.math.exp2(xs[c], fastmath=True)
        return xs.load()

    @cute.jit
    def rescale_O(self, acc_O, row_scale):
        acc_mn = acc_view_mn(acc_O)
        for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
            for c in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
                acc_mn[r, c] = acc_mn[r, c] * row_scale[r]

    @cute.jit
    def rescale_accumulators(self, mma, row_scale, stats=None):
        """O times row_scale, and with row_sum_by_mma the row sums riding along with it (an m64n8
        accumulator fragment is ((2 columns, 2 rows), 1, 1): value i is on row i // 2). Given the
        softmax's stats, with lazy_rescale O only when a row of this warp took a new max (the
        factor of every other row is then exactly 1)."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        if const_expr(self.lazy_rescale and stats is not None):
            if stats[4][0] != 0:
                self.rescale_O(acc_O, row_scale)
        else:
            self.rescale_O(acc_O, row_scale)
        if const_expr(self.row_sum_by_mma):
            acc_L = rsum[2]
            for i in cutlass.range_constexpr(cute.size(acc_L)):
                acc_L[i] = acc_L[i] * row_scale[i // 2]

    @cute.jit
    def pv_gemm(self, mma, stage, wait: cutlass.Constexpr[int]):
        """O += P V from K/V stage `stage`; with row_sum_by_mma also L += P ones in the same
        WGMMA group."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        also = None
        if const_expr(self.row_sum_by_mma):
            tiled_mma_sum, tLrOnes, acc_L = rsum
            also = (tiled_mma_sum, acc_L, tLrOnes)
        wgmma(tiled_mma_pv, acc_O, tOrP, tOrVt[None, None, None, stage], False, wait, also)

    @cute.jit
    def stage_P(self, mma, acc_S):
        """Convert P to 16 bit into the PV A operand (registers, or smem through stmatrix)."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        if const_expr(self.mma_pv_is_rs):
            # The A fragment of the RS WGMMA has the accumulator's register order.
            to_half(acc_S, tOrP)
        else:
            rP = cute.make_rmem_tensor_like(acc_S, self.dtype)
            to_half(acc_S, rP)
            cute.copy(thr_copy_P, thr_copy_P.retile(rP), tPsP)

    @cute.jit
    def fence_P(self):
        if const_expr(not self.mma_pv_is_rs):
            # stmatrix writes must be visible to the async proxy (WGMMA); each warp only
            # reads back its own rows of P.
            cute.arch.fence_view_async_shared()
            cute.arch.sync_warp()

    @cute.jit
    def block(self, mma, stats, mask_args, pipe_k, pipe_v, state, n_block: Int32, wg_idx: Int32,
              masked: cutlass.Constexpr[bool], is_first: cutlass.Constexpr[bool]):
        """One K/V block without overlap: S = QK^T, softmax, O = O*scale + PV."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        acc_S = cute.make_rmem_tensor(tiled_mma_qk.partition_shape_C((self.tile_m, self.tile_n)), Float32)
        self.wait(pipe_k, state)
        wgmma(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, state.index], True, -1)
        self.sched_arrive(wg_idx)
        warpgroup.wait_group(0)
        pipe_k.consumer_release(state)
        if const_expr(masked):
            self.apply_mask(acc_S, mask_args, n_block, self.is_causal)
        row_scale = self.online_softmax(acc_S, stats, is_first)
        self.stage_P(mma, acc_S)
        if const_expr(not is_first):
            self.rescale_accumulators(mma, row_scale, stats)
        self.fence_P()
        self.wait(pipe_v, state)
        self.sched_sync(wg_idx)
        self.pv_gemm(mma, state.index, 0)
        pipe_v.consumer_release(state)
        state.advance()
        return state

    @cute.jit
    def first_block_overlap(self, mma, stats, mask_args, pipe_k, state, n_block: Int32):
        """First block with overlap: S = QK^T and softmax only; its PV is issued with the next
        block's QK^T."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        acc_S = cute.make_rmem_tensor(tiled_mma_qk.partition_shape_C((self.tile_m, self.tile_n)), Float32)
        self.wait(pipe_k, state)
        wgmma(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, state.index], True, 0)
        pipe_k.consumer_release(state)
        self.apply_mask(acc_S, mask_args, n_block, self.is_causal)
        self.online_softmax(acc_S, stats, True)
        self.stage_P(mma, acc_S)
        self.fence_P()

    @cute.jit
    def blocks_double_buffered(self, mma_a, mma_b, stats, mask_args, pipe_k, pipe_v, state,
                               first: Int32, count: Int32, wg_idx: Int32,
                               masked: cutlass.Constexpr[bool]):
        """K/V blocks first, first - 1, ... (count of them) with overlap and P's two register
        buffers taking turns (two blocks per trip, so each buffer keeps its registers). The
        newest P is in mma_a's buffer on entry and on return (an odd count copies it back once)."""
        for i in cutlass.range(count // 2, unroll=1):
            state = self.block_overlap(mma_a, stats, mask_args, pipe_k, pipe_v, state,
                                       first - 2 * i, wg_idx, masked, mma_b)
            state = self.block_overlap(mma_b, stats, mask_args, pipe_k, pipe_v, state,
                                       first - 2 * i - 1, wg_idx, masked, mma_a)
        if count % 2 == 1:
            state = self.block_overlap(mma_a, stats, mask_args, pipe_k, pipe_v, state,
                                       first - count + 1, wg_idx, masked, mma_b)
            # that block's PV GEMM has landed: A's buffer is free
            mma_a[5].store(mma_b[5].load())
        return state

    @cute.jit
    def block_overlap(self, mma, stats, mask_args, pipe_k, pipe_v, state, n_block: Int32,
                      wg_idx: Int32, masked: cutlass.Constexpr[bool], mma_next=None, smem_qk=None):
        """S_j = QK_j^T and O += P_{j+1} V_{j+1} in flight together; softmax of S_j once the
        first lands, then O is rescaled after the PV has landed. mma_next (p_double_buffer):
        P_j goes into its buffer before the wait for the PV GEMM, which reads mma's. smem_qk
        (frozen_row_max, unmasked blocks): (sQ, sK), the softmax against the rows' current
        maxima, done again exactly from them where a row's sum went over."""
        tiled_mma_qk, tiled_mma_pv, tSrQ, tSrK, tOrVt, tOrP, acc_O, thr_copy_P, tPsP, rsum = mma
        state_v = state.clone()
        state.advance()
        acc_S = cute.make_rmem_tensor(tiled_mma_qk.partition_shape_C((self.tile_m, self.tile_n)), Float32)
        self.wait(pipe_k, state)
        self.sched_sync(wg_idx)
        wgmma(tiled_mma_qk, acc_S, tSrQ, tSrK[None, None, None, state.index], True, -1)
        if const_expr(self.rescale_o_before_pv):
            # O is not in flight here (the last PV was waited for): scale it while QK^T runs
            self.rescale_accumulators(mma, stats[3])
        self.wait(pipe_v, state_v)
        self.pv_gemm(mma, state_v.index, -1)
        self.sched_arrive(wg_idx)
        warpgroup.wait_group(1)
        if const_expr(smem_qk is not None):
            self.softmax_frozen(mma, acc_S, stats, mask_args, pipe_k, pipe_v, state, state_v, smem_qk)
            return state
        pipe_k.consumer_release(state)
        if const_expr(masked):
            self.apply_mask(acc_S, mask_args, n_block, self.is_causal)
        row_scale = self.online_softmax(acc_S, stats, False)
        if const_expr(mma_next is not None):
            self.stage_P(mma_next, acc_S)
        warpgroup.wait_group(0)
        pipe_v.consumer_release(state_v)
        if const_expr(mma_next is None):
            self.stage_P(mma, acc_S)
        if const_expr(self.rescale_o_before_pv):
            for r in cutlass.range_constexpr(cute.size(row_scale)):
                stats[3][r] = row_scale[r]
        else:
            self.rescale_accumulators(mma, row_scale, stats)
        self.fence_P()
        return state

    @cute.jit
    def softmax_frozen(self, mma, acc_S, stats, mask_args, pipe_k, pipe_v, state, state_v, smem_qk):
        """block_overlap's softmax, P and stage releases for an unmasked block under frozen_row_max,
        once its QK^T GEMM has landed. K's stage is released only after the check: the slow path
        reads the block's keys again."""
        acc_O = mma[6]
        row_max, row_sum, scale_log2, _, _ = stats
        acc_mn = acc_view_mn(acc_S)
        num_rows = cute.size(row_max)
        partial = cute.make_rmem_tensor(num_rows, Float32)
        over = cutlass.Boolean(False)
        for r in cutlass.range_constexpr(num_rows):
            # a row that has seen no key yet (max -inf) gives +inf here, and so goes over
            p = cute.math.exp2(acc_mn[r, None].load() * scale_log2 - row_max[r] * scale_log2, fastmath=True)
            partial[r] = p.reduce(cute.ReductionOp.ADD, Float32(0.0), 0)
            over = over | (partial[r] > FROZEN_MAX_SUM_LIMIT)
            acc_mn[r, None].store(p)
        redo = cute.arch.vote_any_sync(over)
        if const_expr(self.frozen_over_early):
            # the in-place rescale before the PV wait (it overlaps that GEMM); O's after it
            scale = cute.make_rmem_tensor(num_rows, Float32)
            rescore = cutlass.Boolean(False)
            if redo:
                rescore = self.frozen_rescale_p_early(acc_S, stats, partial, scale)
            warpgroup.wait_group(0)
            pipe_v.consumer_release(state_v)
            if redo:
                if rescore:
                    self.rescore_exactly(acc_S, acc_O, stats, mask_args[0], smem_qk, state.index)
                else:
                    self.rescale_O(acc_O, scale)
            else:
                for r in cutlass.range_constexpr(num_rows):
                    row_sum[r] = row_sum[r] + partial[r]
        else:
            warpgroup.wait_group(0)
            pipe_v.consumer_release(state_v)
            if redo:
                if const_expr(self.frozen_over_in_place):
                    self.frozen_row_max_over(acc_S, acc_O, stats, partial, mask_args[0], smem_qk, state.index)
                else:
                    self.rescore_exactly(acc_S, acc_O, stats, mask_args[0], smem_qk, state.index)
            else:
                for r in cutlass.range_constexpr(num_rows):
                    row_sum[r] = row_sum[r] + partial[r]
        pipe_k.consumer_release(state)
        self.stage_P(mma, acc_S)
        self.fence_P()

    @cute.jit
    def rescore_exactly(self, acc_S, acc_O, stats, thr_mma_qk, smem_qk, stage: Int32):
        """The block's scores again from shared memory, then the exact online softmax (O rescaled)."""
        self.scores_from_smem(acc_S, thr_mma_qk, smem_qk, stage)
        self.rescale_O(acc_O, self.online_softmax(acc_S, stats, False))

    @cute.jit
    def frozen_row_max_over(self, acc_S, acc_O, stats, partial, thr_mma_qk, smem_qk, stage: Int32):
        """frozen_over_in_place: some row of this warp summed past FROZEN_MAX_SUM_LIMIT against its
        standing max. Each row whose largest P, peak, is above 1 moves its reference up to that
        key's score: P, the row's sums and O times 1 / peak. Where a P passed
        FROZEN_OVER_PEAK_LIMIT (or overflowed exp2 to +inf, and so lost its value):
        rescore_exactly."""
        peak = self.row_peaks(acc_S, stats)
        if cute.arch.vote_any_sync(self.past_peak_limit(peak)):
            self.rescore_exactly(acc_S, acc_O, stats, thr_mma_qk, smem_qk, stage)
        else:
            scale = cute.make_rmem_tensor(cute.size(peak), Float32)
            self.rescale_rows_to_peak(acc_S, stats, partial, peak, scale)
            self.rescale_O(acc_O, scale)

    @cute.jit
    def frozen_rescale_p_early(self, acc_S, stats, partial, scale) -> cutlass.Boolean:
        """frozen_over_early: frozen_row_max_over's work on P, the sums and the row max, before the
        PV wait; O's factors left in `scale`. Returns (warp-uniform) whether the block must be
        rescored instead (then nothing here changed)."""
        peak = self.row_peaks(acc_S, stats)
        rescore = cute.arch.vote_any_sync(self.past_peak_limit(peak))
        if not rescore:
            self.rescale_rows_to_peak(acc_S, stats, partial, peak, scale)
        return rescore

    @cute.jit
    def row_peaks(self, acc_S, stats):
        """Each row's largest P of this block (over the quad)."""
        acc_mn = acc_view_mn(acc_S)
        num_rows = cute.size(stats[0])
        peak = cute.make_rmem_tensor(num_rows, Float32)
        for r in cutlass.range_constexpr(num_rows):
            peak[r] = self.row_max_of(acc_mn[r, None].load(), cute.size(acc_mn, mode=[1]))
        return peak

    @cute.jit
    def past_peak_limit(self, peak) -> cutlass.Boolean:
        overflow = cutlass.Boolean(False)
        for r in cutlass.range_constexpr(cute.size(peak)):
            overflow = overflow | (peak[r] > FROZEN_OVER_PEAK_LIMIT)
        return overflow

    @cute.jit
    def rescale_rows_to_peak(self, acc_S, stats, partial, peak, scale):
        """Each row with peak above 1: reference up to that key's score, P and the row's sums times
        1 / peak (O's factor left in scale). The row's largest P becomes 1 (within an fp32 ulp, so
        exactly 1 in bf16), as in the exact softmax: a power-of-two step left it anywhere in
        (1/2, 1], and a row one key dominates then carried that P's bf16 rounding (2^-9) into its
        output."""
        row_max, row_sum, scale_log2, _, _ = stats
        acc_mn = acc_view_mn(acc_S)
        for r in cutlass.range_constexpr(cute.size(row_max)):
            factor = Float32(1.0)
            step = Float32(0.0)
            if peak[r] > 1.0:
                factor = cute.arch.rcp_approx(peak[r])
                step = cute.math.log2(peak[r], fastmath=True)
            scale[r] = factor
            row_max[r] = row_max[r] + step / scale_log2
            row_sum[r] = (row_sum[r] + partial[r]) * scale[r]
            acc_mn[r, None].store(acc_mn[r, None].load() * scale[r])

    @cute.jit
    def scores_from_smem(self, acc_S, thr_mma_qk, smem_qk, stage: Int32):
        """This thread's elements of S = Q K^T for K/V stage `stage`, one fp32 FMA at a time from
        shared memory (frozen_row_max's slow path: slow, and rare)."""
        sQ, sK = smem_qk
        acc_mn = acc_view_mn(acc_S)
        tScS = acc_view_mn(thr_mma_qk.partition_C(cute.make_identity_tensor((self.tile_m, self.tile_n))))
        acc_S.fill(0.0)
        for d in cutlass.range(self.head_dim, unroll=1):
            for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
                q = Float32(sQ[tScS[r, 0][0], d])
                for c in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
                    acc_mn[r, c] = acc_mn[r, c] + q * Float32(sK[tScS[r, c][1], d, stage])

    @cute.jit
    def combine_kv_split(self, acc_O, row_max, row_sum, scale_log2, rank: Int32, buf, tiled_mma_pv,
                         tidx: Int32):
        """tail_kv_split: the CTAs of a cluster computed one tile over disjoint slices of its keys;
        merge them into rank 0's registers, ready for its epilogue (returns whether this CTA is
        rank 0). Each CTA stages its O (unnormalized fp32, row-major) and row max and sum in its
        own shared memory. Then CTA j merges rows [j R, (j + 1) R) of every CTA's O, each
        weighted 2^((m_k - max_k m_k) * scale), reading them through distributed shared memory,
        and writes the merged rows into rank 0's buffer, from which rank 0 reloads its
        registers: each SM moves about one tile of O, where rank 0 gathering all of them would
        move kv_split tiles."""
        nthr = self.num_mma_threads
        c = self.kv_split
        rows_per_rank = self.tile_m // c
        row_words = self.head_dim + SPLIT_ROW_PAD  # the padding spreads a warp's rows over banks
        stats_word = self.tile_m * row_words  # then max[tile_m], sum[tile_m]
        nrows = cute.size(row_max)
        for r in cutlass.range_constexpr(nrows):
            s = row_sum[r]
            if const_expr(not self.row_sum_by_mma):  # per-thread partial sums: add the row's 4 threads
                s = s + cute.arch.shuffle_sync_bfly(s, offset=2)
                s = s + cute.arch.shuffle_sync_bfly(s, offset=1)
            row_sum[r] = s
        thr_mma = tiled_mma_pv.get_slice(tidx)
        tOcO = acc_view_mn(thr_mma.partition_C(cute.make_identity_tensor((self.tile_m, self.head_dim))))
        acc_mn = acc_view_mn(acc_O)
        o_buf = cute.make_tensor(buf, cute.make_layout((self.tile_m, self.head_dim), stride=(row_words, 1)))
        st_buf = cute.make_tensor(buf + stats_word, cute.make_layout((self.tile_m, 2), stride=(1, self.tile_m)))
        # every MMA warp's GEMMs have read K and V before their buffers are overwritten
        cute.arch.barrier(barrier_id=BAR_EPILOGUE, number_of_threads=nthr)
        for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
            for col in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
                o_buf[tOcO[r, col]] = acc_mn[r, col]
        if tOcO[0, 0][1] == 0:
            for r in cutlass.range_constexpr(nrows):
                st_buf[tOcO[r, 0][0], 0] = row_max[r]
                st_buf[tOcO[r, 0][0], 1] = row_sum[r]
        cute.arch.cluster_arrive()  # release: the staged values are visible to the cluster
        cute.arch.cluster_wait()

        base = buf.toint()
        bases = [dsmem_addr(base, k) for k in range(c)]
        for u in cutlass.range_constexpr(rows_per_rank * self.head_dim // nthr):
            e = tidx + u * nthr  # consecutive threads, consecutive words: no bank conflicts
            row = rank * rows_per_rank + e // self.head_dim
            word = row * row_words + e % self.head_dim
            m_k, m_new = self.split_row_max(bases, stats_word + row)
            total = Float32(0.0)
            for k in cutlass.range_constexpr(c):
                total = total + self.split_factor(m_k[k], m_new, scale_log2) * ld_dsmem_f32(bases[k] + 4 * word)
            st_dsmem_f32(bases[0] + 4 * word, total)
        is_rank0 = rank == 0
        if is_rank0:
            # rank 0's rows: the merged max and sum for its epilogue
            for r in cutlass.range_constexpr(nrows):
                row = tOcO[r, 0][0]
                m_k, m_new = self.split_row_max(bases, stats_word + row)
                s_new = Float32(0.0)
                for k in cutlass.range_constexpr(c):
                    s_k = ld_dsmem_f32(bases[k] + 4 * (stats_word + self.tile_m + row))
                    s_new = s_new + s_k * self.split_factor(m_k[k], m_new, scale_log2)
                row_max[r] = m_new
                row_sum[r] = s_new
        cute.arch.cluster_arrive()  # release: the merged rows are in rank 0's buffer
        cute.arch.cluster_wait()
        if is_rank0:
            for r in cutlass.range_constexpr(cute.size(acc_mn, mode=[0])):
                for col in cutlass.range_constexpr(cute.size(acc_mn, mode=[1])):
                    acc_mn[r, col] = o_buf[tOcO[r, col]]
        return is_rank0

    @cute.jit
    def split_row_max(self, bases, word):
        """A row's max in each CTA of the cluster (at `word` of every staging buffer), and the
        largest of them."""
        m_k = [ld_dsmem_f32(b + 4 * word) for b in bases]
        m_new = m_k[0]
        for k in cutlass.range_constexpr(1, len(m_k)):
            m_new = cute.arch.fmax(m_new, m_k[k])
        return m_k, m_new

    @cute.jit
    def split_factor(self, m_j: Float32, m_new: Float32, scale_log2: Float32) -> Float32:
        """2^((m_j - m_new) * scale): what a slice's O and sum weigh against the merged max (0 for
        a slice whose rows saw only masked keys)."""
        f = Float32(0.0)
        if m_j != -Float32.inf:
            f = cute.math.exp2((m_j - m_new) * scale_log2, fastmath=True)
        return f

    @cute.jit
    def epilogue(self, acc_O, row_max, row_sum, scale_log2, mO, mLSE, sO, tma_atom_O, tiled_mma_pv,
                 tidx, m_block, head_idx, batch_idx, seqlen_q, sums_done: cutlass.Constexpr = False):
        # Finish the row statistics: sum over the 4 threads sharing a row, then 1/sum and LSE.
        lse = cute.make_rmem_tensor(cute.size(row_sum), Float32)
        row_scale = cute.make_rmem_tensor(cute.size(row_sum), Float32)
        for r in cutlass.range_constexpr(cute.size(row_sum)):
            s = row_sum[r]
            if const_expr(not self.row_sum_by_mma and not sums_done):  # add the row's 4 threads
                s = s + cute.arch.shuffle_sync_bfly(s, offset=2)
                s = s + cute.arch.shuffle_sync_bfly(s, offset=1)
            empty = s == 0.0 or s != s
            row_scale[r] = cute.arch.rcp_approx(1.0 if empty else s)
            lse[r] = (
                -Float32.inf
                if empty
                else (row_max[r] * scale_log2 + cute.math.log2(s, fastmath=True)) * LN_2
            )
        self.rescale_O(acc_O, row_scale)

        # O: registers -> smem (stmatrix, into Q's buffer unless separate_o_buffer) -> global (TMA;
        # clips ragged rows).
        rO = cute.make_rmem_tensor_like(acc_O, self.dtype)
        to_half(acc_O, rO)
        # Every warp group has finished its QK^T reads of sQ before anyone overwrites it (O staged
        # in Q's buffer), and O's TMA store of the previous tile has read sO (several tiles per CTA).
        cute.arch.barrier(barrier_id=BAR_EPILOGUE, number_of_threads=self.num_mma_threads)
        copy_O = cute.make_tiled_copy_C(
            cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(transpose=False, num_matrices=4), self.dtype),
            tiled_mma_pv,
        )
        thr_copy_O = copy_O.get_slice(tidx)
        cute.copy(copy_O, thr_copy_O.retile(rO), thr_copy_O.partition_D(sO))

        # LSE straight from registers: the thread holding column 0 of a row writes it.
        thr_mma = tiled_mma_pv.get_slice(tidx)
        cO = cute.make_identity_tensor((self.tile_m, self.head_dim))
        tOcO = acc_view_mn(thr_mma.partition_C(cO))
        if tOcO[0, 0][1] == 0:
            for r in cutlass.range_constexpr(cute.size(lse)):
                row = m_block * self.tile_m + tOcO[r, 0][0]
                if const_expr(self.pack_gqa):
                    q_pos = row // self.qhead_per_kvhead
                    q_head = head_idx * self.qhead_per_kvhead + (row - q_pos * self.qhead_per_kvhead)
                    if q_pos < seqlen_q:
                        mLSE[batch_idx, q_head, q_pos] = lse[r]
                else:
                    if row < seqlen_q:
                        mLSE[batch_idx, head_idx, row] = lse[r]

        cute.arch.fence_view_async_shared()
        cute.arch.barrier(barrier_id=BAR_EPILOGUE, number_of_threads=self.num_mma_threads)
        if cute.arch.make_warp_uniform(cute.arch.warp_idx()) == 4:
            gO = cute.local_tile(mO[None, None, head_idx, batch_idx], (self.tile_m, self.head_dim), (m_block, 0))
            tOsO, tOgO = cpasync.tma_partition(
                tma_atom_O, 0, cute.make_layout(1), cute.group_modes(sO, 0, 2), cute.group_modes(gO, 0, 2)
            )
            cute.copy(tma_atom_O, tOsO, tOgO)
            cute.arch.cp_async_bulk_commit_group()
            cute.arch.cp_async_bulk_wait_group(0, read=True)


KERNEL = FlashAttentionForwardSm90
