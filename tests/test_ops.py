"""avo.attention as a torch op: fake shapes, input errors and kernel choice here; numbers,
opcheck, torch.compile and CUDA graphs on a GPU."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import avo
from avo import jit, ops
from avo.lineage import Candidate, Lineage, LineageError
from avo.reference import reference_attention
from avo.spec import AttentionSpec

REPO = Path(__file__).resolve().parent.parent


def test_import_avo_stays_cheap():
    code = ("import sys, avo; assert 'torch' not in sys.modules, 'import avo pulled torch'; "
            "f = avo.attention; import avo.ops; assert f is avo.ops.attention and avo.load is avo.ops.load")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="module 'avo' has no attribute 'attentoin'"):
        avo.attentoin  # noqa: B018


# ---------------------------------------------------------------------------------------------
# the fake (meta) implementation


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 100, 8, 8, 300, 128), (3, 1, 32, 4, 4096, 64), (1, 513, 6, 2, 17, 256)])
def test_fake_gives_the_shapes_and_dtypes_of_the_kernel(shape, dtype):
    batch, seqlen_q, heads_q, heads_kv, seqlen_k, head_dim = shape
    with FakeTensorMode():
        # q as a transposed view of (batch, heads, seqlen, d): out is still laid out (b, s, h, d)
        q = torch.empty(batch, heads_q, seqlen_q, head_dim, dtype=dtype, device="cuda").transpose(1, 2)
        k = torch.empty(batch, seqlen_k, heads_kv, head_dim, dtype=dtype, device="cuda")
        out, lse = avo.attention(q, k, k, causal=True, return_lse=True)
        alone = avo.attention(q, k, k)
    assert isinstance(alone, torch.Tensor) and alone.shape == q.shape
    assert (out.shape, out.dtype, out.device.type) == (q.shape, dtype, "cuda")
    assert out.is_contiguous()
    assert (lse.shape, lse.dtype, lse.device.type) == ((batch, heads_q, seqlen_q), torch.float32, "cuda")


def test_op_on_meta_tensors_uses_the_fake():
    q = torch.empty(2, 64, 4, 128, dtype=torch.bfloat16, device="meta")
    k = torch.empty(2, 80, 2, 128, dtype=torch.bfloat16, device="meta")
    out, lse = torch.ops.avo.attention_fwd(q, k, k, False, 0.125, "")
    assert (out.shape, out.dtype) == (q.shape, torch.bfloat16)
    assert (tuple(lse.shape), lse.dtype) == ((2, 4, 64), torch.float32)


# ---------------------------------------------------------------------------------------------
# errors for input the kernels do not take


def _bf16(*shape):
    return torch.zeros(*shape, dtype=torch.bfloat16)


_Q = _bf16(2, 16, 4, 64)
_BAD = {
    "not a tensor": ((_Q, [1.0], _Q), TypeError, "avo.attention: k must be a torch.Tensor, got list"),
    "ndim": ((_bf16(2, 16, 64), _Q, _Q), ValueError,
             "avo.attention: q must be 4-D (batch, seqlen, heads, head_dim), got shape (2, 16, 64)"),
    "fp32": ((_Q.float(), _Q.float(), _Q.float()), TypeError,
             "avo.attention: q has dtype torch.float32; the kernels take torch.bfloat16 or torch.float16"),
    "mixed dtypes": ((_Q, _Q.half(), _Q.half()), TypeError,
                     "avo.attention: q, k, v must share one dtype, got torch.bfloat16, torch.float16, torch.float16"),
    "k vs v": ((_Q, _Q, _bf16(2, 17, 4, 64)), ValueError,
               "avo.attention: k and v must have the same shape, got (2, 16, 4, 64) and (2, 17, 4, 64)"),
    "batch": ((_Q, _bf16(3, 16, 4, 64), _bf16(3, 16, 4, 64)), ValueError,
              "avo.attention: batch differs: q has 2, k and v have 3"),
    "head_dim mismatch": ((_Q, _bf16(2, 16, 4, 128), _bf16(2, 16, 4, 128)), ValueError,
                          "avo.attention: head_dim differs: q has 64, k and v have 128"),
    "gqa": ((_bf16(2, 16, 6, 64), _Q, _Q), ValueError, "avo.attention: heads_q 6 is not a multiple of heads_kv 4"),
    "head_dim": ((_bf16(2, 16, 4, 96),) * 3, ValueError,
                 "avo.attention: head_dim 96 not supported; the kernels take 64, 128, 256"),
    "last dim": ((_bf16(2, 16, 4, 128)[..., ::2], _Q, _Q), ValueError,
                 "avo.attention: q's last dim must be contiguous (stride 1), got stride 2; pass q.contiguous()"),
    "stride": ((_Q, _bf16(2, 16, 4, 68)[..., :64], _Q), ValueError,
               "avo.attention: k's strides (4352, 272, 68, 1) must be multiples of 8 elements (16 bytes, for TMA); "
               "pass k.contiguous()"),
    "devices": ((_Q, _Q.to("meta"), _Q), ValueError,
                "avo.attention: q, k, v must be on one device, got cpu, meta, cpu"),
    "cpu": ((_Q, _Q, _Q), ValueError, "avo.attention: q, k, v are on cpu; the kernels run on CUDA tensors"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_input_is_a_one_line_error(case):
    args, error, message = _BAD[case]
    with pytest.raises(error) as exc:
        avo.attention(*args)
    assert str(exc.value) == message


@pytest.fixture
def planned(monkeypatch, tmp_path):
    """An Attention whose kernels are a stand-in that fills out with the scale it was given and lse
    with 7, on CPU tensors (_check told to accept them): the eager no-grad path runs as on a GPU.
    Returns (owner, launches, checks): each launch's (out, lse, scale), each _check call's args."""
    owner = ops.load(None, tmp_path / "archive")
    launches, checks = [], []

    def kernel(q, k, v, out, lse, scale):
        out.fill_(scale)
        lse.fill_(7.0)
        launches.append((out, lse, scale))

    for dtype in ("bf16", "fp16"):
        for head_dim in ops.HEAD_DIMS:
            for causal in (False, True):
                for group in (1, 2, 4):
                    spec = AttentionSpec(dtype=dtype, head_dim=head_dim, causal=causal, qhead_per_kvhead=group)
                    owner._kernels[(spec, "sm_90a")] = jit.CompiledKernel(
                        key="stand-in", arch="sm_90a", spec=spec, source=None, artifact_dir=None, report={},
                        from_cache=True, fn=kernel)
    real = ops._check

    def check(q, k, v, devices=("cuda",)):
        checks.append((q, k, v))
        return real(q, k, v, devices=(*devices, "cpu") if "cuda" in devices else devices)

    monkeypatch.setattr(ops, "_check", check)
    monkeypatch.setattr(ops, "_cuda_device", lambda: None)  # a CPU tensor's device index
    monkeypatch.setattr(ops, "_LSE_SCRATCH", {})
    monkeypatch.setitem(ops._ARCHS, None, "sm_90a")
    return owner, launches, checks


def test_a_validated_call_is_served_from_its_plan_without_a_check(planned):
    owner, launches, checks = planned
    q, k, v = _bf16(2, 16, 4, 64), _bf16(2, 24, 2, 64), _bf16(2, 24, 2, 64)
    out, lse = owner(q, k, v, causal=True, return_lse=True)
    assert len(checks) == 1 and len(owner._plans) == 1
    # fresh tensors, same metadata: served from the plan, no check; the kernel gets what it got before
    q, k, v = (t.clone() for t in (q, k, v))
    again = owner(q, k, v, causal=True)
    assert len(checks) == 1 and len(launches) == 2 and launches[1][0] is again
    assert again.shape == q.shape and again.stride() == q.stride() and again.dtype == torch.bfloat16
    assert launches[1][2] == 1 / math.sqrt(64) and torch.equal(again, torch.full_like(q, 1 / math.sqrt(64)))
    out, lse = owner(q, k, v, causal=True, return_lse=True)
    assert (lse.shape, lse.dtype, lse.stride()) == ((2, 4, 16), torch.float32, (64, 16, 1))
    assert bool((lse == 7.0).all()) and launches[2][1] is lse and len(checks) == 1
    owner(q, k, v, causal=True, softmax_scale=0.3)  # another scale: another plan, validated
    assert len(checks) == 2 and launches[3][2] == 0.3 and len(owner._plans) == 2


def test_an_lse_nobody_asked_for_goes_to_the_scratch_and_a_wanted_one_never_does(planned):
    owner, launches, _ = planned
    small, large = _bf16(2, 16, 4, 64), _bf16(1, ops._LSE_SCRATCH_NUMEL // 4 + 1, 4, 64)
    for q in (small, small, large):
        owner(q, q, q)
    scratch = ops._LSE_SCRATCH[small.device]
    assert scratch.shape == (ops._LSE_SCRATCH_NUMEL,) and scratch.dtype == torch.float32
    first, again, too_large = (lse for _, lse, _ in launches)
    assert first.data_ptr() == again.data_ptr() == scratch.data_ptr() and first.shape == (2, 4, 16)
    assert too_large.data_ptr() != scratch.data_ptr() and too_large.shape == (1, 4, ops._LSE_SCRATCH_NUMEL // 4 + 1)
    _, lse = owner(small, small, small, return_lse=True)
    assert launches[-1][1] is lse and lse.untyped_storage().data_ptr() != scratch.untyped_storage().data_ptr()


@pytest.mark.parametrize("change", ["strides", "dtype", "device", "k shape", "causal", "scale"])
def test_the_plan_cache_never_serves_metadata_it_did_not_validate(planned, change):
    """A call that differs from a validated one in any metadata _check reads is checked in full."""
    owner, launches, checks = planned
    q, k = _bf16(2, 16, 4, 64), _bf16(2, 16, 4, 64)
    owner(q, k, k)
    owner(q, k, k)
    assert len(checks) == 1 and len(launches) == 2
    kwargs = {}
    if change == "strides":  # the same shape laid out (batch, heads, seqlen, head_dim)
        q = _bf16(2, 4, 16, 64).transpose(1, 2)
    elif change == "dtype":
        q, k = q.half(), k.half()
    elif change == "device":  # meta tensors: the fake, no kernel
        q, k = q.to("meta"), k.to("meta")
    elif change == "k shape":
        k = _bf16(2, 32, 4, 64)
    else:
        kwargs = {"causal": True} if change == "causal" else {"softmax_scale": 0.5}
    out = owner(q, k, k, **kwargs)
    assert len(checks) == (3 if change == "device" else 2) and out.shape == q.shape  # meta: refused, then the fake
    assert len(launches) == (2 if change == "device" else 3)
    assert len(owner._plans) == (1 if change == "device" else 2)


_SAME_SHAPE_BAD = {  # each has the shapes of (_Q, _Q, _Q), which is validated first
    "last dim": ((_bf16(2, 16, 4, 128)[..., ::2], _Q, _Q), ValueError, _BAD["last dim"][2]),
    "stride": ((_Q, _bf16(2, 16, 4, 68)[..., :64], _Q), ValueError, _BAD["stride"][2]),
    "dtype": ((_Q, _Q, _Q.float()), TypeError,
              "avo.attention: v has dtype torch.float32; the kernels take torch.bfloat16 or torch.float16"),
    "devices": ((_Q, _Q, _Q.to("meta")), ValueError,
                "avo.attention: q, k, v must be on one device, got cpu, cpu, meta"),
    "alignment": ((_Q, torch.zeros(_Q.numel() + 1, dtype=torch.bfloat16)[1:].view(_Q.shape), _Q), ValueError,
                  "avo.attention: k's data is not 16-byte aligned (a view at an odd offset); pass k.clone()"),
}


@pytest.mark.parametrize("case", list(_SAME_SHAPE_BAD))
def test_bad_input_with_the_shapes_of_a_validated_call_still_raises_its_error(planned, case):
    owner, launches, _ = planned
    owner(_Q, _Q, _Q)
    args, error, message = _SAME_SHAPE_BAD[case]
    assert all(t.shape == _Q.shape for t in args)
    for _ in range(2):  # nor is it kept for the next time
        with pytest.raises(error) as exc:
            owner(*args)
        assert str(exc.value) == message
    assert len(launches) == 1 and len(owner._plans) == 1


def test_the_plan_cache_is_bounded_and_evicts_the_oldest(planned):
    owner, launches, checks = planned
    k = _bf16(1, 8, 1, 64)
    for seqlen in range(1, ops._MAX_PLANS + 11):
        owner(_bf16(1, seqlen, 1, 64), k, k)
    assert len(owner._plans) == ops._MAX_PLANS and len(checks) == ops._MAX_PLANS + 10
    kept = sorted(key[0][1] for key in owner._plans)
    assert kept == list(range(11, ops._MAX_PLANS + 11))  # the first ten went
    owner(_bf16(1, ops._MAX_PLANS + 10, 1, 64), k, k)  # kept: no check
    owner(_bf16(1, 1, 1, 64), k, k)  # evicted: checked again
    assert len(checks) == ops._MAX_PLANS + 11 and len(owner._plans) == ops._MAX_PLANS


def test_empty_and_gradient_calls_keep_no_plan(planned, monkeypatch):
    owner, launches, checks = planned
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # the op's path on a CPU tensor
    out, lse = owner(_bf16(2, 0, 4, 64), _Q, _Q, return_lse=True)
    assert out.shape == (2, 0, 4, 64) and lse.shape == (2, 4, 0)
    out, lse = owner(_Q, _bf16(2, 0, 4, 64), _bf16(2, 0, 4, 64), return_lse=True)
    assert not out.any() and bool((lse == -math.inf).all())
    q = _Q.clone().requires_grad_()
    out = owner(q, _Q, _Q)  # through the op and its autograd wrapper
    assert out.grad_fn is not None and len(launches) == 1
    assert owner._plans == {}


def test_bad_softmax_scale_is_a_type_error():
    with FakeTensorMode():
        q = torch.empty(1, 8, 2, 64, dtype=torch.bfloat16, device="cuda")
        with pytest.raises(TypeError) as exc:
            avo.attention(q, q, q, softmax_scale="0.1")
    assert str(exc.value) == "avo.attention: softmax_scale must be a float or None, got str"


# ---------------------------------------------------------------------------------------------
# which kernel runs: compile-only, so these run without a GPU


_REFUSES = """
class K:
    @staticmethod
    def can_implement(spec):
        return False, "only head_dim 128"

