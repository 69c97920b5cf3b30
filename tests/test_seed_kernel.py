"""The flash_fwd_sm90 seed kernel (dsl_templates/flash_fwd_sm90): renders, compiles for sm_90a
without a GPU, rejects what it cannot do, and on a GPU matches an fp32 reference within twice
PyTorch's own low-precision error."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import random
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avo.spec import AttentionSpec  # noqa: E402
from dsl_templates.flash_fwd_sm90.knobs import SPACE, Knobs, default_knobs, effective  # noqa: E402

TEMPLATE = ROOT / "dsl_templates" / "flash_fwd_sm90" / "template.py.j2"


def render(knobs: Knobs) -> str:
    import jinja2

    return jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined).render(knobs=knobs)


@functools.cache
def load_module(knobs: Knobs):
    src = render(knobs)
    name = "seed_" + hashlib.sha256(src.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "avo_seed_tests" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_args(spec: AttentionSpec):
    import cutlass
    import cutlass.cute as cute

    b, sq, sk, hq, hkv = (cute.sym_int() for _ in range(5))

    def bshd(s, h):
        strides = tuple(cute.sym_int(divisibility=8) for _ in range(3)) + (1,)
        return cute.runtime.make_fake_tensor(spec.cutlass_dtype, (b, s, h, spec.head_dim), strides,
                                             assumed_align=16)

    lse = cute.runtime.make_fake_compact_tensor(cutlass.Float32, (b, hq, sq), stride_order=(2, 1, 0),
                                                assumed_align=4)
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return (bshd(sq, hq), bshd(sk, hkv), bshd(sk, hkv), bshd(sq, hq), lse, cutlass.Float32(1.0), stream)


@functools.cache
def compiled(spec: AttentionSpec, knobs: Knobs):
    import cutlass.cute as cute

    kernel = load_module(knobs).KERNEL(spec)
    return cute.compile(kernel, *fake_args(spec), options="--enable-tvm-ffi")


# ---------------------------------------------------------------------------------------------
# CPU: render, compile, reject
# ---------------------------------------------------------------------------------------------
COMPILE_SPECS = [
    AttentionSpec("bf16", 128, False, 1),
    AttentionSpec("bf16", 128, True, 8),  # pack_gqa + causal
    AttentionSpec("fp16", 64, True, 1),  # 3 MMA warp groups
    AttentionSpec("bf16", 256, False, 1),
]


@pytest.mark.parametrize("spec", COMPILE_SPECS, ids=lambda s: s.key())
def test_compiles_for_sm90a(spec):
    knobs = default_knobs(spec)
    ok, reason = load_module(knobs).KERNEL.can_implement(spec)
    assert ok, reason
    fn = compiled(spec, knobs)
    assert callable(fn)


@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 128), AttentionSpec("fp16", 64, True)], ids=lambda s: s.key())
def test_register_split_fits_what_the_compiler_gives_the_cta(spec):
    """can_implement's launch allocation is the compiler's: the cubin's registers per thread times
    threads holds every warp group's setmaxnreg target (else setmaxnreg.inc waits forever)."""
    from avo import jit

    knobs = default_knobs(spec)
    module = load_module(knobs)
    kernel = module.KERNEL(spec)
    report = jit.compile_kernel(module.__file__, spec, arch="sm_90a", run=False).report
    assert report["registers"] == kernel.launch_regs
    assert report["threads_per_block"] == kernel.num_threads
    assert report["register_split"] == [knobs.producer_regs] + [knobs.mma_regs] * kernel.num_mma_wg
    split = 128 * (kernel.num_mma_wg * knobs.mma_regs + knobs.producer_regs)
    assert split <= report["registers"] * report["threads_per_block"]


def test_compiles_without_overlap_with_smem_p():
    spec = AttentionSpec("bf16", 128, True, 4)
    knobs = default_knobs(spec).replace(intra_wg_overlap=False, mma_pv_is_rs=False, pingpong=False)
    assert callable(compiled(spec, knobs))


@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 128, True, 8), AttentionSpec("fp16", 128, False, 1)],
                         ids=lambda s: s.key())
def test_compiles_with_several_tiles_per_cta(spec):
    for own_o in (False, True):
        knobs = default_knobs(spec).replace(tiles_per_cta=4, pingpong=False, separate_o_buffer=own_o,
                                            tail_kv_split=0)
        assert callable(compiled(spec, knobs))


