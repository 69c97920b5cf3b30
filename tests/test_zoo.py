"""The cascade against the zoo of broken kernels: every one rejected with the right diagnosis, and a
correct kernel evaluated normally right after each (GPU); on the CPU, each variant passes the static
checks and compiles, so only the GPU stages can catch it."""

import pytest

from avo import jit
from avo.evaluate import evaluate
from avo.spec import AttentionSpec
from avo.static_check import check
from tests.zoo import (
    LONG_SEQUENCE_VARIANTS,
    LONG_SUITE,
    SHAPED_LOGIT_VARIANTS,
    STATE_CHEATS,
    VARIANTS,
    caching_wrapper,
    make_variant,
    side_stream_wrapper,
)

CPU_COMPILED = ["right_only_on_the_suite_shapes", "wrong_last_tile", "fp16_accumulation", "side_stream_launch",
                "illegal_address",
                "softmax_without_running_max", "lse_plus_inf_on_masked_rows", "kv_batch_stride_from_seqlen_q",
                "race_no_barrier_after_compute", *STATE_CHEATS, *LONG_SEQUENCE_VARIANTS, *SHAPED_LOGIT_VARIANTS]


@pytest.mark.parametrize("name", sorted(VARIANTS) + sorted(STATE_CHEATS) + sorted(LONG_SEQUENCE_VARIANTS)
                         + sorted(SHAPED_LOGIT_VARIANTS))
def test_variant_passes_static_checks(name, tmp_path):
    path = make_variant(name, tmp_path)
    assert check(path.read_text()) == (True, "")


@pytest.mark.parametrize("name", CPU_COMPILED)
def test_variant_compiles_so_only_the_gpu_can_catch_it(name, tmp_path):
    kernel = jit.compile_kernel(make_variant(name, tmp_path), AttentionSpec(head_dim=64, causal=True),
                                arch="sm_90a", run=False)
    assert kernel.report["registers"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_zoo_variant_is_rejected_and_the_next_kernel_is_fine(name, tmp_path):
    _old, _new, status, words = VARIANTS[name]
    verdict = evaluate(make_variant(name, tmp_path), suite="zoo", timeout_s=90 if name == "hang" else 300)
    assert verdict.status == status, verdict.diagnosis
    assert words in verdict.diagnosis, verdict.diagnosis
    assert verdict.geomean == 0.0
    good = evaluate(jit.render("naive_attention"), suite="zoo", stop_after="correctness", timeout_s=300)
    assert good.status == "screened" and good.correctness["ok"], good.diagnosis


@pytest.mark.gpu
@pytest.mark.parametrize("wrapper, words", [(caching_wrapper, "output error"), (side_stream_wrapper, "output error")])
def test_callable_level_cheats_fail_verification(wrapper, words):
    from avo import verify
    from avo.suites import load_suite

    suite = load_suite("zoo")
    config = next(c for c in suite.timed if not c.causal)
    kernel = jit.compile_kernel(jit.render("naive_attention"), config.spec)
    assert verify.check(kernel.fn, [config], seeds=2)["ok"]  # the honest kernel passes
    result = verify.check(wrapper(kernel.fn), [config], seeds=2)
    assert not result["ok"] and words in result["diagnosis"], result["diagnosis"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(STATE_CHEATS))
def test_a_kernel_that_reuses_a_previous_output_gains_nothing(name, tmp_path):
    """Every timed call's buffers are poisoned first, so the cheat never finds an output to reuse:
    it is correct, does all its work, and the paired estimate against the honest kernel shows no gain."""
    honest = jit.render("naive_attention")
    verdict = evaluate(make_variant(name, tmp_path), suite="zoo", incumbent=honest, sanitize=False, timeout_s=300)
    assert verdict.status in ("committed", "rejected"), verdict.diagnosis
    assert not verdict.gain and verdict.ratio_ci[0] < 1.0, verdict.diagnosis


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(LONG_SEQUENCE_VARIANTS))
def test_a_kernel_wrong_where_verification_seldom_looks_is_rejected(name, tmp_path):
    """Right on every small input and on the edge rows of a long one, wrong on middle tiles (always,
    or only off the standard normal, where the timed checks never look): verification's rows drawn
    over the sequence reject it, else the timed check (random rows of every launch) does; either way
    as a wrong output."""
    _old, _new, status, words = LONG_SEQUENCE_VARIANTS[name]
    suite = tmp_path / "zoo_long.yaml"
    suite.write_text(LONG_SUITE)
    verdict = evaluate(make_variant(name, tmp_path), suite=str(suite), sanitize=False, timeout_s=300)
    assert verdict.status == status, verdict.diagnosis
    assert words in verdict.diagnosis and verdict.geomean == 0.0, verdict.diagnosis
    honest = evaluate(jit.render("naive_attention"), suite=str(suite), sanitize=False, timeout_s=300)
    assert honest.status == "committed" and honest.geomean > 0, honest.diagnosis  # fair suite; no incumbent


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SHAPED_LOGIT_VARIANTS))
def test_a_kernel_that_differs_only_on_shaped_logits_is_not_committed(name, tmp_path):
    """Right and a tie with the honest kernel on N(0, 1), and slower or wrong only on an attention
    sink: the correctness stage's sink inputs fail the wrong one, the judge's pattern stage (timed
    against the incumbent) turns the slow one's would-be commit into a reject; each diagnosis names
    the sink."""
    _patches, status, words = SHAPED_LOGIT_VARIANTS[name]
    honest = jit.render("naive_attention")
    verdict = evaluate(make_variant(name, tmp_path), suite="zoo", incumbent=honest, sanitize=False, timeout_s=300)
    assert verdict.status == status, verdict.diagnosis
    assert words in verdict.diagnosis, verdict.diagnosis
    if status == "rejected":
        sink = verdict.patterns["sink"]
        assert sink["ratio_ci"][1] < 0.5 and verdict.patterns["rising"]["ratio_ci"][1] > 0.9, verdict.patterns
        assert verdict.ratio_ci[1] >= 0.99, verdict.diagnosis  # no loss on N(0, 1): the patterns decided
    else:
        assert verdict.stage == "correctness", verdict.stage