KERNEL = K
"""


@pytest.fixture
def archive(tmp_path):
    """v0000 naive kernel (sm_90a), v0001 better but refuses every spec (sm_90a), v0002 best but
    sm_100a, v0003 best of all but rejected."""
    lineage = Lineage.load(tmp_path / "archive")
    naive = jit.render("naive_attention").read_text()
    rows = [("v0000", "committed", "sm_90a", 100.0, naive), ("v0001", "committed", "sm_90a", 300.0, _REFUSES),
            ("v0002", "committed", "sm_100a", 500.0, naive), ("v0003", "rejected", "sm_90a", 900.0, None)]
    for i, (node_id, status, arch, geomean, source) in enumerate(rows):
        lineage.add(Candidate(id=node_id, parents=["v0000"] if i else [], status=status, arch=arch,
                              geomean=geomean, created=1000.0 + i), source_text=source)
    return lineage.root


def test_candidates_are_committed_nodes_of_the_arch_best_first_then_the_seed(archive):
    best = ops.load(None, archive)
    assert best.candidates("sm_90a") == [("v0001", archive / "sources/v0001.py"),
                                         ("v0000", archive / "sources/v0000.py"), ("seed:flash_fwd_sm90", None)]
    assert best.candidates("sm_100a") == [("v0002", archive / "sources/v0002.py"), ("seed:flash_fwd_sm100", None)]
    assert ops.load("v0002", archive).candidates("sm_100a") == [("v0002", archive / "sources/v0002.py")]
    with pytest.raises(ValueError, match="^avo.attention: node v0002 was evolved for sm_100a, not sm_90a$"):
        ops.load("v0002", archive).candidates("sm_90a")


def test_the_first_candidate_that_compiles_for_the_spec_is_chosen(archive):
    best = ops.load(None, archive)
    spec = AttentionSpec(dtype="bf16", head_dim=64, causal=True, qhead_per_kvhead=2)
    kernel = best.kernel(spec, "sm_90a")
    assert best.chosen[(spec, "sm_90a")] == "v0000"  # v0001 refuses the spec
    assert kernel.source == (archive / "sources/v0000.py").resolve()
    assert kernel.spec == spec and kernel.arch == "sm_90a" and kernel.report["registers"] > 0
    assert best.kernel(spec, "sm_90a") is kernel  # kept for the life of the object
    assert ops.load(None, archive) is best


def test_no_kernel_is_a_clear_error(archive, tmp_path, monkeypatch):
    spec = AttentionSpec(dtype="bf16", head_dim=96)
    lineage = Lineage.load(tmp_path / "refusing")
    lineage.add(Candidate(id="v0000", status="committed", arch="sm_90a", geomean=1.0), source_text=_REFUSES)
    with pytest.raises(RuntimeError) as exc:
        ops.load(None, lineage.root).kernel(spec, "sm_90a")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("avo.attention: no kernel compiles for bf16_d96_full_g1 on sm_90a; tried v0000 "
                              "(unsupported: can_implement rejected bf16_d96_full_g1: only head_dim 128); "
                              "seed:flash_fwd_sm90 (unsupported: can_implement rejected bf16_d96_full_g1: head_dim 96")
    with pytest.raises(RuntimeError) as exc:
        ops.load(None, tmp_path / "empty").kernel(spec, "sm_100a")
    assert str(exc.value).startswith("avo.attention: no kernel compiles for bf16_d96_full_g1 on sm_100a; tried "
                                     "seed:flash_fwd_sm100 (unsupported: can_implement rejected bf16_d96_full_g1")
    monkeypatch.setattr(ops, "SEEDS", {"sm_90a": "flash_fwd_sm90"})
    with pytest.raises(RuntimeError) as exc:
        ops.load(None, tmp_path / "empty").kernel(spec, "sm_100a")
    assert str(exc.value) == (f"avo.attention: no kernel for sm_100a: {tmp_path / 'empty'} has no committed sm_100a "
                              "node and there is no sm_100a seed (seeds: sm_90a)")


def test_load_checks_the_node(archive):
    with pytest.raises(LineageError, match="^no node 'v9999' in the lineage at"):
        ops.load("v9999", archive)
    with pytest.raises(LineageError, match="^node v0003 is rejected; only committed nodes keep their source$"):
        ops.load("v0003", archive)
    loaded = ops.load("v0000", archive)
    assert loaded.handle == f"v0000@{archive.resolve()}" and ops._instance(loaded.handle) is loaded


def test_seed_is_the_fallback_and_prepare_compiles_it(tmp_path):
    spec = AttentionSpec(dtype="bf16", head_dim=128, causal=True)
    owner = ops.load(None, tmp_path / "no_archive")
    kernel = owner.prepare(spec, arch="sm_90a")
    assert owner.chosen[(spec, "sm_90a")] == "seed:flash_fwd_sm90"
    assert kernel.source.name.startswith("flash_fwd_sm90_") and kernel.report["ptx_wgmma"] > 0
    assert kernel.runnable == (jit.current_arch() == "sm_90a")


# ---------------------------------------------------------------------------------------------
# on a GPU


def _poison_allocator(nbytes: int):
    """Fill freed memory with NaN so that a kernel leaving any output element unwritten fails."""
    torch.full((nbytes // 4 + 1,), float("nan"), device="cuda")
    torch.cuda.synchronize()


def _inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype=torch.bfloat16):
    q = torch.randn(batch, seqlen_q, heads_q, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, seqlen_k, heads_kv, head_dim, device="cuda", dtype=dtype)
    v = torch.randn(batch, seqlen_k, heads_kv, head_dim, device="cuda", dtype=dtype)
    return q, k, v


def _assert_matches_reference(out, lse, q, k, v, causal, scale):
    ref_out, ref_lse = reference_attention(q, k, v, causal=causal, softmax_scale=scale)
    assert not out.isnan().any() and not lse.isnan().any()
    err = (out.float() - ref_out).abs().max().item()
    rounding = (ref_out.to(q.dtype).float() - ref_out).abs().max().item()  # what the dtype alone costs
    assert err <= 2 * rounding + 1e-3, (err, rounding)
    finite = ref_lse.isfinite()
    assert torch.equal(lse.isfinite(), finite)
    if finite.any():  # an empty sequence has no row at all
        assert (lse[finite] - ref_lse[finite]).abs().max().item() < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(2, 300, 517, 8, 8, 128), (1, 1000, 1000, 8, 2, 128), (2, 257, 129, 4, 1, 64)],
                         ids=["mha", "gqa4", "mqa_d64"])
def test_op_matches_the_fp32_reference(shape, causal):
    batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim = shape
    q, k, v = _inputs(*shape)
    scale = 0.7 / math.sqrt(head_dim)
    _poison_allocator(2 * q.numel() * 4)
    out, lse = avo.attention(q, k, v, causal=causal, softmax_scale=scale, return_lse=True)
    torch.cuda.synchronize()
    assert out.shape == q.shape and lse.shape == (batch, heads_q, seqlen_q)
    _assert_matches_reference(out, lse, q, k, v, causal, scale)
    # the default scale is 1/sqrt(head_dim)
    out, lse = avo.attention(q, k, v, causal=causal, return_lse=True)
    _assert_matches_reference(out, lse, q, k, v, causal, 1 / math.sqrt(head_dim))


@pytest.mark.gpu
def test_the_eager_fast_path_and_the_op_give_the_same_bits(monkeypatch):
    """Without gradients, eager calls skip the dispatcher, and once their metadata is validated the
    check too; with gradients (or traced) they go through the op."""
    q, k, v = _inputs(2, 300, 517, 8, 2, 128)
    first = avo.attention(q, k, v, causal=True, return_lse=True)  # checked, compiled or loaded, planned
    checks = []
    check = ops._check
    monkeypatch.setattr(ops, "_check", lambda *a, **kw: checks.append(a) or check(*a, **kw))
    fast = avo.attention(q.clone(), k.clone(), v.clone(), causal=True, return_lse=True)
    assert checks == []  # served from the plan
    through_op = torch.ops.avo.attention_fwd(q, k, v, True, 1 / math.sqrt(128), "")
    assert len(checks) == 1
    for a, b, c in zip(first, fast, through_op, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    avo.attention(q.transpose(1, 2).contiguous().transpose(1, 2), k, v, causal=True)  # new strides: checked
    assert len(checks) == 2
    avo.attention(q.requires_grad_(), k, v, causal=True)
    assert len(checks) == 3  # a gradient is wanted: through the op, which checks


@pytest.mark.gpu
def test_empty_inputs_follow_the_reference_convention():
    q, k, v = _inputs(2, 16, 0, 4, 4, 128)
    out, lse = avo.attention(q, k, v, return_lse=True)
    assert torch.equal(out, torch.zeros_like(q)) and bool((lse == -math.inf).all())
    q, k, v = _inputs(0, 16, 16, 4, 4, 128)
    out, lse = avo.attention(q, k, v, return_lse=True)
    assert out.shape == q.shape and lse.shape == (0, 4, 16)


@pytest.mark.gpu
def test_opcheck():
    q, k, v = _inputs(2, 128, 192, 8, 2, 128)
    torch.library.opcheck(torch.ops.avo.attention_fwd.default, (q, k, v, True, 0.088, ""))


class _TinyAttention(torch.nn.Module):
    def __init__(self, dim=512, heads=4, kv_heads=2, head_dim=128):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.proj = torch.nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                     self.kv_heads * self.head_dim], dim=-1)
        q = q.view(b, s, self.heads, self.head_dim)
        k = k.view(b, s, self.kv_heads, self.head_dim)
        v = v.view(b, s, self.kv_heads, self.head_dim)
        return self.proj(avo.attention(q, k, v, causal=True).reshape(b, s, -1))


@pytest.mark.gpu
def test_torch_compile_fullgraph_gives_the_same_numbers():
    torch.manual_seed(0)
    model = _TinyAttention().cuda().to(torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for seqlen in (256, 384):
            x = torch.randn(2, seqlen, 512, device="cuda", dtype=torch.bfloat16)
            eager, traced = model(x), compiled(x)
            assert not traced.isnan().any()
            torch.testing.assert_close(traced, eager)


def _captured(q, k, v, causal: bool, after=None):
    """One forward captured in a CUDA graph (prepared, then warmed up on a side stream, as torch's
    CUDA-graph docs ask), with `after(out)` captured right behind it: (graph, out, lse, its result)."""
    ops.prepare(q, k, v, causal=causal)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        avo.attention(q, k, v, causal=causal)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = avo.attention(q, k, v, causal=causal, return_lse=True)
        behind = after(out) if after is not None else None
    return graph, out, lse, behind


@pytest.mark.gpu
def test_cuda_graph_replay_gives_the_same_numbers():
    q, k, v = _inputs(2, 512, 512, 8, 2, 128)
    graph, out, lse, _ = _captured(q, k, v, causal=True)
    for _ in range(2):  # new numbers into the captured inputs, then replay
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        eager_out, eager_lse = avo.attention(q, k, v, causal=True, return_lse=True)
        assert torch.equal(out, eager_out) and torch.equal(lse, eager_lse)
        _assert_matches_reference(out, lse, q, k, v, True, 1 / math.sqrt(128))


@pytest.mark.gpu
def test_a_graph_of_the_split_last_wave_launches_gives_the_same_numbers():
    """Non-causal d128 with 4 x 68 = 2 x 132 + 8 tiles: the seed's kernel runs its last wave split
    over clusters in a second launch that may start while the first drains (programmatic dependent
    launch). Captured in a CUDA graph with a copy of out right behind it, the replay gives eager's
    numbers, and the copy sees every row written."""
    q, k, v = _inputs(1, 128 * 68, 128 * 68, 4, 4, 128)
    graph, out, lse, seen = _captured(q, k, v, causal=False, after=torch.clone)
    for t in (q, k, v):
        t.copy_(torch.randn_like(t))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    eager_out, eager_lse = avo.attention(q, k, v, causal=False, return_lse=True)
    assert torch.equal(out, eager_out) and torch.equal(lse, eager_lse) and torch.equal(seen, out)
    rows = torch.arange(0, q.shape[1], 97, device="cuda")  # non-causal: a sample of the rows is a query of its own
    _assert_matches_reference(out[:, rows], lse[:, :, rows], q[:, rows], k, v, False, 1 / math.sqrt(128))


@pytest.mark.gpu
def test_calls_that_do_not_want_lse_give_the_same_out_eager_and_in_a_graph():
    """Their lse goes to the device's scratch (shared by every such call, never read): out is the same."""
    q, k, v = _inputs(2, 256, 320, 8, 2, 128)
    ops.prepare(q, k, v, causal=True)
    with_lse, _ = avo.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(avo.attention(q, k, v, causal=True), with_lse)
    assert q.device in ops._LSE_SCRATCH
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = avo.attention(q, k, v, causal=True)
        small = avo.attention(q[:, :64], k, v, causal=True)  # a plan first made during the capture
    for t in (q, k, v):
        t.copy_(torch.randn_like(t))
    out.fill_(float("nan"))
    small.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    eager, lse = avo.attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(out, eager) and torch.equal(small, avo.attention(q[:, :64], k, v, causal=True))
    _assert_matches_reference(out, lse, q, k, v, True, 1 / math.sqrt(128))


