"""Evolved kernels as a torch op: `avo.attention(q, k, v)` runs the best committed kernel.

    out = avo.attention(q, k, v, causal=True)            # (batch, seqlen, heads, head_dim) bf16/fp16
    out, lse = avo.load("v0042")(q, k, v, return_lse=True)  # one lineage version
    out = avo.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=True)  # packed sequences

The kernel for a call is chosen per GPU arch and specialization (`AttentionSpec`: dtype, head_dim,
causal, GQA ratio): the committed archive nodes of that arch, newest (the incumbent) first, the
first whose source compiles for the spec; where none does, the arch's seed template with its default knobs.
It is compiled (or loaded from the disk cache, avo.jit) on first use and kept for the process.

An eager call that wants no gradient (a model's inference step) skips the op's dispatcher and
autograd wrapper, and once an `Attention` has checked a call's metadata (shapes, strides, dtypes,
devices, causal, scale) it keeps what the launch needs under that metadata, so the next such call
pays a dictionary lookup, an alignment test and the allocation of out before the launch (a
bounded cache: `_MAX_PLANS` per object, oldest out first; bench/op_overhead.py measures the rest).
A small lse that the caller does not ask for goes to a per-device scratch that is never read.

The launch is the op `avo::attention_fwd`, defined with `torch.library.Library` (define, impl,
register_fake: torch's low-level registration, which costs microseconds where `custom_op` paid
seconds of lazy imports on a process's first call), so `torch.compile(fullgraph=True)` traces
through it; it launches on torch's current stream, so it can be captured in a CUDA graph. Nothing
may compile during a capture: call `prepare(...)` (or run the op once) before capturing.

Under autograd the backward is `avo::attention_bwd`: PyTorch's FlashAttention-2 backward
(aten._scaled_dot_product_flash_attention_backward) fed with this forward's output and LSE, until
avo evolves a backward of its own. Its causal mask is aligned bottom-right, as the forward's.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch

import avo
from avo import jit
from avo.lineage import LineageError, read_nodes
from avo.spec import AttentionSpec

__all__ = ["HEAD_DIMS", "SEEDS", "Attention", "attention", "attention_varlen", "default_archive", "load", "prepare"]

# The seed family of each arch: the fallback when the archive has no committed node for it.
SEEDS = {"sm_90a": "flash_fwd_sm90", "sm_100a": "flash_fwd_sm100"}  # sm_100a: compile-verified only (no B200 here)
# Head dims the seed supports, hence the ones every specialization can fall back on.
HEAD_DIMS = (64, 128, 256)
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_WHO = "avo.attention"


def default_archive() -> Path:
    """The archive `attention` reads: $AVO_ARCHIVE, else the repository's archive/."""
    return Path(os.environ.get("AVO_ARCHIVE") or jit.REPO / "archive").resolve()


