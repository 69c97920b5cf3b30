"""The cascade's CPU-side parts: fitness, the commit rule on the paired estimate's interval, static
checks, and the whole cascade in compile-only mode."""

import math

import pytest

from avo import jit
from avo.evaluate import Verdict, apply_commit_rule, evaluate, geomean, static_check
from avo.stats import COMMIT_TOLERANCE


def test_geomean_is_zero_on_any_failure():
    assert geomean([100.0, 400.0]) == pytest.approx(200.0)
    assert geomean([500.0, 0.0, 600.0]) == 0.0 and geomean([]) == 0.0
    assert geomean([2.0] * 7) == pytest.approx(2.0)


def _measured(lo: float, hi: float, ratio: float | None = None) -> Verdict:
    ratio = ratio if ratio is not None else math.sqrt(lo * hi)
    return Verdict("measured", "benchmark", scores={"a": 500.0, "b": 400.0}, incumbent_scores={"a": 490.0, "b": 400.0},
                   estimate={"ratio": ratio, "ratio_ci": [lo, hi], "pairs": 32, "excluded": 1, "per_config": {}})


@pytest.mark.parametrize("lo, hi, status, gain", [
    (0.997, 1.003, "committed", False),  # a tie within the tolerance is "not slower"
    (1.0 - COMMIT_TOLERANCE, 1.01, "committed", False),  # the boundary itself clears it
    (0.994, 1.002, "rejected", False),  # might be more than the tolerance slower: not shown, not committed
    (0.980, 0.990, "rejected", False),  # slower beyond doubt
    (1.004, 1.012, "committed", True),  # the whole interval above 1: a gain
])
def test_commit_rule_is_on_the_confidence_interval(lo, hi, status, gain):
    verdict = _measured(lo, hi)
    apply_commit_rule(verdict)
    assert (verdict.status, verdict.gain) == (status, gain)
    assert verdict.ratio_ci == [lo, hi] and verdict.noise == pytest.approx((hi - lo) / 2)
    assert verdict.geomean == pytest.approx(math.sqrt(500.0 * 400.0))
    assert f"[{lo:.4f}, {hi:.4f}]" in verdict.diagnosis
    assert COMMIT_TOLERANCE == 0.005


def test_a_raised_commit_bar_is_what_the_interval_must_clear_and_the_diagnosis_says_so():
    """Against an incumbent committed at 0.996 of the best so far the bar is 0.995 / 0.996: a tie
    0.9978x [0.9952, 1.0003] commits at the bare tolerance and is rejected there. The GPU-seen
    0.9959x [0.9950, 0.9965] is rejected even at the bare tolerance: its interval shows a loss."""
    bar = (1 - COMMIT_TOLERANCE) / 0.996
    bare, raised = _measured(0.9952, 1.0003, ratio=0.9978), _measured(0.9952, 1.0003, ratio=0.9978)
    apply_commit_rule(bare)
    apply_commit_rule(raised, bar)
    assert (bare.status, bare.commit_bar) == ("committed", 0.995)
    assert bare.diagnosis.endswith("0.9978x [0.9952, 1.0003] (1 excluded) the incumbent (commit; tolerance 0.5%)")
    slower = _measured(0.9950, 0.9965, ratio=0.9959)
    apply_commit_rule(slower)
    assert slower.status == "rejected" and slower.diagnosis.endswith(
        "0.9959x [0.9950, 0.9965] (1 excluded) the incumbent (reject; shown slower: the upper bound is below 1; "
        "tolerance 0.5% is for ties)")
    assert (raised.status, raised.commit_bar) == ("rejected", pytest.approx(0.99900, abs=1e-5))
    assert ("the incumbent (reject, still open at the sampling cap; lower bound below the commit bar 0.9990: the "
            "incumbent is 0.9960 of the best so far, tolerance 0.5% of the best)") in raised.diagnosis
    gain = _measured(1.0005, 1.0030)
    apply_commit_rule(gain, bar)
    assert (gain.status, gain.gain) == ("committed", True) and "(commit, a gain; clears the commit bar 0.9990" \
        in gain.diagnosis
    with pytest.raises(ValueError, match="below 1 - COMMIT_TOLERANCE"):  # never more lenient than a tie
        apply_commit_rule(_measured(0.99, 1.0), 0.99)