@pytest.mark.gpu
def test_capture_without_prepare_is_a_clear_error(tmp_path):
    fresh = ops.load(None, tmp_path / "archive")  # its own kernel table: nothing loaded yet
    q, k, v = _inputs(1, 128, 128, 2, 2, 64)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="no kernel loaded for bf16_d64_full_g1 and a CUDA graph is being"):
        with torch.cuda.graph(graph):
            fresh(q, k, v)


def test_a_node_is_used_only_for_specs_its_suite_verified(tmp_path):
    lineage = Lineage.load(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", arch="sm_90a", suite="mha", geomean=1.0),
                source_text="KERNEL = None\n")
    attention = ops.load(None, lineage.root)
    mha = AttentionSpec(head_dim=128, causal=True)
    gqa = AttentionSpec(head_dim=128, causal=True, qhead_per_kvhead=4)
    assert [label for label, _ in attention.candidates("sm_90a", mha)] == ["v0000", "seed:flash_fwd_sm90"]
    assert [label for label, _ in attention.candidates("sm_90a", gqa)] == ["seed:flash_fwd_sm90"]


def test_a_node_vouches_for_the_specs_it_was_compiled_and_verified_for(tmp_path):
    """The harness records each spec's compile report on the node; those are the specs the node
    serves, whatever its suite file says later (here: a GQA spec the mha suite does not hold)."""
    gqa = AttentionSpec(head_dim=128, causal=True, qhead_per_kvhead=4)
    mha = AttentionSpec(head_dim=128, causal=True)
    lineage = Lineage.load(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", arch="sm_90a", suite="mha", geomean=1.0,
                          extra={"compile_reports": {"sm_90a": {gqa.key(): {"registers": 168}}}}),
                source_text="KERNEL = None\n")
    attention = ops.load(None, lineage.root)
    assert [label for label, _ in attention.candidates("sm_90a", gqa)] == ["v0000", "seed:flash_fwd_sm90"]
    assert [label for label, _ in attention.candidates("sm_90a", mha)] == ["seed:flash_fwd_sm90"]