class Attention:
    """Attention through evolved kernels: the best committed node of `archive` (node_id=None) or
    one lineage version. Call it like `attention`; `prepare` compiles and loads ahead of time."""

    def __init__(self, node_id: str | None = None, archive: str | Path | None = None):
        self.node_id = node_id
        self.archive = Path(archive).resolve() if archive is not None else default_archive()
        self.handle = f"{node_id or ''}@{self.archive}"
        self.chosen: dict[tuple[AttentionSpec, str], str] = {}  # (spec, arch) -> node id or seed
        self._kernels: dict[tuple[AttentionSpec, str], jit.CompiledKernel] = {}
        self._plans: dict[tuple, _Plan] = {}  # a validated call's metadata -> what its launch needs
        if node_id is not None:  # fail at load time, not at the first call
            node = self._node(node_id)
            if node.status != "committed":
                raise LineageError(f"node {node_id} is {node.status}; only committed nodes keep their source")
        _INSTANCES[self.handle] = self

    def __repr__(self) -> str:
        return f"Attention(node_id={self.node_id!r}, archive='{self.archive}')"

    def __call__(self, q, k, v, causal: bool = False, softmax_scale: float | None = None,
                 return_lse: bool = False):
        return _call(self.handle, q, k, v, causal, softmax_scale, return_lse)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
               causal: bool = False, softmax_scale: float | None = None, return_lse: bool = False):
        """`attention_varlen` through this object's kernels."""
        return _varlen(self.handle, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, return_lse)

    def _node(self, node_id: str):
        for node in read_nodes(self.archive):
            if node.id == node_id:
                return node
        raise LineageError(f"no node {node_id!r} in the lineage at {self.archive}")

    # -- choosing and loading kernels --------------------------------------------------------
    def candidates(self, arch: str, spec: AttentionSpec | None = None) -> list[tuple[str, Path]]:
        """(label, source) in the order they are tried for `arch`: committed nodes of that arch by
        newest first (or the one node), then the arch's seed. With `spec`, a node whose suite never
        verified that specialization is passed over: it was measured correct on its suite's shapes
        only, and the seed is checked on every spec by its own tests."""
        if self.node_id is not None:
            node = self._node(self.node_id)
            if node.arch and node.arch != arch:
                raise ValueError(f"{_WHO}: node {node.id} was evolved for {node.arch}, not {arch}")
            return [(node.id, self.archive / node.source_path)]
        # the last recorded commit first: each was at least as fast as the incumbent of its time
        # (Lineage.best; side-by-side steps commit in another order than they were created in)
        nodes = sorted((c for c in read_nodes(self.archive)
                        if c.status == "committed" and c.arch == arch and _verified_for(c, spec)),
                       key=lambda c: -(c.committed_at or c.created))
        out = [(c.id, self.archive / c.source_path) for c in nodes]
        if arch in SEEDS:
            out.append((f"seed:{SEEDS[arch]}", None))
        return out

    def kernel(self, spec: AttentionSpec, arch: str | None = None) -> jit.CompiledKernel:
        """The compiled kernel for `spec` on `arch` (default: the current GPU's, else sm_90a),
        callable when `arch` is the current GPU's. Cached for the life of the object."""
        arch = arch or jit.current_arch() or "sm_90a"
        found = self._kernels.get((spec, arch))
        if found is not None:
            return found
        tried = []
        for label, source in self.candidates(arch, spec):
            if source is None:  # the seed, rendered with its default knobs for this spec
                template = label.split(":", 1)[1]
                source = jit.render(template, jit.load_knobs(template, spec=spec))
            try:
                kernel = jit.compile_kernel(source, spec, arch, trusted=True)  # committed nodes and seeds
            except jit.CompileError as exc:
                tried.append(f"{label} ({exc.stage}: {exc.message[:160]})")
                continue
            self._kernels[(spec, arch)], self.chosen[(spec, arch)] = kernel, label
            return kernel
        if not tried:
            raise RuntimeError(f"{_WHO}: no kernel for {arch}: {self.archive} has no committed {arch} node and "
                               f"there is no {arch} seed (seeds: {', '.join(SEEDS)})")
        raise RuntimeError(f"{_WHO}: no kernel compiles for {spec.key()} on {arch}; tried " + "; ".join(tried))

    def prepare(self, spec_or_q, k=None, v=None, *, causal: bool = False,
                arch: str | None = None) -> jit.CompiledKernel:
        """Compile and load the kernel for a spec (or for example tensors q, k, v with `causal`) and,
        on a GPU, launch it once on tiny inputs, so that a later CUDA-graph capture finds
        everything loaded. Without a GPU it compiles only (fills the disk cache)."""
        if isinstance(spec_or_q, AttentionSpec):
            spec = spec_or_q
        else:
            spec = _spec(*_check(spec_or_q, k, v), causal)
        kernel = self.kernel(spec, arch)
        if kernel.runnable:
            g, d = spec.qhead_per_kvhead, spec.head_dim
            q1 = torch.zeros(1, 128, g, d, dtype=spec.torch_dtype, device="cuda")
            k1 = torch.zeros(1, 128, 1, d, dtype=spec.torch_dtype, device="cuda")
            lse = torch.empty(1, g, 128, dtype=torch.float32, device="cuda")
            kernel.fn(q1, k1, k1, torch.empty_like(q1), lse, 1.0)
            torch.cuda.synchronize()
        return kernel


def _verified_for(node, spec: AttentionSpec | None) -> bool:
    if spec is None or not node.suite:
        return True
    # a node evaluated by the harness lists the specs it was compiled and verified for; reading
    # that also keeps a later edit of the suite file from changing what an old node vouches for
    reports = (node.extra.get("compile_reports") or {}).get(node.arch)
    if reports:
        return spec.key() in reports
    return spec in _suite_specs(node.suite)


