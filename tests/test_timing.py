"""The timing sampler: what it hands the estimator (CPU), and what a kernel that games the timed
calls runs into (GPU): outputs poisoned before every sample, every timed output checked on random rows,
inputs regenerated in place so that a cache keyed on pointers goes stale."""

import pytest

from avo import timing
from avo.suites import load_suite
from avo.telemetry import HARD_THROTTLE, Telemetry


def test_measurement_pairs_and_medians_skip_flagged_rounds():
    m = timing.Measurement(times={"a": {"incumbent": [2.0, 2.2, 9.0], "candidate": [1.0, 1.1, 1.2]}},
                           flags={"a": [False, False, True]})
    assert m.pairs() == {"a": [(2.0, 1.0), (2.2, 1.1), (9.0, 1.2)]}  # flags travel beside, for the estimator
    assert m.median_ms("a", "incumbent") == pytest.approx(2.1)  # the throttled 9.0 is not in the median
    assert m.median_ms("a", "candidate") == pytest.approx(1.05)


def test_measurement_tflops_versus_and_the_peak_ceiling():
    config = load_suite("tiny").timed[0]
    m = timing.Measurement(times={config.name: {"candidate": [1.0, 1.0, 1.0], "fa4": [2.0, 2.0, 2.0],
                                                "cudnn": [3.0, 3.0, 3.0]}},
                           flags={config.name: [False, False, False]})
    m.times["other"] = {"candidate": [1.0], "fa4": [1.0]}  # cudnn missed this config: no ratio against it
    m.flags["other"] = [False]
    assert m.tflops([config])["fa4"][config.name] == pytest.approx(config.flops / 2e-3 / 1e12)
    versus = timing.Measurement(times={config.name: m.times[config.name]}, flags={config.name: [False] * 3}).versus(
        ["fa4", "cudnn"])
    assert versus["fa4"]["ratio"] == pytest.approx(2.0) and versus["cudnn"]["ratio"] == pytest.approx(3.0)
    assert "cudnn" not in m.versus(["cudnn"])
    assert timing.above_peak({"a": 500.0, "b": 980.0}, peak=989.4) == ""
    assert timing.above_peak({"a": 500.0, "b": 1200.0}, peak=989.4) == (
        "b: 1200 TFLOPS is above the chip's dense BF16 peak 989: a timing bug or skipped work")


def test_telemetry_flags_only_the_throttling_the_chip_does_to_itself():
    assert Telemetry.throttled({"reasons": 0x40}) and Telemetry.throttled({"reasons": 0x8})
    assert not Telemetry.throttled({"reasons": 0x4})  # the software power cap: both kernels of a pair see it
    assert Telemetry.power_capped({"reasons": 0x4}) and not Telemetry.throttled(None)
    assert HARD_THROTTLE == 0x8 | 0x20 | 0x40 | 0x80