def test_compiles_with_exp2_on_the_fma_pipes():
    spec = AttentionSpec("bf16", 64, True, 1)
    assert callable(compiled(spec, default_knobs(spec).replace(exp2_fma_every=4)))


def test_q_in_registers_compiles_to_register_sourced_qk_gemms():
    spec = AttentionSpec("bf16", 128, False, 1)
    module = load_module(default_knobs(spec).replace(q_in_registers=True))
    assert module.KERNEL(spec).q_in_regs and not load_module(default_knobs(spec)).KERNEL(spec).q_in_regs
    assert callable(compiled(spec, default_knobs(spec).replace(q_in_registers=True)))


def test_compiles_with_lazy_rescale():
    spec = AttentionSpec("bf16", 128, False, 1)
    assert callable(compiled(spec, default_knobs(spec).replace(lazy_rescale=True)))


def test_frozen_row_max_compiles_and_yields_to_the_softmax_knobs_it_replaces():
    """The knob the seed table sets everywhere; a knob that changes the overlapped loop's softmax
    its own way wins over it, in the kernel and in knobs.effective() alike (no duplicate kernels)."""
    spec = AttentionSpec("bf16", 64, True, 1)
    knobs = default_knobs(spec)
    assert knobs.frozen_row_max and load_module(knobs).KERNEL(spec).frozen_row_max
    assert callable(compiled(spec, knobs))
    for clash in (dict(lazy_rescale=True), dict(rescale_o_before_pv=True), dict(row_sum_chains=4),
                  dict(exp2_fma_every=8), dict(row_sum_by_mma=True), dict(intra_wg_overlap=False, pingpong=False)):
        k = knobs.replace(**clash)
        assert not load_module(k).KERNEL(spec).frozen_row_max, clash
        assert not effective(k, spec).frozen_row_max, clash
    assert effective(knobs, spec).frozen_row_max
    assert not effective(knobs.replace(frozen_row_max=False, frozen_over_in_place=True), spec).frozen_over_in_place
    assert knobs.frozen_over_in_place and load_module(knobs).KERNEL(spec).frozen_over_in_place
    rescore_only = knobs.replace(frozen_over_in_place=False)
    assert not load_module(rescore_only).KERNEL(spec).frozen_over_in_place
    assert callable(compiled(spec, rescore_only))
    early = knobs.replace(frozen_over_early=True)
    assert load_module(early).KERNEL(spec).frozen_over_early and effective(early, spec).frozen_over_early
    assert callable(compiled(spec, early))
    for without in (dict(frozen_over_in_place=False), dict(frozen_row_max=False)):  # means nothing without them
        assert not load_module(early.replace(**without)).KERNEL(spec).frozen_over_early, without
        assert not effective(early.replace(**without), spec).frozen_over_early, without


@pytest.mark.parametrize("spec, split", [(AttentionSpec("bf16", 128), 8), (AttentionSpec("fp16", 256, False, 4), 2)],
                         ids=lambda x: x.key() if isinstance(x, AttentionSpec) else str(x))
def test_compiles_with_the_last_wave_split_over_clusters(spec, split):
    assert callable(compiled(spec, default_knobs(spec).replace(tail_kv_split=split)))


def test_tail_pdl_compiles_with_the_split_and_means_nothing_without_it():
    spec = AttentionSpec("bf16", 128, False, 1)
    assert callable(compiled(spec, default_knobs(spec).replace(tail_kv_split=8, tail_pdl=True)))
    module = load_module(default_knobs(spec).replace(tail_pdl=True, tail_kv_split=0))  # no split, no 2nd launch
    assert not module.KERNEL(spec).tail_pdl and module.KERNEL(spec).kv_split == 0


def test_row_sums_by_mma_compile_and_need_p_in_registers():
    spec = AttentionSpec("bf16", 128, True, 8)
    assert callable(compiled(spec, default_knobs(spec).replace(row_sum_by_mma=True)))
    module = load_module(default_knobs(spec).replace(row_sum_by_mma=True, mma_pv_is_rs=False))
    ok, reason = module.KERNEL.can_implement(spec)
    assert not ok and "mma_pv_is_rs" in reason
    base = load_module(default_knobs(spec)).KERNEL.smem_bytes(spec)
    assert load_module(default_knobs(spec).replace(row_sum_by_mma=True)).KERNEL.smem_bytes(spec) - base == 2048