@pytest.mark.parametrize("sink_ci, status", [
    ((0.60, 0.70), "rejected"),  # a cliff on sink logits, whatever N(0, 1) shows
    ((0.88, 0.95), "committed"),  # might be above the floor: the few pattern rounds decide nothing
    ((0.96, 0.99), "committed"),  # a little slower there, for a gain on the rest
])
def test_a_commit_must_keep_its_speed_on_shaped_logits(sink_ci, status):
    """The judge also times candidate and incumbent on sink and rising-maximum logits; a commit
    whose interval there lies wholly below PATTERN_FLOOR is rejected, and the diagnosis says on
    which pattern and by how much."""
    from avo.evaluate import PATTERN_FLOOR

    verdict = _measured(1.004, 1.012)
    verdict.patterns = {"rising": {"ratio": 1.0, "ratio_ci": [0.99, 1.01], "per_config": {}},
                        "sink": {"ratio": sum(sink_ci) / 2, "ratio_ci": list(sink_ci), "per_config": {}}}
    apply_commit_rule(verdict)
    assert verdict.status == status and PATTERN_FLOOR == 0.90
    if status == "rejected":
        assert not verdict.gain
        assert verdict.diagnosis.startswith("sink logits: 0.6500x [0.6000, 0.7000] the incumbent, below the floor 0.90")
        assert verdict.diagnosis.endswith("on N(0, 1): 1.0080x [1.0040, 1.0120] (1 excluded)")
    slower = _measured(0.98, 0.99)  # a reject stays a reject, with its own diagnosis
    slower.patterns = verdict.patterns
    apply_commit_rule(slower)
    assert slower.status == "rejected" and slower.diagnosis.endswith("the incumbent (reject; tolerance 0.5%)")
    assert Verdict.from_dict(verdict.as_dict()).patterns == verdict.patterns


def test_shaped_logits_put_each_pattern_where_it_says():
    """verify.shape_logits on N(0, 1) q, k (sequence at dim -3, any leading dims: the timing's
    stacked input sets): the sink takes every row's whole softmax; rising and falling move each
    row's largest logits toward the first and the last keys; deterministic for one generator state;
    the sink's direction and strength differ between draws (nothing exact to recognise it by);
    unknown names refused."""
    import torch

    from avo.verify import LOGIT_PATTERNS, SINK_NATS, shape_logits

    def logits(pattern, sink_seed=7):
        g = torch.Generator().manual_seed(3)
        q, k = torch.randn(2, 1, 64, 2, 32, generator=g), torch.randn(2, 1, 512, 2, 32, generator=g)
        shape_logits(q, k, pattern, torch.Generator().manual_seed(sink_seed))
        return torch.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(32), k

    assert LOGIT_PATTERNS == ("sink", "rising", "falling") and SINK_NATS == (24.0, 40.0)
    sink, k = logits("sink")
    assert float(torch.softmax(sink, -1)[..., 0].min()) > 0.999999
    strength = sink[..., 0]  # per KV head, within SINK_NATS, the same for every query of a head
    assert SINK_NATS[0] - 1e-3 < float(strength.min()) and float(strength.max()) < SINK_NATS[1] + 1e-3
    heads_differ = float((strength[..., 0, :] - strength[..., 1, :]).abs().max())
    assert float((strength - strength[..., :1]).abs().max()) < 1e-3 < heads_differ
    assert float((sink[..., 0] - sink[..., 1:].amax(-1)).min()) > SINK_NATS[0] - 6
    assert torch.equal(sink, logits("sink")[0])
    other, other_k = logits("sink", sink_seed=8)  # another draw: another direction and strengths
    assert float((other[..., 0] - sink[..., 0]).abs().max()) > 0.1
    cosine = torch.nn.functional.cosine_similarity(k[0, 0, 0, 0], other_k[0, 0, 0, 0], dim=0)
    assert float(cosine.abs()) < 0.9
    first, last = slice(0, 128), slice(384, 512)
    for pattern, high, low in (("rising", first, last), ("falling", last, first)):
        s = logits(pattern)[0]
        assert float(s[..., high].std() / s[..., low].std()) > 2.5, pattern
        assert float((s.argmax(-1).float() - 255.5).abs().mean()) > 128, pattern  # maxima at the high end
        assert torch.equal(s, logits(pattern)[0])
    assert torch.equal(logits("normal")[0], logits("normal")[0])
    with pytest.raises(ValueError, match="unknown logit pattern 'spiky'"):
        shape_logits(torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8), "spiky")