# ---------------------------------------------------------------------------------------------
# registration, autograd and varlen without a GPU (meta tensors run the fakes)


def test_the_op_is_registered_with_torch_library_without_dynamo():
    """Library define/impl + register_fake: importing avo.ops and tracing a call must not pull
    torch._dynamo (custom_op's first call did, seconds of a cold start); networkx is not needed."""
    code = ("import sys, torch, avo.ops; "
            "q = torch.empty(1, 8, 2, 64, dtype=torch.bfloat16, device='meta'); "
            "out, lse = torch.ops.avo.attention_fwd(q, q, q, True, 0.125, ''); "
            "assert tuple(lse.shape) == (1, 2, 8), lse.shape; "
            "print(sorted(m for m in ('torch._dynamo', 'networkx', 'cutlass') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    schema = str(torch.ops.avo.attention_fwd.default._schema)
    assert schema == ("avo::attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale, "
                      "str kernel) -> (Tensor, Tensor)")
    for op in ("avo::attention_fwd", "avo::attention_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeExplicitAutograd")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("avo::attention_fwd", "Autograd")


def _meta(*shape, grad=False):
    return torch.empty(*shape, dtype=torch.bfloat16, device="meta", requires_grad=grad)


def test_autograd_gives_gradients_shaped_as_the_inputs_and_lse_is_not_differentiable():
    q, k, v = _meta(2, 64, 8, 128, grad=True), _meta(2, 80, 2, 128, grad=True), _meta(2, 80, 2, 128, grad=True)
    out, lse = torch.ops.avo.attention_fwd(q.transpose(1, 2).transpose(1, 2), k, v, True, 0.1, "")
    assert out.requires_grad and not lse.requires_grad
    assert type(out.grad_fn).__name__.startswith("GeneratedBackwardFor_avo_attention_fwd")
    out.float().sum().backward()
    for t in (q, k, v):
        assert (t.grad.shape, t.grad.dtype, t.grad.is_contiguous()) == (t.shape, t.dtype, True)


def test_torch_compile_fullgraph_traces_forward_and_backward_through_the_ops():
    from torch._dynamo.backends.common import aot_autograd

    graphs = {}

    def keep(name):
        def compiler(gm, example_inputs):
            graphs[name] = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
            return gm
        return compiler

    def step(q, k, v):
        return (avo.attention(q, k, v, causal=True).float() ** 2).sum()

    q, k, v = _meta(1, 32, 4, 64, grad=True), _meta(1, 48, 2, 64, grad=True), _meta(1, 48, 2, 64, grad=True)
    compiled = torch.compile(step, fullgraph=True, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
    compiled(q, k, v).backward()
    assert "avo.attention_fwd.default" in graphs["fw"] and "avo.attention_bwd.default" in graphs["bw"]
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


def _reference_call(handle, q, k, v, causal, softmax_scale, return_lse):
    """Stands in for the kernel on the CPU: the fp32 reference, in the op's (out, lse) layout."""
    if q.shape[1] == 0:  # the reference takes at least one query row; the op returns empty results
        out, lse = q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], 0))
    else:
        out, lse = reference_attention(q, k, v, causal=causal, softmax_scale=softmax_scale, dtype=q.dtype)
    return (out.to(q.dtype), lse) if return_lse else out.to(q.dtype)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_is_attention_within_each_packed_sequence(monkeypatch, causal):
    monkeypatch.setattr(ops, "_call", _reference_call)
    lens_q, lens_k = [5, 0, 17, 1], [9, 4, 17, 0]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = [0, *torch.tensor(lens_k).cumsum(0).tolist()]
    q = torch.randn(sum(lens_q), 6, 64, dtype=torch.float64)
    k, v = torch.randn(sum(lens_k), 2, 64, dtype=torch.float64), torch.randn(sum(lens_k), 2, 64, dtype=torch.float64)
    out, lse = avo.attention_varlen(q, k, v, cu_q, cu_k, causal=causal, softmax_scale=0.3, return_lse=True)
    assert out.shape == q.shape and lse.shape == (6, sum(lens_q))
    # the same attention as one masked matrix: a query sees keys of its own sequence only
    seq_q = torch.repeat_interleave(torch.arange(4), torch.tensor(lens_q))
    seq_k = torch.repeat_interleave(torch.arange(4), torch.tensor(lens_k))
    pos_q = torch.arange(len(seq_q)) - cu_q[:-1].long()[seq_q]
    pos_k = torch.arange(len(seq_k)) - torch.tensor(cu_k[:-1])[seq_k]
    visible = seq_q[:, None] == seq_k[None, :]
    if causal:  # bottom-right within each sequence
        shift = (torch.tensor(lens_k) - torch.tensor(lens_q))[seq_q]
        visible &= pos_k[None, :] <= pos_q[:, None] + shift[:, None]
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(3, dim=1)) * 0.3
    scores = scores.masked_fill(~visible, -math.inf)
    ref_lse = torch.logsumexp(scores, dim=-1)
    probs = torch.nan_to_num(torch.exp(scores - ref_lse[..., None]), nan=0.0)
    ref = torch.einsum("hqk,khd->qhd", probs, v.repeat_interleave(3, dim=1))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_varlen_errors_are_one_line():
    q = torch.zeros(10, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError) as exc:
        avo.attention_varlen(q, q, q, [0, 4, 9], [0, 4, 10])
    assert str(exc.value) == ("avo.attention_varlen: cu_seqlens_q must rise from 0 to the 10 packed tokens, "
                              "got [0, 4, 9]")
    with pytest.raises(ValueError) as exc:
        avo.attention_varlen(q, q, q, [0, 10], [0, 4, 10])
    assert str(exc.value) == ("avo.attention_varlen: cu_seqlens_q has 2 offsets and cu_seqlens_k 3; "
                              "both need batch + 1")
    with pytest.raises(ValueError) as exc:
        avo.attention_varlen(q[None], q, q, [0, 10], [0, 10])
    assert str(exc.value) == ("avo.attention_varlen: q must be a 3-D tensor (total_tokens, heads, head_dim), "
                              "got shape (1, 10, 2, 64)")