def test_an_own_o_buffer_needs_its_shared_memory():
    spec = AttentionSpec("bf16", 256)
    knobs = default_knobs(spec).replace(separate_o_buffer=True)
    ok, reason = load_module(knobs).KERNEL.can_implement(spec)
    assert not ok and "shared memory" in reason  # d256: Q, 2 stages of K/V at tile_n 80, and O: 290 KB
    spec = AttentionSpec("bf16", 128)
    base = load_module(default_knobs(spec)).KERNEL.smem_bytes(spec)
    own = load_module(default_knobs(spec).replace(separate_o_buffer=True)).KERNEL.smem_bytes(spec)
    assert own - base == 128 * 128 * 2


def test_defaults_are_implementable_and_in_space():
    for hd in (64, 128, 256):
        for causal in (False, True):
            for g in (1, 4, 8):
                spec = AttentionSpec("bf16", hd, causal, g)
                knobs = default_knobs(spec)
                for f in fields(Knobs):
                    assert getattr(knobs, f.name) in SPACE[f.name], (f.name, knobs)
                ok, reason = load_module(knobs).KERNEL.can_implement(spec)
                assert ok, (spec, knobs, reason)


@pytest.mark.parametrize(
    "spec, change, words",
    [
        (AttentionSpec("bf16", 128), dict(tile_m=64, pingpong=True), "pingpong"),
        (AttentionSpec("bf16", 128), dict(tile_m=192, mma_regs=240), "register"),
        # 65,536 registers: the whole file, but 1,024 more than a 384-thread CTA gets at launch;
        # it hung on the H200 (archive v0023, v0028)
        (AttentionSpec("bf16", 128), dict(mma_regs=240, producer_regs=32), "64512 it gets at launch"),
        (AttentionSpec("bf16", 256), dict(tile_n=128, num_stages=2, mma_pv_is_rs=False), "shared memory"),
        (AttentionSpec("bf16", 256), dict(tile_n=176), "accumulators"),
        (AttentionSpec("bf16", 128, False, 3), dict(pack_gqa=True), "pack_gqa"),
        (AttentionSpec("bf16", 96), dict(), "head_dim"),
        (AttentionSpec("bf16", 128), dict(tiles_per_cta=2, pingpong=True), "tiles_per_cta > 1 needs pingpong off"),
        (AttentionSpec("bf16", 128), dict(tiles_per_cta=2, pingpong=False, tail_kv_split=2), "tiles_per_cta 1"),
        # O in fp32 is 68 KB at d128; one stage of 64-key K/V blocks is 32 KB
        (AttentionSpec("bf16", 128), dict(tile_n=64, num_stages=1, tail_kv_split=4), "tail_kv_split stages"),
        (AttentionSpec("bf16", 128), dict(p_double_buffer=True, intra_wg_overlap=False), "p_double_buffer needs"),
        # d64's 3 warp groups at 160 registers: S 64 + O 32 + P 32 + the second P 32 = 160
        (AttentionSpec("bf16", 64), dict(tile_m=192, mma_regs=160, producer_regs=32, p_double_buffer=True),
         "accumulators"),
    ],
)
def test_can_implement_rejects_with_reason(spec, change, words):
    knobs = Knobs(**{**default_knobs(AttentionSpec("bf16", 128)).__dict__, **change})
    ok, reason = load_module(knobs).KERNEL.can_implement(spec)
    assert not ok
    assert words in reason


def test_space_sample_answers_can_implement():
    """Any point of SPACE renders, imports, and gets a clear yes or a no with a reason."""
    rng = random.Random(0)
    for _ in range(12):
        knobs = Knobs(**{k: rng.choice(v) for k, v in SPACE.items()})
        mod = load_module(knobs)
        for hd in (64, 128, 256):
            ok, reason = mod.KERNEL.can_implement(AttentionSpec("bf16", hd, True, 4))
            assert isinstance(ok, bool) and (ok or reason)


# ---------------------------------------------------------------------------------------------
# GPU: numbers against an fp32 reference
# ---------------------------------------------------------------------------------------------
def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


gpu = pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU (sm_90)")

