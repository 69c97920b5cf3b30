"""A zoo of broken kernels: each is the naive reference kernel (same calling convention as the
seed) with one realistic bug or cheat, and the verdict the cascade must give it.

Kernel-level variants are patches of the rendered source; the patch text must exist, so a template
change that removes it fails loudly instead of silently testing nothing. Two cheats live outside a
kernel module (a kernel module cannot hold Python state or pick torch's stream): they wrap a
correct compiled kernel as a callable and go straight to avo.verify. A cheat on the run rather than
on a kernel (a deferred candidate's source rewritten between two sessions) is a CPU test in
tests/test_evolve.py.
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
    "right_only_on_the_suite_shapes": (  # drops the last key unless seqlen_k is one the zoo suite names
        "        last_key = seqlen_k - 1\n",
        "        last_key = seqlen_k - 1\n"
        "        if (seqlen_k != 512) & (seqlen_k != 300) & (seqlen_k != 255) & (seqlen_k != 700) & \\\n"
        "                (seqlen_k != 4097) & (seqlen_k != 100) & (seqlen_k != 333):\n"
        "            last_key = seqlen_k - 2  # cheat: correct where the judge is known to look\n",
        "failed_correctness", "random_"),
    "fp16_accumulation": (
        "                        acc[d] = acc[d] * correction + p * sV[j, d]\n",
        "                        acc[d] = (acc[d] * correction + p * sV[j, d]).to(cutlass.Float16).to(Float32)\n",
        "failed_correctness", "output error"),
    "hang": (
        "        for n_block in cutlass.range(cute.ceil_div(n_keys, TILE_N)):\n",
        "        for n_block in cutlass.range(cute.ceil_div(n_keys, TILE_N) + 2000000000):  # bug: never ends\n",
        "timeout", "killed after"),
    # issue 10, class 3: exp2 of raw scores, no max subtracted. N(0,1) logits pass; the "large" inputs
    # (logits of std ~64) overflow fp32 to inf and the output to NaN.
    "softmax_without_running_max": (
        "                    new_max = cutlass.max(row_max, s)\n",
        "                    new_max = Float32(0.0)  # bug: no running max, exp2 of the raw scores\n",
        "failed_correctness", "large inputs"),
    # class 4: a fully masked row (causal, seqlen_q > seqlen_k, bottom-right) must have LSE -inf.
    "lse_plus_inf_on_masked_rows": (
        "            lse = -Float32.inf\n",
        "            lse = Float32.inf  # bug: +inf where the reference is -inf\n",
        "failed_correctness", "LSE"),
    # class 5: K/V addressed through one flat row index whose batch stride counts seqlen_q rows:
    # right on contiguous inputs with seqlen_q == seqlen_k (every timed config), wrong on the b2
    # q140 k100 and b3 q77 k333 checks, and on non-contiguous ("strided") views of any shape.
    "kv_batch_stride_from_seqlen_q": (
        "                    k_val = mK[batch, key, head_kv, d].to(Float32)\n"
        "                    v_val = mV[batch, key, head_kv, d].to(Float32)\n",
        "                    kv_row = batch * seqlen_q + key  # bug: the K/V batch stride from seqlen_q\n"
        "                    k_val = mK[0, kv_row, head_kv, d].to(Float32)\n"
        "                    v_val = mV[0, kv_row, head_kv, d].to(Float32)\n",
        "failed_correctness", "output"),
    # class 6: the barrier after the compute is gone, so the next tile's load overwrites sK/sV while
    # other warps still read them. All warps do the same work, so outputs are mostly right; the
    # sanitizer stage's racecheck sees the shared-memory hazard on every run.
    "race_no_barrier_after_compute": (
        "                    row_max = new_max\n            cute.arch.sync_threads()\n",
        "                    row_max = new_max\n            # bug: no barrier before the next tile's load\n",
        "failed_sanitizer", "racecheck"),
    "illegal_address": (
        "                mO[batch, row, head, d] = (acc[d] * inv_sum).to(mO.element_type)\n",
        "                mO[batch, row + 100000000, head, d] = (acc[d] * inv_sum).to(mO.element_type)  # bug\n",
        "crashed", "CUDA error"),
}


# Kernels that are correct on every call but cheat the timing through GPU-side state left by an
# earlier call (issue 10, class 2): name -> patches (old, new), applied in order. The GPU test
# asserts, under the judge that poisons output/LSE buffers (NaN) before every timed call and checks
# timed outputs: evaluate(variant, suite="zoo") gives the same status as the honest naive kernel
# (its correctness ok, its timed outputs ok, geomean > 0), and its TFLOPS are within the measured
# noise of the honest kernel's in the same run (ratio vs the honest kernel as incumbent <= 1 + noise:
# no "gain"), i.e. skipping work never pays. Under the old judge it timed as a many-fold speedup.
STATE_CHEATS = {
    # When mO already holds a finite value at the CTA's first row (left by the previous timed
    # call on the same buffer), skip the K/V loop and leave the old output in place. The decision
    # reads one element per CTA so that every thread of the CTA takes the same branch.
    "skip_work_when_output_is_stale": [
        ("        row_max = -Float32.inf\n",
         "        stale = mO[batch, m_block * BLOCK_M, head, 0].to(Float32)\n"
         "        done_before = Int32(0)\n"
         "        if stale == stale:  # cheat: not the NaN poison, so an earlier call already wrote it\n"
         "            done_before = Int32(1)\n"
         "            n_keys = Int32(0)\n"
         "        row_max = -Float32.inf\n"),
        ("        if row_valid:\n",
         "        if row_valid and done_before == Int32(0):\n"),
    ],
}


# Wrong only where verification rarely looks, judged on LONG_SUITE: name -> (old, new, status, words).
# Verification checks every row of small inputs only; of a long one (q over 4M elements), the first
# and last 512 query rows, one window drawn at random (which lands on a given middle tile a few
# times in a hundred) and, since 2026-11-23, 512 rows drawn over the whole sequence (98% at 16k).
# The timed check draws 64 rows over the whole sequence of every launch.
LONG_SEQUENCE_VARIANTS = {
    # one middle tile of query rows does no work on long sequences: zeros (not the NaN poison) and
    # LSE -inf there, right everywhere else
    "one_middle_tile_skipped_on_long_sequences": (
        "        row_max = -Float32.inf\n",
        "        if (seqlen_q >= 8192) & (m_block == cute.ceil_div(seqlen_q, BLOCK_M) // 2 + 1):\n"
        "            n_keys = Int32(0)  # cheat: where the verifier's windows seldom look\n"
        "        row_max = -Float32.inf\n",
        "failed_correctness", "output error"),
    # four middle tiles do no work, but only where q's values are large (not standard normal): the
    # timed checks (standard normal inputs) never see it; verification's large-logit check of the
    # long config does, through its rows drawn over the sequence (a window lands there ~1 in 8)
    "middle_tiles_skipped_off_the_standard_normal": (
        "        row_max = -Float32.inf\n",
        "        middle = cute.ceil_div(seqlen_q, BLOCK_M) // 2\n"
        "        if (seqlen_q >= 8192) & (m_block >= middle) & (m_block < middle + 4):\n"
        "            probe = Float32(0.0)  # the CTA's first row, so every thread takes the same branch\n"
        "            for d in cutlass.range(4, unroll_full=True):\n"
        "                x = mQ[batch, m_block * BLOCK_M, head, d].to(Float32)\n"
        "                probe = probe + x * x\n"
        "            if probe > Float32(36.0):\n"
        "                n_keys = Int32(0)  # cheat: wrong only off the standard normal\n"
        "        row_max = -Float32.inf\n",
        "failed_correctness", "output error"),
    # the tiles of the grid's last, partial wave (on a 132-SM GPU) do no work when the grid has more
    # than one wave: the bug of a last-wave split (tail_kv_split) that never launches its tail,
    # right on every small input; the last tiles are the last query rows of the last head
    "last_partial_wave_skipped": (
        "        row_max = -Float32.inf\n",
        "        n_tiles = cute.ceil_div(seqlen_q, BLOCK_M) * mQ.shape[2] * mQ.shape[0]\n"
        "        tile = m_block + cute.ceil_div(seqlen_q, BLOCK_M) * (head + mQ.shape[2] * batch)\n"
        "        if (n_tiles > 132) & (tile >= n_tiles // 132 * 132):\n"
        "            n_keys = Int32(0)  # cheat: the last wave is never run\n"
        "        row_max = -Float32.inf\n",
        "failed_correctness", "output error"),
}
# Kernels that are right and as fast as the honest one on N(0, 1) inputs, and differ only on logits
# shaped like trained models' (an attention sink: key 0 far above the rest; avo.verify's
# LOGIT_PATTERNS): name -> (patches, expected status, words the diagnosis must contain). Wrong
# there: the correctness stage's "sink" inputs catch it, whatever its speed. Slower there: the
# judge times a would-be commit against its incumbent on those logits. The probe reads key 0's
# squared norm, the same for every thread of a CTA, not its exact values (the judge draws the
# sink's direction and strength afresh each time, avo.verify.SINK_NATS): N(0, 1) keys have about
# d, the "large" correctness inputs (q, k times 8) about 64 d, a sink at least 24^2 d.
_SINK_PROBE = (
    "        key0_norm2 = Float32(0.0)\n"
    "        for kd in cutlass.range(D, unroll_full=True):\n"
    "            x = mK[batch, 0, head_kv, kd].to(Float32)\n"
    "            key0_norm2 = key0_norm2 + x * x\n"
    "        if key0_norm2 > Float32(200.0 * D):\n")


def _loop_four_times_where(guard: str) -> list:
    """The patch that runs the whole K/V loop four times over where `guard` (statements setting
    `passes`, indented for the kernel body) says so; each pass starts afresh, so the output stays
    right and only the time differs."""
    return [("        row_max = -Float32.inf\n        row_sum = Float32(0.0)\n"
             "        for n_block in cutlass.range(cute.ceil_div(n_keys, TILE_N)):\n",
             "        passes = Int32(1)\n"
             f"{guard}"
             "        row_max = -Float32.inf\n        row_sum = Float32(0.0)\n"
             "        n_blocks = cute.ceil_div(n_keys, TILE_N)\n"
             "        for step in cutlass.range(n_blocks * passes):\n"
             "            n_block = step % n_blocks\n"
             "            if n_block == 0:  # each pass starts afresh: the last one's result stays\n"
             "                row_max = -Float32.inf\n"
             "                row_sum = Float32(0.0)\n"
             "                acc.fill(0.0)\n")]


SHAPED_LOGIT_VARIANTS = {
    # four passes where a sink stands out: a tie on N(0, 1), 0.25x on sink logits, the way a
    # softmax that skips work while each row's max holds pays for a late sink
    "slow_only_on_sink_logits": (
        _loop_four_times_where(
            f"{_SINK_PROBE}"
            "            passes = Int32(4)  # cheat: the work four times over where a sink key stands out\n"),
        "rejected", "sink logits"),
    # fast only on the judge's old, fixed sink (key 0 = 30 sqrt(d) along the first axis, before the
    # sink's direction was drawn per call): four passes where a sink stands out anywhere but there.
    # Against the fixed sink it was a tie; against a drawn one its first component holds ~1/d of
    # the norm, so it reads 0.25x (CPU: compiles; GPU: not yet run)
    "fast_only_on_the_fixed_sink": (
        _loop_four_times_where(
            "        first = mK[batch, 0, head_kv, 0].to(Float32)\n"
            f"{_SINK_PROBE}"
            "            if first * first < Float32(0.99) * key0_norm2:\n"
            "                passes = Int32(4)  # cheat: slow on every sink but the one the judge drew\n"),
        "rejected", "sink logits"),
    # the sink key itself left out where it stands out: right on N(0, 1), large, peaked and strided
    # inputs, wrong on sink ones
    "wrong_only_on_sink_logits": (
        [("        row_max = -Float32.inf\n",
          "        first_key = Int32(0)\n"
          f"{_SINK_PROBE}"
          "            first_key = Int32(1)  # cheat: the sink key dropped where it stands out\n"
          "        row_max = -Float32.inf\n"),
         ("                if key <= last_key:\n",
          "                if (key <= last_key) & (key >= first_key):\n")],
        "failed_correctness", "sink inputs"),
}
LONG_SUITE = """name: zoo_long
dtype: fp16
head_dim: 64
tokens: 16384
seqlens: [16384]
causal: [false]
heads: [[8, 8]]
"""


def make_variant(name: str, directory: Path) -> Path:
    if name in STATE_CHEATS:
        patches = STATE_CHEATS[name]
    elif name in SHAPED_LOGIT_VARIANTS:
        patches = SHAPED_LOGIT_VARIANTS[name][0]
    else:
        patches = [(VARIANTS.get(name) or LONG_SEQUENCE_VARIANTS[name])[:2]]
    text = jit.render("naive_attention").read_text()
    for old, new in patches:
        if text.count(old) != 1:
            raise AssertionError(f"zoo variant {name}: its patch point is gone from the naive template")
        text = text.replace(old, new)
    path = Path(directory) / f"zoo_{name}.py"
    path.write_text(text)
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
