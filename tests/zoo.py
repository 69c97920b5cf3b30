"""A zoo of broken kernels: each is the naive reference kernel (same calling convention as the
seed) with one realistic bug or cheat, and the verdict the cascade must give it.

Kernel-level variants are patches of the rendered source; the patch text must exist, so a template
change that removes it fails loudly instead of silently testing nothing. Two cheats live outside a
kernel module (a kernel module cannot hold Python state or pick torch's stream): they wrap a
correct compiled kernel as a callable and go straight to avo.verify.
"""

from pathlib import Path

from avo import jit

# name -> (old text, new text, expected status, words the diagnosis must contain)
VARIANTS = {
    "wrong_last_tile": (
        "        last_key = seqlen_k - 1\n",
        "        last_key = cute.ceil_div(seqlen_k, TILE_N) * TILE_N - 1  # bug: padded keys count\n",
        "failed_correctness", "output error"),
    "output_never_written": (
        "        if row_valid:\n",
        "        if row_valid and tidx != BLOCK_M - 1:  # bug: the last row of each tile is skipped\n",
        "failed_correctness", "never written"),
    "causal_mask_ignored": (
        "        self.causal = spec.causal\n",
        "        self.causal = False  # bug: the mask is never applied\n",
        "failed_correctness", "output error"),
    "side_stream_launch": (
        "smem=self.shared_storage_bytes(), stream=stream)",
        "smem=self.shared_storage_bytes())  # bug: launched on the default stream",
        "failed_correctness", "output error"),
    "fp16_accumulation": (
        "                        acc[d] = acc[d] * correction + p * sV[j, d]\n",
        "                        acc[d] = (acc[d] * correction + p * sV[j, d]).to(cutlass.Float16).to(Float32)\n",
        "failed_correctness", "output error"),
    "hang": (
        "        for n_block in cutlass.range(cute.ceil_div(n_keys, TILE_N)):\n",
        "        for n_block in cutlass.range(cute.ceil_div(n_keys, TILE_N) + 2000000000):  # bug: never ends\n",
        "timeout", "killed after"),
    "illegal_address": (
        "                mO[batch, row, head, d] = (acc[d] * inv_sum).to(mO.element_type)\n",
        "                mO[batch, row + 100000000, head, d] = (acc[d] * inv_sum).to(mO.element_type)  # bug\n",
        "crashed", "CUDA error"),
}


def make_variant(name: str, directory: Path) -> Path:
    old, new, _status, _words = VARIANTS[name]
    text = jit.render("naive_attention").read_text()
    if text.count(old) != 1:
        raise AssertionError(f"zoo variant {name}: its patch point is gone from the naive template")
    path = Path(directory) / f"zoo_{name}.py"
    path.write_text(text.replace(old, new))
    return path


def caching_wrapper(fn):
    """Cheat: compute once per shape, then return that output again (a cache by shape)."""
    cache = {}

    def cheat(q, k, v, out, lse, scale):
        key = (tuple(q.shape), tuple(k.shape))
        if key not in cache:
            fn(q, k, v, out, lse, scale)
            cache[key] = (out.clone(), lse.clone())
        out.copy_(cache[key][0])
        lse.copy_(cache[key][1])

    return cheat


def side_stream_wrapper(fn):
    """Cheat: run the kernel on a stream of its own, unordered with the caller's."""
    import torch

    side = torch.cuda.Stream()

    def cheat(q, k, v, out, lse, scale):
        with torch.cuda.stream(side):
            fn(q, k, v, out, lse, scale)

    return cheat