SHAPES = [  # (batch, seqlen_q, seqlen_k)
    (2, 1, 1),
    (1, 17, 17),
    (2, 255, 255),
    (1, 1000, 1000),
    (2, 1000, 113),  # causal: the first 887 rows of each batch see no key
    (1, 113, 1000),
    (1, 4097, 4097),
]
HEADS = {1: [(4, 4)], 4: [(8, 2), (32, 8)]}
GPU_SPECS = [
    AttentionSpec(dt, hd, causal, g)
    for dt in ("bf16", "fp16")
    for hd in (64, 128, 256)
    for causal in (False, True)
    for g in (1, 4)
]


def check(fn, spec, b, sq, sk, hq, hkv, rising: float = 0.0):
    """fn against the reference on N(0, 1) inputs; rising > 0: keys scaled by 1 + rising at the
    start of the sequence down to 1 at its end, q doubled, so that the logits grow toward the
    first keys, the ones the kernel visits last: a row's max keeps moving while it runs."""
    import torch

    from avo.reference import reference_attention

    dt, d = spec.torch_dtype, spec.head_dim
    q = torch.randn(b, sq, hq, d, device="cuda", dtype=dt)
    k = torch.randn(b, sk, hkv, d, device="cuda", dtype=dt)
    if rising:
        ramp = 1 + rising * (1 - torch.arange(sk, device="cuda", dtype=torch.float32) / sk)
        k = (k.float() * ramp.view(1, sk, 1, 1)).to(dt)
        q = q * 2
    v = torch.randn(b, sk, hkv, d, device="cuda", dtype=dt)
    scale = 1.0 / math.sqrt(d)
    o = torch.full_like(q, float("nan"))
    lse = torch.full((b, hq, sq), float("nan"), device="cuda", dtype=torch.float32)
    fn(q, k, v, o, lse, scale)
    torch.cuda.synchronize()
    ref_o, ref_lse = reference_attention(q, k, v, spec.causal, scale)
    pt_o, _ = reference_attention(q, k, v, spec.causal, scale, dtype=dt)
    shape = (b, sq, sk, hq, hkv)
    assert not o.isnan().any(), f"{shape}: output not fully written or NaN"
    err = (o.float() - ref_o).abs().max().item()
    pt_err = (pt_o.float() - ref_o).abs().max().item()
    assert err <= 2 * pt_err + 1e-4, f"{shape}: max error {err:.3g} vs torch {dt} {pt_err:.3g}"
    assert not lse.isnan().any(), f"{shape}: LSE not fully written"
    empty = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), empty), f"{shape}: LSE -inf rows differ"
    if (~empty).any():
        lse_err = (lse[~empty] - ref_lse[~empty]).abs().max().item()
        assert lse_err <= 2e-3, f"{shape}: LSE error {lse_err:.3g}"


def check_every_shape(fn, spec, heads, rising: float = 0.0):
    """check() on every shape of SHAPES for each (heads_q, heads_kv) of `heads`."""
    for hq, hkv in heads:
        for b, sq, sk in SHAPES:
            check(fn, spec, b, sq, sk, hq, hkv, rising=rising)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda s: s.key())
def test_matches_reference(spec):
    fn = compiled(spec, default_knobs(spec))
    for hq, hkv in HEADS[spec.qhead_per_kvhead]:
        for b, sq, sk in SHAPES:
            if hq > 8 and sq > 1000:
                continue  # the 32-head GQA case runs on the smaller shapes only
            check(fn, spec, b, sq, sk, hq, hkv)


VARIANTS = {
    "no_overlap": dict(intra_wg_overlap=False),
    "no_pingpong": dict(pingpong=False),
    "p_in_smem": dict(mma_pv_is_rs=False),
    "plain": dict(intra_wg_overlap=False, pingpong=False),
    "m64": dict(tile_m=64, pingpong=False, mma_regs=256, producer_regs=56),
    "n112_3stages": dict(tile_n=112, num_stages=3),
    "q_in_registers": dict(q_in_registers=True),
    "q_in_registers_no_overlap": dict(q_in_registers=True, intra_wg_overlap=False),
    "p_double_buffer": dict(p_double_buffer=True),
    "prefetch_next_q": dict(prefetch_next_q=True),
    "prefetch_next_q_swizzled": dict(prefetch_next_q=True, head_swizzle=True),
    "row_sum_chains": dict(row_sum_chains=4),
}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("tiles, own_o", [(2, False), (4, False), (2, True), (4, True)])
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 128, c, g) for c in (False, True) for g in (1, 4)],
                         ids=lambda s: s.key())