def test_correctness_draws_sink_inputs_too():
    """A kernel wrong only on an attention sink fails the correctness stage, whatever its speed:
    "sink" is one of its input kinds, every small config gets it, and its inputs put key 0 above
    every other key of every row, in every GQA group."""
    import torch

    from avo.suites import ShapeConfig
    from avo.verify import INPUT_KINDS, random_inputs

    assert INPUT_KINDS[-1] == "sink" and len(INPUT_KINDS) == 5
    config = ShapeConfig("c", 2, 40, 300, 8, 2, 64, False, "fp16")
    q, k, _v = random_inputs(config, 5, device="cpu", kind="sink")
    kk = k.float().repeat_interleave(4, dim=2)  # each query head against its KV head
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) / 8
    assert float(torch.softmax(s, -1)[..., 0].min()) > 0.999999
    _, normal_k, _ = random_inputs(config, 5, device="cpu")
    assert float(normal_k.float().abs().max()) < 10 < float(k.float().abs().max())


def test_the_patterns_are_timed_on_one_config_per_specialization():
    from avo.judge import pattern_configs
    from avo.suites import load_suite

    timed = load_suite("paper").timed
    picked = pattern_configs(timed)
    assert len(picked) == len({c.spec for c in timed}) == 6
    assert {c.spec for c in picked} == {c.spec for c in timed}
    for c in picked:  # the median by FLOPs of its spec's configs
        own = sorted(x.flops for x in timed if x.spec == c.spec)
        assert c.flops == own[len(own) // 2]


def test_the_judge_estimates_each_pattern_from_its_own_paired_rounds():
    """judge._time_patterns on a stand-in for avo.timing (the sampler itself needs a GPU): one
    measurement per pattern, of the configs given, with the pattern passed on; each pattern's
    ratio is the paired estimate of its own rounds; throttled rounds that leave too few pairs
    fall back to every pair."""
    from types import SimpleNamespace

    from avo import stats
    from avo.judge import PATTERN_ROUNDS, _time_patterns
    from avo.timing import Measurement
    from avo.verify import LOGIT_PATTERNS

    calls = []
    slowdown = {"sink": 2.0, "rising": 1.0, "falling": 1.25}

    def measure(configs, kernels, baselines, min_rounds, max_rounds, block, telemetry, pattern):
        calls.append((tuple(c.name for c in configs), pattern, min_rounds, max_rounds, baselines))
        m = Measurement()
        for i, c in enumerate(configs):
            base = [1.0 + 0.01 * r for r in range(PATTERN_ROUNDS)]
            m.times[c.name] = {"incumbent": base, "candidate": [t * slowdown[pattern] for t in base]}
            m.flags[c.name] = [i == 0] * PATTERN_ROUNDS  # the first config's rounds all throttled
        return m

    configs = [SimpleNamespace(name="x"), SimpleNamespace(name="y")]
    fake = SimpleNamespace(measure=measure)
    out = _time_patterns(fake, stats, configs, {"candidate": {}, "incumbent": {}}, None)
    assert [c[1] for c in calls] == list(LOGIT_PATTERNS) and PATTERN_ROUNDS == 4
    assert all(c[0] == ("x", "y") and c[2:] == (4, 4, ()) for c in calls)
    assert out["sink"]["ratio"] == pytest.approx(0.5) and out["falling"]["ratio"] == pytest.approx(0.8)
    assert out["rising"]["ratio"] == pytest.approx(1.0) and set(out["sink"]["per_config"]) == {"x", "y"}


def test_without_an_incumbent_the_first_correct_kernel_commits():
    verdict = Verdict("measured", "benchmark", scores={"a": 300.0}, vs_baselines={"fa4": {"ratio": 0.97,
                                                                                          "ratio_ci": [0.96, 0.98]}})
    apply_commit_rule(verdict)
    assert verdict.status == "committed" and verdict.ratio is None
    assert "0.9700x fa4 [0.9600, 0.9800]" in verdict.diagnosis


def test_a_verdict_with_unknown_fields_is_refused():
    with pytest.raises(ValueError, match="unknown verdict fields"):
        Verdict.from_dict({"status": "committed", "stage": "done", "forged": True})


@pytest.mark.parametrize("line, message", [
    ("import torch", "import of 'torch'"),
    ("import os", "import of 'os'"),
    ("from avo import timing", "import from 'avo'"),
    ("import threading", "import of 'threading'"),
    ("x = eval('1')", "name 'eval'"),
    ("f = open('/tmp/x')", "name 'open'"),
    ("g = math.__dict__", "__dict__"),
])
def test_static_check_rejects_what_could_game_the_harness(line, message):
    text = jit.render("naive_attention").read_text() + "\n" + line + "\n"
    ok, why = static_check(text)
    assert not ok and message in why


def test_static_check_accepts_the_templates_and_needs_an_entry():
    for template in ("naive_attention", "flash_fwd_sm90"):
        assert static_check(jit.render(template).read_text()) == (True, "")
    assert static_check("import math\nX = 1\n") == (False, "line 1: the module does not assign KERNEL (the kernel "
                                                           "class) at top level")
    assert static_check("def f(:\n")[1].startswith("line 1: syntax error")


def test_compile_only_cascade_screens_and_reports(tmp_path):
    verdict = evaluate(jit.render("naive_attention"), suite="tiny", archs=("sm_90a", "sm_100a"), compile_only=True)
    assert verdict.status == "screened" and verdict.stage == "compile" and verdict.compile_only
    assert set(verdict.compile_reports) == {"sm_90a", "sm_100a"}
    for per_spec in verdict.compile_reports.values():
        assert len(per_spec) == 4 and all(r["registers"] > 0 for r in per_spec.values())
    assert verdict.geomean == 0.0 and verdict.scores == {}


def test_cascade_records_compile_failures_with_the_line(tmp_path):
    text = jit.render("naive_attention").read_text().replace("row_sum = row_sum * correction + p",
                                                             "row_sum = row_sum * correction + q_missing")
    path = tmp_path / "broken.py"
    path.write_text(text)
    verdict = evaluate(path, suite="tiny", archs=("sm_90a",), compile_only=True)
    line = 1 + text.splitlines().index(next(ln for ln in text.splitlines() if "q_missing" in ln))
    assert verdict.status == "failed_compile" and f"broken.py:{line}" in verdict.diagnosis
    assert not math.isnan(verdict.timing["total"])


def test_static_failure_never_starts_a_worker(tmp_path):
    path = tmp_path / "cheat.py"
    path.write_text("import torch\nKERNEL = None\n")
    verdict = evaluate(path, suite="tiny", compile_only=True)
    assert verdict.status == "failed_compile" and verdict.stage == "static"
    assert "import of 'torch'" in verdict.diagnosis


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """evaluate() past the compile stage on a CPU: an sm_90a 'GPU', compiles that succeed, and a
    judge whose answer the test chooses."""
    from types import SimpleNamespace

    from avo import evaluate as evaluate_module
    from avo.worker import WorkerResult

    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")
    monkeypatch.setattr(jit, "compile_many", lambda source, specs, archs, **kw: {
        (spec, arch): SimpleNamespace(report={"registers": 168}, artifact_dir=tmp_path / spec.key())
        for arch in archs for spec in specs})
    answer = {}

    def judge(function, args, **kw):
        answer.setdefault("_args", []).append(args)  # what the judge was asked: tests read it back
        return WorkerResult("ok", value={k: v for k, v in answer.items() if k != "_args"})

    monkeypatch.setattr(evaluate_module, "run_isolated", judge)
    return answer


@pytest.mark.parametrize("answer, incumbent, status", [
    ({"status": "committed", "stage": "done", "scores": {"a": 900.0}}, True, "crashed"),  # the judge cannot commit
    ({"status": "screened", "stage": "correctness"}, True, "crashed"),  # nor skip the timing unasked
    ({"status": "measured", "stage": "benchmark", "scores": {"a": 900.0}}, True, "crashed"),  # an incumbent, no ratio
    ({"status": "measured", "stage": "benchmark", "scores": {"a": 500.0}, "incumbent_scores": {"a": 490.0},
      "estimate": {"ratio": 1.02, "ratio_ci": [1.01, 1.03], "pairs": 16, "excluded": 0}}, True, "committed"),
    ({"status": "measured", "stage": "benchmark", "scores": {"a": 500.0}}, False, "committed"),
])
def test_only_the_parent_decides_a_commit(fake_gpu, answer, incumbent, status):
    fake_gpu.update(answer)
    seed = jit.render("naive_attention")
    verdict = evaluate(seed, suite="tiny", incumbent=seed if incumbent else None, sanitize=False)
    assert verdict.status == status, verdict.diagnosis
    if status == "crashed":
        assert "harness error: the judge answered" in verdict.diagnosis


def test_the_commit_bar_reaches_the_judges_sampling_and_the_decision(fake_gpu):
    """evaluate(commit_bar=...) steers both the judge's adaptive sampling (it stops once the interval
    is clear of the bar) and the decision; without one both use 1 - COMMIT_TOLERANCE."""
    fake_gpu.update({"status": "measured", "stage": "benchmark", "scores": {"a": 500.0},
                     "incumbent_scores": {"a": 502.0},
                     "estimate": {"ratio": 0.998, "ratio_ci": [0.9955, 1.0005], "pairs": 16, "excluded": 0}})
    seed = jit.render("naive_attention")
    fresh = evaluate(seed, suite="tiny", incumbent=seed, sanitize=False)
    raised = evaluate(seed, suite="tiny", incumbent=seed, sanitize=False, commit_bar=0.999)
    assert [a["sampling"]["commit_bar"] for a in fake_gpu["_args"]] == [0.995, 0.999]
    assert (fresh.status, raised.status) == ("committed", "rejected")
    assert "lower bound below the commit bar 0.9990" in raised.diagnosis
    with pytest.raises(ValueError, match="below 1 - COMMIT_TOLERANCE"):
        evaluate(seed, suite="tiny", incumbent=seed, commit_bar=0.99)


def test_the_paired_ratio_of_each_config_reaches_the_node_and_the_eval_table():
    """A commit's geomean can hide one config's loss (issue 13's GQA transfer committed a tie 5% slower
    on one config): each config's paired ratio and interval go on the node and into avo.eval's table."""
    from avo.eval import format_verdict
    from avo.lineage import Candidate

    verdict = _measured(0.997, 1.003, ratio=1.0)
    verdict.estimate["per_config"] = {"a": {"ratio": 1.02, "lo": 1.01, "hi": 1.03, "pairs": 16, "excluded": 0},
                                      "b": {"ratio": 0.95, "lo": 0.94, "hi": 0.96, "pairs": 16, "excluded": 1}}
    apply_commit_rule(verdict)
    node = Candidate(id="v0001")
    verdict.apply_to(node)
    assert node.extra["per_config"]["b"] == {"ratio": 0.95, "lo": 0.94, "hi": 0.96, "pairs": 16, "excluded": 1}
    lines = format_verdict(verdict).splitlines()
    row_b = next(line for line in lines if line.strip().startswith("b "))
    assert "paired vs incumbent [95% CI]" in next(line for line in lines if "(TFLOPS)" in line)
    assert row_b.endswith("0.9500 [0.9400, 0.9600]") and "400.0" in row_b