@functools.lru_cache(maxsize=64)
def _suite_specs(suite: str) -> frozenset[AttentionSpec]:
    """The specs a suite verifies, parsed once per process: every committed node names its suite,
    and parsing the YAML again for each was most of a cached kernel's first call."""
    from avo.suites import SuiteError, load_suite

    try:
        return frozenset(load_suite(suite).specs)
    except SuiteError:
        return frozenset()


_INSTANCES: dict[str, Attention] = {}


def _instance(handle: str) -> Attention:
    found = _INSTANCES.get(handle)
    if found is None:
        if handle == "":
            found = _INSTANCES[""] = Attention(None, default_archive())
        else:
            node_id, _, archive = handle.partition("@")
            found = Attention(node_id or None, archive)
    return found


def load(node_id: str | None, archive: str | Path | None = None) -> Attention:
    """Attention through one lineage version (node_id) of `archive` (default: default_archive()),
    or through its best committed node for each arch and spec when node_id is None."""
    archive = Path(archive).resolve() if archive is not None else default_archive()
    return _INSTANCES.get(f"{node_id or ''}@{archive}") or Attention(node_id, archive)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              softmax_scale: float | None = None, return_lse: bool = False):
    """Softmax attention of (batch, seqlen, heads, head_dim) bf16/fp16 CUDA tensors through the
    best committed kernel of the default archive. heads_q must be a multiple of heads_kv (GQA);
    softmax_scale defaults to 1/sqrt(head_dim); causal masks are aligned bottom-right. Returns
    out, shaped like q, or (out, lse) with lse float32 (batch, heads_q, seqlen_q)."""
    return _call("", q, k, v, causal, softmax_scale, return_lse)


def prepare(spec_or_q, k=None, v=None, *, causal: bool = False, arch: str | None = None) -> jit.CompiledKernel:
    """`Attention.prepare` for `attention` (the default archive's best kernels)."""
    return _instance("").prepare(spec_or_q, k, v, causal=causal, arch=arch)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, causal: bool = False,
                     softmax_scale: float | None = None, return_lse: bool = False):
    """Attention over packed sequences, FlashAttention's varlen shape: q (total_q, heads_q, head_dim),
    k and v (total_k, heads_kv, head_dim), sequence i at rows cu_seqlens[i]:cu_seqlens[i+1] of each
    (int tensors or lists of batch+1 offsets). Returns out (total_q, heads_q, head_dim), or (out, lse)
    with lse float32 (heads_q, total_q). max_seqlen_* are accepted for FA's signature and not needed.

    A correct path, not a fast one: one fixed-length launch per sequence plus a concatenation, and
    the offsets are read on the host (a device sync when they live on the GPU, and a graph break
    under torch.compile). Differentiable like `attention`."""
    return _varlen("", q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, return_lse)


# ---------------------------------------------------------------------------------------------
# the op


_MAX_PLANS = 128  # metadata keys kept per Attention: shapes a model cycles through, bounded for varlen


class _Plan(NamedTuple):
    """What a launch needs for one validated call metadata (shapes, strides, dtypes, devices,
    causal, scale): everything but the tensors' data pointers."""

    fn: object  # the compiled kernel's tvm_ffi function
    index: int  # the CUDA device it runs on
    out_shape: tuple[int, ...]  # out and lse are dense, row-major: (shape, strides) for empty_strided
    out_stride: tuple[int, ...]
    lse_shape: tuple[int, ...]
    lse_stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    scale: float
    lse_scratch: torch.Tensor | None  # where lse goes when the caller does not want it


# lse is written by every launch; a call that does not return it writes it into this per-device
# scratch: one allocation and free fewer, ~2 us of host time on the H100 host. It is never freed,
# so it outlives every launch in flight and every CUDA graph that captured one, and nothing reads
# it, so launches on several streams may write it at once
_LSE_SCRATCH_NUMEL = 1 << 14  # floats (64 KiB per device): the small calls, where host time matters
_LSE_SCRATCH: dict[torch.device, torch.Tensor] = {}


# the current CUDA device without torch.cuda.current_device()'s lazy-init check (a plan exists
# only for CUDA tensors, so CUDA is initialized wherever it is called)
_cuda_device = getattr(torch._C, "_cuda_getDevice", None) or torch.cuda.current_device