def test_several_tiles_per_cta_match_reference(spec, tiles, own_o):
    """A CTA computing tiles one after the other, the pipelines going on between them: every shape,
    and tile counts that tiles does not divide (3 heads x 33 m blocks; 129 packed m blocks), so that
    the last CTA takes fewer tiles, on both grid orders (non-causal 3-D, causal head-grouped); Q's
    buffer released after the epilogue's store (O staged there) or after the last QK^T (own_o)."""
    knobs = default_knobs(spec).replace(tiles_per_cta=tiles, pingpong=False, separate_o_buffer=own_o,
                                        tail_kv_split=0)
    fn = compiled(spec, knobs)
    check_every_shape(fn, spec, [(3, 3)] if spec.qhead_per_kvhead == 1 else [(4, 1), (8, 2)])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("every", [2, 8])
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 64, True, 1), AttentionSpec("bf16", 64, False, 4),
                                  AttentionSpec("bf16", 128, True, 1), AttentionSpec("fp16", 128, False, 1),
                                  AttentionSpec("bf16", 256, True, 1)], ids=lambda s: s.key())
def test_exp2_on_the_fma_pipes_matches_reference(spec, every):
    """Every `every`-th softmax column through the polynomial exp2 (knob exp2_fma_every): within
    torch's own error on every shape, and rows that see no key (2 x 1000 x 113 causal) still give
    exactly 0 weight, so their LSE is -inf like the reference's (the clamp at -127 must give +0.0)."""
    fn = compiled(spec, default_knobs(spec).replace(exp2_fma_every=every))
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec, extra", [
    (AttentionSpec("bf16", 64, True, 1), {}),
    (AttentionSpec("fp16", 64, False, 4), {}),
    (AttentionSpec("bf16", 128, True, 4), {}),
    (AttentionSpec("bf16", 128, False, 4), {}),  # GQA packed into the M tile
    (AttentionSpec("bf16", 128, False, 1), {}),
    (AttentionSpec("fp16", 128, True, 1), {}),
    (AttentionSpec("bf16", 128, True, 4), dict(intra_wg_overlap=False, pingpong=False)),
    (AttentionSpec("bf16", 128, False, 4), dict(rescale_o_before_pv=True)),
    (AttentionSpec("bf16", 128, True, 1), dict(tiles_per_cta=2, pingpong=False)),
], ids=lambda x: x.key() if isinstance(x, AttentionSpec) else "-".join(x) or "default")
def test_row_sums_by_mma_match_reference(spec, extra):
    """The row sums from a GEMM of P with ones (knob row_sum_by_mma), on every loop shape (overlap
    or not, O rescaled before or after the PV, several tiles per CTA): within torch's error on
    every shape, rows with no key at LSE -inf, and the LSE itself (the sum of P as rounded for the
    GEMM) within 2e-3 of the reference."""
    fn = compiled(spec, default_knobs(spec).replace(row_sum_by_mma=True, **extra))
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec, extra", [
    (AttentionSpec("bf16", 64, True, 1), {}),
    (AttentionSpec("fp16", 64, False, 4), {}),
    (AttentionSpec("bf16", 128, True, 4), {}),
    (AttentionSpec("bf16", 128, False, 4), {}),
    (AttentionSpec("fp16", 128, False, 1), {}),
    (AttentionSpec("bf16", 128, True, 4), dict(intra_wg_overlap=False, pingpong=False)),
    (AttentionSpec("bf16", 128, False, 1), dict(tiles_per_cta=2, pingpong=False, tail_kv_split=0)),
    (AttentionSpec("bf16", 256, True, 1), {}),
    (AttentionSpec("fp16", 256, False, 4), {}),
], ids=lambda x: x.key() if isinstance(x, AttentionSpec) else "-".join(x) or "default")
@pytest.mark.parametrize("rising", [0.0, 3.0])
def test_lazy_rescale_matches_reference(spec, extra, rising):
    """O rescaled only when a row's max grew by more than 2^8 (knob lazy_rescale): on N(0, 1)
    inputs (the max settles after the first block: the rescale is skipped), and on logits that
    grow toward the keys visited last (rising: rows keep taking new maxima, some rows of a warp
    do and others not), every shape within torch's error, LSE within 2e-3, empty rows -inf."""
    fn = compiled(spec, default_knobs(spec).replace(lazy_rescale=True, **extra))
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1], rising=rising)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", [
    AttentionSpec("bf16", 64, False, 1), AttentionSpec("bf16", 64, True, 1), AttentionSpec("fp16", 64, False, 4),
    AttentionSpec("bf16", 128, False, 4), AttentionSpec("bf16", 128, True, 4), AttentionSpec("fp16", 128, True, 1),
    AttentionSpec("bf16", 256, False, 1),
], ids=lambda s: s.key())
@pytest.mark.parametrize("rising", [0.0, 3.0, 40.0])
def test_frozen_row_max_matches_reference(spec, rising):
    """The unmasked blocks' softmax against the rows' standing maxima, checked by the row sums
    (knob frozen_row_max): on N(0, 1) inputs (the standing max holds: the fast path), on logits
    rising toward the keys visited last by a few units per block (rising 3: some blocks go over
    and take the exact path from shared memory) and by far more than exp2's range (rising 40:
    scores overflow to +inf against the standing max), every shape within torch's error, LSE
    within 2e-3, rows with no key at -inf. The seed rescales a row that went over in place
    (frozen_over_in_place) and rescores only past FROZEN_OVER_PEAK_LIMIT (rising 40)."""
    knobs = default_knobs(spec)
    assert knobs.frozen_row_max and knobs.frozen_over_in_place
    assert not knobs.lazy_rescale and not knobs.rescale_o_before_pv
    fn = compiled(spec, knobs)
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1], rising=rising)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 64, False, 1), AttentionSpec("bf16", 128, True, 4),
                                  AttentionSpec("fp16", 128, True, 1), AttentionSpec("bf16", 256, False, 1)],
                         ids=lambda s: s.key())