# ---------------------------------------------------------------------------------------------
# backward and varlen on a GPU


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout.to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def _reference_grads(q, k, v, dout, causal, scale):
    return _grads(lambda a, b, c: reference_attention(a, b, c, causal=causal, softmax_scale=scale)[0],
                  q.float(), k.float(), v.float(), dout.float())


def _sdpa_grads(q, k, v, dout, causal, scale):
    """PyTorch's own bf16 path on the same inputs: what the dtype costs, the error bound's yardstick."""
    from torch.nn.attention.bias import causal_lower_right

    def sdpa(a, b, c):
        mask = causal_lower_right(a.shape[1], b.shape[1]) if causal else None
        return torch.nn.functional.scaled_dot_product_attention(
            a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), attn_mask=mask, scale=scale,
            enable_gqa=a.shape[2] != b.shape[2]).transpose(1, 2)

    return _grads(sdpa, q, k, v, dout)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(2, 300, 517, 8, 8, 128), (1, 1000, 1000, 8, 2, 128), (2, 257, 129, 5, 1, 64),
                                   (1, 384, 384, 4, 4, 256)], ids=["mha", "gqa4", "gqa5_d64", "d256"])
def test_backward_matches_the_fp32_reference(shape, causal):
    q, k, v = _inputs(*shape)
    dout = torch.randn_like(q)
    scale = 0.8 / math.sqrt(shape[-1])
    _poison_allocator(8 * q.numel() * 4)
    ours = _grads(lambda a, b, c: avo.attention(a, b, c, causal=causal, softmax_scale=scale), q, k, v, dout)
    ref = _reference_grads(q, k, v, dout, causal, scale)
    torch_bf16 = _sdpa_grads(q, k, v, dout, causal, scale)
    for name, mine, truth, theirs in zip(("out", "dq", "dk", "dv"), ours, ref, torch_bf16, strict=True):
        assert mine.shape == truth.shape and not mine.isnan().any(), name
        err = (mine.float() - truth).abs().max().item()
        yardstick = (theirs.float() - truth).abs().max().item()
        assert err <= 2 * yardstick + 1e-3, (name, err, yardstick)