def _call(handle, q, k, v, causal, softmax_scale, return_lse):
    causal = bool(causal)
    if (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and (softmax_scale is None or type(softmax_scale) is float) and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        # eager and no gradient wanted: the hot path of a model. _check reads metadata only, so a
        # call whose metadata this Attention validated before needs no check but the data
        # pointers' alignment, nor the dispatcher or autograd wrapper (~20 us, bench/op_overhead.py)
        key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
               q.device, k.device, v.device, causal, softmax_scale)
        owner = _INSTANCES.get(handle) or _instance(handle)
        plan = owner._plans.get(key) or _plan(owner, key, q, k, v)
        if plan is not None and not (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15 and _cuda_device() == plan.index:
            # empty_strided: torch.empty's argument parsing costs ~0.8 us more per call
            out = torch.empty_strided(plan.out_shape, plan.out_stride, dtype=plan.dtype, device=plan.device)
            lse = plan.lse_scratch
            if return_lse or lse is None:
                lse = torch.empty_strided(plan.lse_shape, plan.lse_stride, dtype=torch.float32, device=plan.device)
            plan.fn(q, k, v, out, lse, plan.scale)
            return (out, lse) if return_lse else out
    # everything else (errors, empty inputs, another current device, tracing, autograd) as before
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        _check(q, k, v)  # the one-line error, not the dispatcher's schema message
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"{_WHO}: softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    # the op itself (and its fake, under torch.compile) checks q, k, v: once per call, not twice
    if _eager_no_grad(q, k, v):
        out, lse = _attention_fwd(q, k, v, causal, float(softmax_scale), handle)
    else:
        out, lse = torch.ops.avo.attention_fwd(q, k, v, causal, float(softmax_scale), handle)
    return (out, lse) if return_lse else out


def _eager_no_grad(q, k, v) -> bool:
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor:
        return False  # fake, functional or other subclass tensors: through the op
    if q.device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))


def _plan(owner: Attention, key: tuple, q, k, v) -> _Plan | None:
    """Validate a call with `key`'s metadata in full and remember what its launch needs; None
    (nothing kept) for what the fast path does not take: input _check refuses (the general path
    raises its error), tensors that are not CUDA (meta goes to the fake), empty inputs."""
    try:
        dtype, head_dim, group = _check(q, k, v)
    except (TypeError, ValueError):
        return None
    if q.numel() == 0 or k.shape[1] == 0:
        return None
    causal, softmax_scale = key[-2], key[-1]
    index = q.device.index
    compiled = _kernel_for(owner, _spec(dtype, head_dim, group, causal), index)
    batch, seqlen_q, heads_q, _ = q.shape
    out_shape, lse_shape = tuple(q.shape), (batch, heads_q, seqlen_q)
    lse_stride = _dense_strides(lse_shape)
    plan = _Plan(compiled.fn, index, out_shape, _dense_strides(out_shape), lse_shape, lse_stride, q.dtype, q.device,
                 1.0 / math.sqrt(head_dim) if softmax_scale is None else softmax_scale,
                 _lse_scratch(q.device, lse_shape, lse_stride))
    plans = owner._plans
    if len(plans) >= _MAX_PLANS:
        plans.pop(next(iter(plans), None), None)  # the oldest
    plans[key] = plan
    return plan


def _lse_scratch(device: torch.device, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor | None:
    """A view of the device's lse scratch shaped (shape, stride), or None where it is too small
    (or would first be allocated inside a CUDA-graph capture, which would tie it to the graph)."""
    if math.prod(shape) > _LSE_SCRATCH_NUMEL:
        return None
    scratch = _LSE_SCRATCH.get(device)
    if scratch is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        with torch.inference_mode(False):  # a plain tensor, usable in and out of inference mode
            scratch = _LSE_SCRATCH.setdefault(device, torch.empty(_LSE_SCRATCH_NUMEL, dtype=torch.float32,
                                                                        device=device))
    with torch.inference_mode(False):
        return scratch.as_strided(shape, stride)


def _dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, as torch.empty(shape) lays a tensor out."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _varlen(handle, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale, return_lse):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{_WHO}_varlen: {name} must be a 3-D tensor (total_tokens, heads, head_dim), got "
                             + (f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__))
    starts_q, starts_k = _offsets(cu_seqlens_q, "cu_seqlens_q", q), _offsets(cu_seqlens_k, "cu_seqlens_k", k)
    if len(starts_q) != len(starts_k):
        raise ValueError(f"{_WHO}_varlen: cu_seqlens_q has {len(starts_q)} offsets and cu_seqlens_k "
                         f"{len(starts_k)}; both need batch + 1")
    outs, lses = [], []
    for i in range(len(starts_q) - 1):
        qi = q[starts_q[i]:starts_q[i + 1]].unsqueeze(0)
        ki, vi = k[starts_k[i]:starts_k[i + 1]].unsqueeze(0), v[starts_k[i]:starts_k[i + 1]].unsqueeze(0)
        out, lse = _call(handle, qi, ki, vi, causal, softmax_scale, True)
        outs.append(out[0])
        lses.append(lse[0])
    if not outs:  # no sequences: empty results shaped as the inputs say
        out, lse = q.new_empty(q.shape), q.new_empty((q.shape[1], 0), dtype=torch.float32)
    else:
        out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    return (out, lse) if return_lse else out