@pytest.mark.parametrize("causal", [False, True])
def test_the_reference_on_scattered_rows_is_those_rows_of_the_full_reference(causal):
    # The timed check draws query rows over the whole sequence; the reference on those rows alone
    # must be the full reference's rows (causal: each row keeps its own diagonal, sq < sk aligned
    # bottom-right), in the order asked.
    import torch

    from avo.reference import reference_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 40, 4, 16, generator=gen), torch.randn(2, 56, 2, 16, generator=gen), \
        torch.randn(2, 56, 2, 16, generator=gen)
    full_out, full_lse = reference_attention(q, k, v, causal=causal, chunk=7)
    rows = torch.tensor([0, 3, 17, 18, 39, 25])
    out, lse = reference_attention(q, k, v, causal=causal, chunk=4, rows=rows)
    assert out.shape == (2, 6, 4, 16) and lse.shape == (2, 4, 6)
    torch.testing.assert_close(out, full_out[:, rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, full_lse[:, :, rows], rtol=1e-5, atol=1e-6)
    window_out, _ = reference_attention(q, k, v, causal=causal, rows=(5, 12))
    torch.testing.assert_close(window_out, full_out[:, 5:12], rtol=1e-5, atol=1e-6)


def _honest_kernel():
    from avo import jit

    config = next(c for c in load_suite("zoo").timed if not c.causal)
    kernel = jit.compile_kernel(jit.render("naive_attention"), config.spec, trusted=True)
    return config, kernel.fn


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", ["normal", "sink"])  # the judge's pattern stage samples the same way
def test_a_kernel_that_skips_work_once_warm_is_caught_while_timed(pattern):
    config, fn = _honest_kernel()
    calls = []

    def lazy(q, k, v, o, lse, scale):
        calls.append(1)
        if len(calls) <= 2:  # the warm-up and calibration calls do the work
            fn(q, k, v, o, lse, scale)

    with pytest.raises(timing.TimedOutputError, match="unwritten"):
        timing.measure([config], {"candidate": {config.spec: lazy}, "incumbent": {config.spec: fn}}, seed=1,
                       pattern=pattern)


@pytest.mark.gpu
def test_a_kernel_that_skips_work_on_the_inputs_it_is_timed_on_is_caught():
    # The candidate warms up and calibrates on the shared inputs, then is timed on input sets of its
    # own (so that its checks can wait for the round's end): a kernel could tell the two apart by
    # the pointers alone and skip its work on the timed ones. Every timed launch is still checked.
    config, fn = _honest_kernel()
    first = {}

    def pointer_watcher(q, k, v, o, lse, scale):
        if first.setdefault("q", q.data_ptr()) == q.data_ptr():  # only on the inputs it met first
            fn(q, k, v, o, lse, scale)

    with pytest.raises(timing.TimedOutputError, match="unwritten"):
        timing.measure([config], {"candidate": {config.spec: pointer_watcher}, "incumbent": {config.spec: fn}},
                       seed=12)


@pytest.mark.gpu
def test_a_kernel_that_serves_a_cached_output_is_caught_while_timed():
    import torch

    config, fn = _honest_kernel()
    cache = {}

    def stale(q, k, v, o, lse, scale):
        if "o" not in cache:
            fn(q, k, v, o, lse, scale)
            torch.cuda.synchronize()
            cache.update(o=o.clone(), lse=lse.clone())
        o.copy_(cache["o"])
        lse.copy_(cache["lse"])

    with pytest.raises(timing.TimedOutputError, match="output is wrong"):
        timing.measure([config], {"candidate": {config.spec: stale}, "incumbent": {config.spec: fn}}, seed=2)


@pytest.mark.gpu
def test_a_kernel_that_writes_its_inputs_is_caught_while_timed():
    config, fn = _honest_kernel()

    def vandal(q, k, v, o, lse, scale):
        fn(q, k, v, o, lse, scale)
        v.zero_()  # later calls see zeros: faster, and the output still matches inputs read afterwards

    with pytest.raises(timing.TimedOutputError, match="inputs changed"):
        timing.measure([config], {"candidate": {config.spec: vandal}, "incumbent": {config.spec: fn}}, seed=3)


@pytest.mark.gpu
def test_a_kernel_slow_only_on_shaped_logits_is_seen_there_and_not_on_normal_ones():
    """A candidate that does its work four times when a row's logits are far above the rest (as a
    softmax that skips work while the max holds pays when it does not): a tie on N(0, 1) inputs,
    under half the incumbent's speed on sink logits, its outputs checked on both."""
    from avo import stats

    config, fn = _honest_kernel()

    def probing(times_on_sink):
        # the probe's host sync costs the same on both sides (a probe on one side only read 0.73-0.80x
        # on N(0, 1), H100, 2026-11-23: the sync, not the work); only the repeats differ
        def run(q, k, v, o, lse, scale):
            repeats = times_on_sink if bool((k[:, 0].float().square().sum(-1).amax() > 200 * k.shape[-1]).item()) else 1
            for _ in range(repeats):
                fn(q, k, v, o, lse, scale)
        return run

    kernels = {"candidate": {config.spec: probing(4)}, "incumbent": {config.spec: probing(1)}}
    normal = stats.paired_ratio(timing.measure([config], kernels, min_rounds=6, seed=5).pairs())
    sink = timing.measure([config], kernels, min_rounds=6, seed=5, pattern="sink")
    assert normal.lo < 1.05 and normal.hi > 0.9
    # every round's candidate sample checked (min_rounds 6 rounds up to the first block of 8)
    assert stats.paired_ratio(sink.pairs()).hi < 0.5 and sink.checks == len(sink.pairs()[config.name]) == 8
    with pytest.raises(ValueError, match="unknown logit pattern"):
        timing.measure([config], kernels, pattern="spiky")


def test_crossover_trades_sets_buffers_and_bindings_of_the_pair_only():
    """cross(): in a crossed round the checked contender reads the shared input sets and its partner
    (with everyone else) the checked one's; the pair trade output buffers and launch counts; a
    repeated call changes nothing, uncrossing restores all; without a partner nothing moves."""
    state = object.__new__(timing._ConfigState)
    own, shared = ("q0", "k0", "v0"), ("q1", "k1", "v1")
    state.checked, state.partner, state.crossed = "candidate", "incumbent", False
    state.checked_stacks, state.stacks = own, shared
    state.contenders, state._crossed = {"bound": "plain"}, {"bound": "crossed"}
    state.buffers = {"candidate": ["out0"], "incumbent": ["out1"], "fa4": ["out2"]}
    state.turn = {"candidate": 5, "incumbent": 0, "fa4": 2}
    before = (dict(state.buffers), dict(state.turn))
    state.cross(False)
    assert state._stacks("candidate") is own and state._stacks("incumbent") is shared
    for _ in range(2):  # the second call is a no-op
        state.cross(True)
        assert state._stacks("candidate") is shared and state._stacks("incumbent") is own
        assert state._stacks("fa4") is own and state.contenders == {"bound": "crossed"}
        assert state.buffers == {"candidate": ["out1"], "incumbent": ["out0"], "fa4": ["out2"]}
        assert state.turn == {"candidate": 0, "incumbent": 5, "fa4": 2}
    state.cross(False)
    assert (state.buffers, state.turn) == before and state._stacks("candidate") is own
    assert state.contenders == {"bound": "plain"}
    state.partner = None
    state.cross(True)
    assert not state.crossed and state._stacks("candidate") is own


@pytest.mark.gpu
def test_crossover_lets_each_side_read_both_buffer_sets():
    """measure(crossover="incumbent"): over 8 rounds the candidate and the incumbent each read both
    physical input sets and wrote both output buffer sets, and every candidate sample is checked."""
    config, fn = _honest_kernel()
    seen = {"candidate": set(), "incumbent": set()}

    def recording(name):
        def run(q, k, v, o, lse, scale):
            seen[name].add((q.data_ptr(), o.data_ptr()))
            fn(q, k, v, o, lse, scale)
        return run

    kernels = {name: {config.spec: recording(name)} for name in seen}
    m = timing.measure([config], kernels, min_rounds=8, seed=6, crossover="incumbent")
    assert m.checks == 8 and len(m.pairs()[config.name]) == 8
    inputs = {name: {q for q, _ in pointers} for name, pointers in seen.items()}
    outputs = {name: {o for _, o in pointers} for name, pointers in seen.items()}
    assert inputs["candidate"] == inputs["incumbent"] and outputs["candidate"] == outputs["incumbent"]


@pytest.mark.gpu
def test_an_honest_pair_gives_paired_samples_and_checked_outputs():
    config, fn = _honest_kernel()
    m = timing.measure([config], {"candidate": {config.spec: fn}, "incumbent": {config.spec: fn}}, min_rounds=8,
                       seed=4)
    pairs = m.pairs()[config.name]
    assert len(pairs) == 8 and all(a > 0 and b > 0 for a, b in pairs)
    assert m.checks == 8 and m.launches[config.name] >= 1  # every candidate sample checked


@pytest.mark.gpu
def test_a_kernel_that_works_on_another_stream_while_timed_is_caught():
    import torch

    config, fn = _honest_kernel()
    side = torch.cuda.Stream()

    def elsewhere(q, k, v, o, lse, scale):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the events on the current stream see none of this
            for _ in range(20):
                fn(q, k, v, o, lse, scale)

    with pytest.raises(timing.TimedOutputError, match="another stream"):
        timing.measure([config], {"candidate": {config.spec: elsewhere}, "incumbent": {config.spec: fn}}, seed=5)


@pytest.mark.gpu
def test_a_slow_host_launch_path_is_not_timed():
    # The same kernel behind a launch path that takes the host 2 ms per call (a Python-heavy
    # interface, as FA4's): after the device sync of every sample the GPU would idle while the host
    # enqueues, and that gap would be timed. The GPU spin ahead of each sample must hide it.
    import time as _time

    from avo import stats

    config, fn = _honest_kernel()

    def slow_host(q, k, v, o, lse, scale):
        _time.sleep(0.002)
        fn(q, k, v, o, lse, scale)

    m = timing.measure([config], {"candidate": {config.spec: slow_host}, "incumbent": {config.spec: fn}},
                       min_rounds=16, block=16, seed=6)
    est = stats.paired_ratio(m.pairs(), flags=m.flags)
    assert 0.98 < est.ratio < 1.02, est.format()


def test_the_check_covers_every_launch_of_the_last_sample():
    # 64 buffers, 64 launches a sample, 130 launches so far: the last sample wrote buffers 2..63, 0, 1
    assert timing.last_sample_buffers(130, 64, 64) == [*range(2, 64), 0, 1]
    assert timing.last_sample_buffers(7, 1, 3) == [0]  # one launch a sample: its buffer only
    assert len(set(timing.last_sample_buffers(5, 3, 3))) == 3


@pytest.mark.gpu
def test_a_kernel_that_skips_one_launch_in_ten_is_caught_while_timed():
    config, fn = _honest_kernel()
    calls = []

    def sometimes(q, k, v, o, lse, scale):
        calls.append(1)
        if len(calls) <= 2 or len(calls) % 10:  # warm-up and calibration do the work; then 9 in 10
            fn(q, k, v, o, lse, scale)

    with pytest.raises(timing.TimedOutputError, match="unwritten"):
        timing.measure([config], {"candidate": {config.spec: sometimes}, "incumbent": {config.spec: fn}}, seed=7)


@pytest.mark.gpu
def test_no_two_timed_launches_read_the_same_inputs():
    # A kernel may fingerprint its inputs (a few values read on the device) and copy an output made
    # for the same values before: its own, or the incumbent's from a buffer at a fixed offset. The
    # inputs are new before every sample, and every launch of a short config's sample has a set of
    # its own, so no two timed launches of the measurement, of one contender or of both, share them.
    import torch

    config, fn = _honest_kernel()
    prints = {"candidate": [], "incumbent": []}

    def fingerprinting(name):
        def run(q, k, v, o, lse, scale):
            prints[name].append((q.data_ptr(), *(float(t.float().sum()) for t in (q, k, v))))
            fn(q, k, v, o, lse, scale)
        return run

    m = timing.measure([config], {name: {config.spec: fingerprinting(name)} for name in prints}, min_rounds=8,
                       seed=8)
    torch.cuda.synchronize()
    n = m.launches[config.name]
    assert n > 1  # a short config: several launches a sample, the case this guards
    timed = [p for name in prints for p in prints[name][3:]]  # past each one's three calibration calls
    assert len(timed) == 2 * 8 * n
    assert len({p[1:] for p in timed}) == len(timed)  # no two launches read the same values
    for name in prints:  # n input sets of each one's, the same pointers every sample
        assert len({p[0] for p in prints[name][3:]}) == n
    assert m.checks == 8


@pytest.mark.gpu
def test_the_candidate_is_checked_after_the_rounds_last_sample(monkeypatch):
    # Checked right after its own sample, the candidate left the GPU idle before the next sample,
    # never its own, which then ran from a cooler start: an A/A judge read a kernel 0.25% slower
    # than itself. Its checks (the reference's rows) now come after every contender of the round.
    from avo import verify

    config, fn = _honest_kernel()
    log = []

    def logged(name):
        def run(q, k, v, o, lse, scale):
            log.append(name)
            fn(q, k, v, o, lse, scale)
        return run

    reference = verify.reference
    monkeypatch.setattr(verify, "reference", lambda *a, **kw: (log.append("check"), reference(*a, **kw))[1])
    names = ("candidate", "incumbent", "other")
    m = timing.measure([config], {name: {config.spec: logged(name)} for name in names}, min_rounds=8, seed=9)
    n = m.launches[config.name]
    timed = log[3 * 3:]  # past each one's three calibration calls
    rounds = [timed[i:i + 3 * n + 1] for i in range(0, len(timed), 3 * n + 1)]
    assert len(rounds) == 8 and m.checks == 8
    for r in rounds:
        assert r[-1] == "check" and sorted(r[:-1]) == sorted(names * n)
    assert len({r[0] for r in rounds}) > 1  # the order is drawn every round


@pytest.mark.gpu
def test_a_kernel_wrong_on_one_tile_in_sixteen_is_caught_while_timed():
    # Skipped work that leaves no NaN: the output is right except for one 32-row tile in sixteen,
    # zeroed, in every launch after the calibration. A window check once per block would miss it most
    # of the time; random rows of every launch find it.
    config, fn = _honest_kernel()
    calls = []
    tile = config.seqlen_q // 16

    def partial(q, k, v, o, lse, scale):
        calls.append(1)
        fn(q, k, v, o, lse, scale)
        if len(calls) > 3:  # past the warm-up and calibration calls
            o[:, 5 * tile:6 * tile].zero_()

    with pytest.raises(timing.TimedOutputError, match="output is wrong"):
        timing.measure([config], {"candidate": {config.spec: partial}, "incumbent": {config.spec: fn}}, seed=9)


@pytest.mark.gpu
def test_work_moved_to_another_stream_in_some_samples_is_timed_anyway():
    # The kernel runs on a side stream (which the end event does not wait for) in one sample of
    # three: too few to fail it, and each such sample would read near zero. A sample whose device
    # is still busy after its end event is timed until the device is idle, so it gains nothing.
    import torch

    from avo import stats

    config, fn = _honest_kernel()
    side = torch.cuda.Stream()
    calls = []

    def now_and_then(q, k, v, o, lse, scale):
        calls.append(1)
        if len(calls) > 3 and (len(calls) // launches[0]) % 3 == 0:  # whole samples, one in three
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(4):
                    fn(q, k, v, o, lse, scale)
        else:
            fn(q, k, v, o, lse, scale)

    launches = [1]
    probe = timing.measure([config], {"candidate": {config.spec: fn}, "incumbent": {config.spec: fn}},
                           min_rounds=1, block=1, seed=10)
    launches[0] = probe.launches[config.name]
    m = timing.measure([config], {"candidate": {config.spec: now_and_then}, "incumbent": {config.spec: fn}},
                       min_rounds=24, block=24, seed=11)
    assert m.lagged.get("candidate", 0) >= 4  # it did move work in several samples
    est = stats.paired_ratio(m.pairs(), flags=m.flags)
    assert est.ratio < 1.02, est.format()  # and is not faster for it