@pytest.mark.gpu
def test_backward_with_more_queries_than_keys_causal():
    """Bottom-right causal with seqlen_q > seqlen_k: the first rows see no key, get out 0 and no gradient."""
    q, k, v = _inputs(1, 200, 120, 4, 2, 128)
    dout = torch.randn_like(q)
    out, dq, dk, dv = _grads(lambda a, b, c: avo.attention(a, b, c, causal=True), q, k, v, dout)
    assert not any(t.isnan().any() for t in (out, dq, dk, dv))
    assert not out[:, :80].any() and not dq[:, :80].any()
    # the rows that see keys: the same as attention of those rows alone (a square causal problem)
    _, dq_tail, dk_tail, dv_tail = _reference_grads(q[:, 80:], k, v, dout[:, 80:], True, 1 / math.sqrt(128))
    for mine, truth in ((dq[:, 80:], dq_tail), (dk, dk_tail), (dv, dv_tail)):
        assert (mine.float() - truth).abs().max().item() < 5e-2


@pytest.mark.gpu
def test_opcheck_with_gradients():
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 128, 192, 8, 2, 128))
    torch.library.opcheck(torch.ops.avo.attention_fwd.default, (q, k, v, True, 0.088, ""))
    dout = torch.randn_like(q)
    out, lse = avo.attention(q.detach(), k.detach(), v.detach(), causal=True, softmax_scale=0.088, return_lse=True)
    torch.library.opcheck(torch.ops.avo.attention_bwd.default, (dout, q.detach(), k.detach(), v.detach(), out, lse,
                                                                 True, 0.088))