def _offsets(cu_seqlens, name: str, t: torch.Tensor) -> list[int]:
    offsets = cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else list(cu_seqlens)
    if (not offsets or offsets[0] != 0 or offsets[-1] != t.shape[0]
            or any(b < a for a, b in zip(offsets, offsets[1:], strict=False))):
        raise ValueError(f"{_WHO}_varlen: {name} must rise from 0 to the {t.shape[0]} packed tokens, got "
                         f"{offsets[:8]}{' ...' if len(offsets) > 8 else ''}")
    return offsets


def _check(q, k, v, devices=("cuda",)) -> tuple[str, int, int]:
    """Validate q, k, v against the kernel contract (avo/spec.py); (dtype, head_dim, GQA ratio).
    Only metadata is read, so this also runs under torch.compile and on fake tensors."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_WHO}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{_WHO}: {name} must be 4-D (batch, seqlen, heads, head_dim), "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{_WHO}: {name} has dtype {t.dtype}; the kernels take torch.bfloat16 or torch.float16")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{_WHO}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{_WHO}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, _, heads_q, head_dim = q.shape
    if k.shape[0] != batch:
        raise ValueError(f"{_WHO}: batch differs: q has {batch}, k and v have {k.shape[0]}")
    if k.shape[3] != head_dim:
        raise ValueError(f"{_WHO}: head_dim differs: q has {head_dim}, k and v have {k.shape[3]}")
    heads_kv = k.shape[2]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"{_WHO}: heads_q {heads_q} is not a multiple of heads_kv {heads_kv}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{_WHO}: head_dim {head_dim} not supported; the kernels take "
                         + ", ".join(map(str, HEAD_DIMS)))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{_WHO}: {name}'s last dim must be contiguous (stride 1), got stride "
                             f"{t.stride(-1)}; pass {name}.contiguous()")
        if any(s % 8 for s in t.stride()[:-1]):
            raise ValueError(f"{_WHO}: {name}'s strides {tuple(t.stride())} must be multiples of 8 elements "
                             f"(16 bytes, for TMA); pass {name}.contiguous()")
    if not q.device == k.device == v.device:
        raise ValueError(f"{_WHO}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type not in devices:
        raise ValueError(f"{_WHO}: q, k, v are on {q.device}; the kernels run on CUDA tensors")
    return _DTYPES[q.dtype], head_dim, heads_q // heads_kv


@functools.cache
def _spec(dtype: str, head_dim: int, group: int, causal: bool) -> AttentionSpec:
    # cached: a spec is hashed into the kernel table on every call, and building one validates it
    return AttentionSpec(dtype=dtype, head_dim=head_dim, causal=bool(causal), qhead_per_kvhead=group)


_ARCHS: dict[int, str] = {}  # CUDA device index -> arch


def _device_arch(index: int) -> str:
    if index not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHS[index] = f"sm_{major}{minor}a"
    return _ARCHS[index]


def _attention_fwd(q, k, v, causal: bool, softmax_scale: float, kernel: str):
    """(out, lse) of attention through the kernel `kernel` names ("" the default archive's best,
    "<node>@<archive>" one version, "@<archive>" that archive's best)."""
    spec = _spec(*_check(q, k, v), causal)
    batch, seqlen_q, heads_q, _ = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    if k.shape[1] == 0:  # no keys: every row sees nothing (the reference's convention)
        return out.zero_(), lse.fill_(-math.inf)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.data_ptr() % 16:
            raise ValueError(f"{_WHO}: {name}'s data is not 16-byte aligned (a view at an odd offset); "
                             f"pass {name}.clone()")
    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    compiled = _kernel_for(_INSTANCES.get(kernel) or _instance(kernel), spec, index)
    if index == torch.cuda.current_device():  # the common case: no device switch on the hot path
        compiled.fn(q, k, v, out, lse, softmax_scale)
    else:
        with torch.cuda.device(index):
            compiled.fn(q, k, v, out, lse, softmax_scale)
    return out, lse


def _kernel_for(owner: Attention, spec: AttentionSpec, index: int) -> jit.CompiledKernel:
    """The owner's kernel for `spec` on CUDA device `index`, compiled or loaded on first use."""
    arch = _device_arch(index)
    compiled = owner._kernels.get((spec, arch))
    if compiled is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{_WHO}: no kernel loaded for {spec.key()} and a CUDA graph is being "
                               "captured; call avo.ops.prepare(q, k, v, causal=...) before capturing")
        with torch.cuda.device(index):
            compiled = owner.kernel(spec, arch)
    return compiled