@pytest.mark.parametrize("rising", [0.0, 3.0, 40.0])
def test_frozen_over_early_matches_reference(spec, rising):
    """The in-place rescale before the PV wait (knob frozen_over_early): P, the sums and the row
    max change while the previous block's PV GEMM is in flight (it reads its own copy of P); O
    only once it has landed. Rising 3 takes it on some blocks, rising 40 the rescore."""
    fn = compiled(spec, default_knobs(spec).replace(frozen_over_early=True))
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1], rising=rising)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 64, False, 1), AttentionSpec("bf16", 128, True, 4),
                                  AttentionSpec("fp16", 128, True, 1)], ids=lambda s: s.key())
@pytest.mark.parametrize("rising", [0.0, 3.0, 40.0])
def test_frozen_rescore_only_matches_reference(spec, rising):
    """frozen_row_max without the in-place rescale: every block where a row went over is scored
    again from shared memory and takes the exact softmax (rising 3 and 40 both take it)."""
    fn = compiled(spec, default_knobs(spec).replace(frozen_over_in_place=False))
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1], rising=rising)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("causal", [False, True])
def test_knob_variants_match_reference(variant, causal):
    spec = AttentionSpec("bf16", 128, causal, 4)
    knobs = default_knobs(spec).replace(**VARIANTS[variant])
    fn = compiled(spec, knobs)
    for b, sq, sk in SHAPES[:6]:
        check(fn, spec, b, sq, sk, 8, 2)


# (batch, seqlen_q, seqlen_k, heads_q, heads_kv) by query heads per KV head: tile counts whose
# last wave is short, so that tail_kv_split takes it (6-8 tiles: all of them; 1072 tiles: 16;
# packed GQA 16, 32 or 64 tiles: all, 1088: 32), a last wave too long to split (1024 tiles: 100
# left), none (1056 = 8 x 132 tiles), too few K/V blocks to split (seqlen_k 113, 255), one tile
# (113 x 1000), ragged rows and keys.
SPLIT_SHAPES = {
    1: [(1, 1000, 1000, 1, 1), (1, 113, 1000, 1, 1), (2, 1000, 113, 1, 1), (2, 255, 255, 1, 1),
        (1, 2048, 2048, 67, 67), (1, 1000, 2000, 67, 67), (1, 8192, 8192, 16, 16), (1, 4096, 4096, 33, 33)],
    4: [(1, 500, 1000, 4, 1), (1, 1000, 1000, 4, 1), (1, 1000, 1000, 8, 2), (2, 1000, 113, 8, 2),
        (1, 2048, 2048, 68, 17)],
}