@pytest.mark.gpu
def test_torch_compile_training_step_matches_eager():
    torch.manual_seed(0)
    model = _TinyAttention().cuda().to(torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 256, 512, device="cuda", dtype=torch.bfloat16)
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        fn(x).float().square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for eager, traced in zip(*grads, strict=True):
        assert not traced.isnan().any()
        torch.testing.assert_close(traced, eager)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_matches_the_reference_per_sequence(causal):
    lens_q, lens_k = [300, 1, 0, 517, 64], [300, 129, 7, 517, 0]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    q = torch.randn(sum(lens_q), 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out, lse = avo.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, return_lse=True)
    out.float().sum().backward()
    assert out.shape == q.shape and lse.shape == (8, sum(lens_q)) and q.grad.shape == q.shape
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(lens_q)):
        rows, cols = slice(starts_q[i], starts_q[i + 1]), slice(starts_k[i], starts_k[i + 1])
        if lens_q[i] == 0:
            continue
        _assert_matches_reference(out[rows][None].detach(), lse[:, rows][None], q[rows][None].detach(),
                                  k[cols][None].detach(), v[cols][None].detach(), causal, 1 / math.sqrt(128))


@pytest.mark.skipif(jit.current_arch() == "sm_90a", reason="on an sm_90a GPU it measures")
@pytest.mark.parametrize("script", ["bench/first_call.py", "bench/op_overhead.py"])
def test_a_gpu_bench_without_the_gpu_is_one_line(script):
    proc = subprocess.run([sys.executable, script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{script}: no sm_90a GPU here (")


def test_op_overhead_host_only_times_the_python_around_a_no_op_launch():
    proc = subprocess.run([sys.executable, "bench/op_overhead.py", "--host-only", "--calls", "64", "--rounds", "2",
                           "--head-dim", "64"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 128, 8, 64] and set(result) >= {"bare", "attention", "lse", "validate"}
    assert result["host_attention_us"] == round(result["attention"]["median_us"] - result["bare"]["median_us"], 2)