def _attention_fwd_fake(q, k, v, causal, softmax_scale, kernel):
    _check(q, k, v, devices=("cuda", "meta"))  # the same one-line errors while torch.compile traces
    batch, seqlen_q, heads_q, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)


def _attention_bwd(dout, q, k, v, out, lse, causal: bool, softmax_scale: float):
    """(dq, dk, dv) by PyTorch's FlashAttention-2 backward from this op's out and natural-log LSE.
    That kernel takes (batch, heads, seqlen, head_dim) views, GQA as is (it sums dk, dv over each
    group), and aligns a causal mask bottom-right when seqlen_q != seqlen_k, as the forward does."""
    if q.numel() == 0 or k.shape[1] == 0:  # nothing attended: no gradient flows
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if causal and q.shape[1] > k.shape[1]:
        # rows that see no key carry lse -inf here; the kernel expects +inf there (then P = 0)
        lse = lse.masked_fill(lse == -math.inf, math.inf)
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    rng = q.new_empty((0,), dtype=torch.int64)  # no dropout: the kernel never reads its RNG state
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
        dout.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), out.transpose(1, 2),
        lse.contiguous(), None, None, q.shape[1], k.shape[1], 0.0, causal, rng, rng, scale=softmax_scale)
    return (dq.transpose(1, 2).contiguous(), dk.transpose(1, 2).contiguous(), dv.transpose(1, 2).contiguous())


def _attention_bwd_fake(dout, q, k, v, out, lse, causal, softmax_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, softmax_scale, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.softmax_scale = causal, softmax_scale
    # the backward kernel takes dout only: a loss through lse gets no gradient, so say so at once
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.avo.attention_bwd(dout, q, k, v, out, lse, ctx.causal, ctx.softmax_scale)
    return dq, dk, dv, None, None, None


_LIB = torch.library.Library("avo", "DEF")
_LIB.define("attention_fwd(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale, str kernel) "
            "-> (Tensor, Tensor)")
_LIB.define("attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, bool causal, "
            "float softmax_scale) -> (Tensor, Tensor, Tensor)")
# CompositeExplicitAutograd: every device reaches the impl, so a CPU tensor gets _check's one-line
# error rather than the dispatcher's; Meta and FakeTensor go to the fakes
_LIB.impl("attention_fwd", _attention_fwd, "CompositeExplicitAutograd")
_LIB.impl("attention_bwd", _attention_bwd, "CompositeExplicitAutograd")
torch.library.register_fake("avo::attention_fwd", _attention_fwd_fake, lib=_LIB)
torch.library.register_fake("avo::attention_bwd", _attention_bwd_fake, lib=_LIB)
torch.library.register_autograd("avo::attention_fwd", _backward, setup_context=_setup_context, lib=_LIB)

# `avo.attention` is found through the package's module __getattr__ (so that `import avo` stays
# cheap), which runs on every access: ~0.7 us of each model call. Once this module is loaded, the
# package's public names are plain attributes instead.
for _name in avo.__all__:
    setattr(avo, _name, globals()[_name])
