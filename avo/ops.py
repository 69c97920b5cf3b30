"""Evolved kernels as a torch op: `avo.attention(q, k, v)` runs the best committed kernel.

    out = avo.attention(q, k, v, causal=True)            # (batch, seqlen, heads, head_dim) bf16/fp16
    out, lse = avo.load("v0042")(q, k, v, return_lse=True)  # one lineage version

The kernel for a call is chosen per GPU arch and specialization (`AttentionSpec`: dtype, head_dim,
causal, GQA ratio): the committed archive nodes of that arch, newest (the incumbent) first, the
first whose source compiles for the spec; where none does, the arch's seed template with its default knobs.
It is compiled (or loaded from the disk cache, avo.jit) on first use and kept for the process.

The launch is the custom op `avo::attention_fwd` (torch.library), with a fake implementation, so
`torch.compile(fullgraph=True)` traces through it, and it launches on torch's current stream, so
it can be captured in a CUDA graph. Nothing may compile during a capture: call `prepare(...)`
(or run the op once) before capturing.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch

from avo import jit
from avo.lineage import Lineage, LineageError
from avo.spec import AttentionSpec

__all__ = ["HEAD_DIMS", "SEEDS", "Attention", "attention", "default_archive", "load", "prepare"]

# The seed family of each arch: the fallback when the archive has no committed node for it.
SEEDS = {"sm_90a": "flash_fwd_sm90"}
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
        if node_id is not None:  # fail at load time, not at the first call
            node = Lineage.load(self.archive).get(node_id)
            if node.status != "committed":
                raise LineageError(f"node {node_id} is {node.status}; only committed nodes keep their source")
        _INSTANCES[self.handle] = self

    def __repr__(self) -> str:
        return f"Attention(node_id={self.node_id!r}, archive='{self.archive}')"

    def __call__(self, q, k, v, causal: bool = False, softmax_scale: float | None = None,
                 return_lse: bool = False):
        return _call(self.handle, q, k, v, causal, softmax_scale, return_lse)

    # -- choosing and loading kernels --------------------------------------------------------
    def candidates(self, arch: str, spec: AttentionSpec | None = None) -> list[tuple[str, Path]]:
        """(label, source) in the order they are tried for `arch`: committed nodes of that arch by
        newest first (or the one node), then the arch's seed. With `spec`, a node whose suite never
        verified that specialization is passed over: it was measured correct on its suite's shapes
        only, and the seed is checked on every spec by its own tests."""
        lineage = Lineage.load(self.archive)
        if self.node_id is not None:
            node = lineage.get(self.node_id)
            if node.arch and node.arch != arch:
                raise ValueError(f"{_WHO}: node {node.id} was evolved for {node.arch}, not {arch}")
            return [(node.id, self.archive / node.source_path)]
        # newest first: each commit was at least as fast as the incumbent of its time (Lineage.best)
        nodes = sorted((c for c in lineage.nodes("committed") if c.arch == arch and _verified_for(c, spec)),
                       key=lambda c: -c.created)
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
                kernel = jit.compile_kernel(source, spec, arch)
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


# ---------------------------------------------------------------------------------------------
# the op


def _call(handle, q, k, v, causal, softmax_scale, return_lse):
    _check(q, k, v)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"{_WHO}: softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    out, lse = torch.ops.avo.attention_fwd(q, k, v, bool(causal), float(softmax_scale), handle)
    return (out, lse) if return_lse else out


def _check(q, k, v) -> tuple[str, int, int]:
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
    if q.device.type != "cuda":
        raise ValueError(f"{_WHO}: q, k, v are on {q.device}; the kernels run on CUDA tensors")
    return _DTYPES[q.dtype], head_dim, heads_q // heads_kv


def _spec(dtype: str, head_dim: int, group: int, causal: bool) -> AttentionSpec:
    return AttentionSpec(dtype=dtype, head_dim=head_dim, causal=bool(causal), qhead_per_kvhead=group)


_ARCHS: dict[int, str] = {}  # CUDA device index -> arch


def _device_arch(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHS[index] = f"sm_{major}{minor}a"
    return _ARCHS[index]


@torch.library.custom_op("avo::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, softmax_scale: float,
                  kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
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
    with torch.cuda.device(q.device):
        arch = _device_arch(q.device)
        owner = _instance(kernel)
        compiled = owner._kernels.get((spec, arch))
        if compiled is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"{_WHO}: no kernel loaded for {spec.key()} and a CUDA graph is being "
                                   "captured; call avo.ops.prepare(q, k, v, causal=...) before capturing")
            compiled = owner.kernel(spec, arch)
        compiled.fn(q, k, v, out, lse, softmax_scale)
    return out, lse


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, causal, softmax_scale, kernel):
    batch, seqlen_q, heads_q, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, heads_q, seqlen_q), dtype=torch.float32)