def split_tail_tiles(knobs: Knobs, spec: AttentionSpec, b, sq, sk, hq, hkv) -> int:
    """The tiles the split launch takes for a shape: the template's tail_tiles, mirrored to make
    sure the test reaches it."""
    packed = knobs.pack_gqa and spec.qhead_per_kvhead > 1
    rows, heads = (sq * spec.qhead_per_kvhead, hkv) if packed else (sq, hq)
    tiles = b * heads * -(-rows // knobs.tile_m)
    partial, c = tiles % 132, knobs.tail_kv_split
    return partial if partial * c <= 132 and -(-sk // knobs.tile_n) >= c else 0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("split", [2, 4, 8])
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 128, False, 1), AttentionSpec("fp16", 128, False, 4),
                                  AttentionSpec("bf16", 64, False, 1), AttentionSpec("bf16", 256, False, 4)],
                         ids=lambda s: s.key())
def test_tail_kv_split_matches_reference(spec, split):
    """The last wave's tiles split along the keys over a cluster and merged through distributed
    shared memory (knob tail_kv_split): within torch's error on shapes with and without a last
    wave to split, LSE within 2e-3; the test's shapes give every split a tail to take."""
    knobs = default_knobs(spec).replace(tail_kv_split=split)
    fn = compiled(spec, knobs)
    shapes = SPLIT_SHAPES[spec.qhead_per_kvhead]
    assert any(split_tail_tiles(knobs, spec, *s) for s in shapes), "no shape reaches the split launch"
    for shape in shapes:
        check(fn, spec, *shape)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec, split", [(AttentionSpec("bf16", 128, False, 1), 8),
                                         (AttentionSpec("fp16", 128, False, 4), 4),
                                         (AttentionSpec("bf16", 64, False, 1), 2)],
                         ids=lambda x: x.key() if isinstance(x, AttentionSpec) else str(x))
def test_tail_pdl_matches_reference_and_ends_after_the_main_launch(spec, split):
    """The split launch started while the main one drains (knob tail_pdl): every shape within
    torch's error; and the forward is over when the stream's next operation runs: a copy of O
    queued right after the call, on a shape whose main tiles (536 K/V blocks each) run far longer
    than its 8 split tiles, finds every row written."""
    import torch

    knobs = default_knobs(spec).replace(tail_kv_split=split, tail_pdl=True)
    fn = compiled(spec, knobs)
    for shape in SPLIT_SHAPES[spec.qhead_per_kvhead]:
        check(fn, spec, *shape)
    if spec.head_dim != 128 or spec.qhead_per_kvhead != 1:
        return
    sq = knobs.tile_m * (4 * 132 + 8)  # 4 full waves of one head, then 8 tiles to split
    assert split_tail_tiles(knobs, spec, 1, sq, sq, 1, 1) == 8
    q, k, v = (torch.randn(1, sq, 1, 128, device="cuda", dtype=spec.torch_dtype) for _ in range(3))
    lse = torch.empty(1, 1, sq, device="cuda", dtype=torch.float32)
    for _ in range(3):
        o = torch.full_like(q, float("nan"))
        fn(q, k, v, o, lse, 128**-0.5)
        seen = o.clone()  # same stream, no synchronization in between
        torch.cuda.synchronize()
        assert not seen.isnan().any(), "the op after the forward ran before every tile was written"
        assert torch.equal(seen, o)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("spec", [AttentionSpec("bf16", 128, False, 1), AttentionSpec("fp16", 128, False, 4),
                                  AttentionSpec("bf16", 64, False, 1), AttentionSpec("bf16", 256, False, 4)],
                         ids=lambda s: s.key())
def test_kv_multicast_matches_reference(spec):
    """Two CTAs (adjacent m blocks) sharing each K/V block through TMA multicast (knob
    kv_multicast): every shape within torch's error, odd m-block counts included (1, 9, 33 blocks:
    the last cluster's second CTA lies past the rows and only loads for its partner), packed GQA."""
    fn = compiled(spec, default_knobs(spec).replace(kv_multicast=True, tail_kv_split=0))  # one or the other
    check_every_shape(fn, spec, HEADS[spec.qhead_per_kvhead][:1])
