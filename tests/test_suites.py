"""Suite YAML: the paper's shapes expand exactly; bad suites are clear errors."""

import pytest

from avo.suites import SuiteError, load_suite


def test_paper_suite_is_the_avo_suite():
    suite = load_suite("paper")
    assert len(suite.timed) == 24  # (MHA 16 + GQA 32/8 + GQA 32/4) x 4 seqlens x causal/not
    for config in suite.timed:
        assert config.batch * config.seqlen_q == 32768 and config.head_dim == 128 and config.dtype == "bf16"
        assert (config.heads_q, config.heads_kv) in {(16, 16), (32, 8), (32, 4)}
    assert {c.seqlen_q for c in suite.timed} == {4096, 8192, 16384, 32768}
    assert sorted(s.key() for s in suite.specs) == sorted(
        f"bf16_d128_{m}_g{g}" for m in ("full", "causal") for g in (1, 4, 8))
    mha = {c.name: c for c in load_suite("mha").timed}
    big = mha["mha16x16_s16k_full"]
    assert big.batch == 2 and big.flops == 4 * 2 * 16 * 16384 * 16384 * 128
    assert mha["mha16x16_s16k_causal"].flops == big.flops / 2


def test_correctness_shapes_include_ragged_lengths():
    seqlens = {(c.seqlen_q, c.seqlen_k) for c in load_suite("mha").correctness}
    assert {(1, 1), (17, 17), (255, 1000), (1000, 255), (4097, 4097)} <= seqlens


@pytest.mark.parametrize("text, message", [
    ("name: x\nhead_dim: 128\ntokens: 1000\nseqlens: [300]\ncausal: [false]\nheads: [[16, 16]]\n", "not a multiple"),
    ("name: x\nhead_dim: 128\ntokens: 4096\nseqlens: [4096]\ncausal: [false]\nheads: [[16, 5]]\n", "multiple of KV"),
    ("name: x\nhead_dim: 100\ntokens: 4096\nseqlens: [4096]\ncausal: [false]\nheads: [[16, 16]]\n", "multiple of 8"),
    ("name: x\nheadim: 128\n", "unknown key"),
    ("name: [\n", "not valid YAML"),
])
def test_bad_suites_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))
    with pytest.raises(SuiteError, match="known suites are"):
        load_suite("no_such_suite")


@pytest.mark.parametrize("name", ["mha", "gqa", "paper", "quick", "hdim64", "hdim256", "tiny", "zoo"])
def test_every_gating_suite_checks_ragged_batches_both_ways_for_each_head_layout(name):
    """A K/V batch stride computed from seqlen_q, or a causal diagonal aligned top-left, passes any
    suite whose shapes have seqlen_q == seqlen_k or a single batch; every head layout must see both."""
    suite = load_suite(name)
    checks = suite.correctness
    for layout in {(c.heads_q // c.heads_kv, c.causal) for c in suite.timed + checks}:
        mine = [c for c in checks if (c.heads_q // c.heads_kv, c.causal) == layout and c.batch > 1]
        assert any(c.seqlen_q < c.seqlen_k for c in mine), (name, layout)
        assert any(c.seqlen_q > c.seqlen_k for c in mine), (name, layout)


def test_random_configs_are_ragged_both_ways_for_every_spec():
    import random

    from avo.suites import random_configs

    specs = load_suite("paper").specs
    drawn = random_configs(specs, random.Random(7))
    assert len(drawn) == 2 * len(specs)
    for spec in specs:
        mine = [c for c in drawn if c.spec == spec]  # the GQA ratio, causal flag, dtype and head_dim kept
        assert len(mine) == 2 and all(c.batch > 1 for c in mine)
        assert any(c.seqlen_q < c.seqlen_k for c in mine) and any(c.seqlen_q > c.seqlen_k for c in mine)
        assert all(1 <= min(c.seqlen_q, c.seqlen_k) and max(c.seqlen_q, c.seqlen_k) <= 1536 for c in mine)
    assert [c.name for c in drawn] != [c.name for c in random_configs(specs, random.Random(8))]
