"""Timing on the GPU: the sampler behind the paired estimator (avo.stats).

For each config, the contenders (candidate, incumbent, baselines) are timed in short samples taken
back to back in a random order; one such round gives each contender one sample, and
candidate/incumbent samples of a round form a pair whose ratio cancels whatever drifts (clocks,
temperature, neighbours). A sample is

    new inputs -> poison every output buffer of the contender (NaN) -> flush L2 -> GPU spin
      -> event -> n launches -> event

with n chosen so that a sample lasts at least MIN_SAMPLE_MS (launch overhead must not dominate a
short config), each of the n launches reading inputs of its own and writing a buffer of its own
(a kernel that finds a previous output in its buffer could skip its work: every buffer holds NaN
when a sample starts). The inputs are regenerated in place before every sample (same pointers, new
values), so no two launches of a measurement, of one contender or of two, read the same values: a
kernel that fingerprints its inputs finds no output made for them before, neither one of its own
nor one another contender left in memory it could locate (an incumbent's buffer at a fixed offset).
The values are drawn from one distribution per measurement, so the pairs stay pairs. A kernel's
run time may depend on them (a softmax that skips work while each row's max holds, and pays where
it does not): `pattern` draws logits shaped like trained models' (an attention sink, rows whose
max keeps rising toward either end: avo.verify.LOGIT_PATTERNS) instead of N(0, 1), and the judge
times the candidate against the incumbent on those too.

Every sample of the candidate is checked: every buffer its launches wrote is scanned for the NaN
poison (a kernel that skips some of its launches fails there), its inputs are checked unchanged,
and the output of every one of its launches is checked against the fp32 reference on query rows
drawn at random over the whole sequence: a kernel that serves stale output, writes its inputs, or
is wrong on a few tiles of a few launches (skipped work that leaves no NaN) fails there. The checks
are not timed, and they run after the round's last sample (the candidate reads input sets of its
own, drawn like everyone's, which no later sample regenerates): run right after its sample, they
left the GPU idle before the next contender's sample, which then started cooler and, under the
power cap, faster (an A/A judge read the same kernel 0.25% slower than itself).
After every sample the whole device is synchronized: a sample whose
work goes on after its end event (another stream, which the events miss) is timed until the device
is idle instead, cannot slow the next kernel's sample, and a candidate that does so in most of its
samples fails. Each round reads
NVML telemetry; rounds taken while the GPU throttled itself are flagged (avo.telemetry).

The device sync after every sample leaves the GPU idle while the host enqueues the next sample, so
without care a sample would also time the host: the gap between its start event and its first
kernel, i.e. the contender's Python launch path (FA4's interface takes far longer to launch than a
tvm-ffi call), which made FA4 and cuDNN read up to 14% slower than they run. So the GPU spins
(torch.cuda._sleep) between the flush and the start event for longer than the host takes to enqueue
the sample's launches; the spin is the same for every contender of a config (the longest host time
measured at calibration, doubled), and a sample whose launches took the host longer than the spin
lengthens it for the rest of the measurement and is counted (`host_bound_samples`).

Baselines measured in the same rounds: FA4 (flash_attn.cute, extra `baselines`), cuDNN and FA2
(torch SDPA with the CUDNN_ATTENTION and FLASH_ATTENTION backends).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from avo.suites import ShapeConfig
from avo.verify import shape_logits

__all__ = ["BASELINES", "DENSE_BF16_PEAK_TFLOPS", "MIN_SAMPLE_MS", "Measurement", "TimedOutputError",
           "above_peak", "baseline_fn", "measure", "peak_tflops"]

BASELINES = ("fa4", "cudnn", "fa2")
MIN_SAMPLE_MS = 1.0  # a sample of a short config repeats the launch until it lasts this long
_ROTATE = 3  # at least this many output buffers per kernel, used in turn by consecutive launches
_CHECK_ROWS = 64  # query rows, drawn at random, of every timed launch checked against the reference
_L2_FLUSH_BYTES = 256 << 20  # larger than any L2 (H100 50 MB, B200 126 MB)
_SPIN_CLOCK_HZ = 2.0e9  # cycles per second assumed for the spin: at or above any boost clock, so it lasts >= asked
_SPIN_MIN_S = 50e-6  # the spin also covers the event record and the first launch's own latency

# Dense BF16/FP16 tensor-core peak by device name (vendor datasheets, without sparsity). A kernel
# that "beats" this is a timing bug or skipped work, never a win.
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "GH200": 989.4, "B200": 2250.0,
                          "B300": 2250.0}


class TimedOutputError(Exception):
    """A timed call of the candidate produced a wrong output."""


def peak_tflops(device_name: str | None = None) -> float:
    name = device_name or torch.cuda.get_device_name()
    for key, value in DENSE_BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return 2250.0  # unknown chip: the largest known peak, so nothing honest is rejected


def above_peak(scores: dict, peak: float | None = None) -> str:
    """A diagnosis when any config's TFLOPS beats the chip's dense peak (this GPU's unless given:
    a timing bug or skipped work, never a win), else ""."""
    peak = peak if peak is not None else peak_tflops()
    over = [(c, t) for c, t in scores.items() if t > peak]
    if not over:
        return ""
    config, value = over[0]
    return f"{config}: {value:.0f} TFLOPS is above the chip's dense BF16 peak {peak:.0f}: a timing bug or skipped work"


@dataclass
class Measurement:
    """Per config: per-launch milliseconds of each contender by round, and the round flags."""
    times: dict = field(default_factory=dict)  # config -> name -> [ms per launch, one per round]
    flags: dict = field(default_factory=dict)  # config -> [bool per round]: throttled, excluded
    launches: dict = field(default_factory=dict)  # config -> launches per sample
    checks: int = 0  # timed outputs checked against the reference
    power_capped: int = 0  # rounds under the software power cap (kept)
    telemetry: dict = field(default_factory=dict)  # min/max SM clock, max temperature and power; or why not
    missing: dict = field(default_factory=dict)  # baseline -> why it was not measured
    host_bound: int = 0  # samples whose launches took the host longer than the GPU spin ahead of them
    lagged: dict = field(default_factory=dict)  # name -> samples after which the device was still busy (all configs)

    def pairs(self, a: str = "incumbent", b: str = "candidate") -> dict:
        """{config: [(t_a, t_b), ...]} for avo.stats.paired_ratio."""
        return {c: list(zip(t[a], t[b], strict=True)) for c, t in self.times.items() if a in t and b in t}

    def tflops(self, configs: list[ShapeConfig]) -> dict:
        """{name: {config: TFLOPS}} from each contender's median time per config."""
        out: dict = {}
        for config in configs:
            for name in self.times[config.name]:
                out.setdefault(name, {})[config.name] = config.flops / (self.median_ms(config.name, name) * 1e-3) / 1e12
        return out

    def versus(self, others, name: str = "candidate") -> dict:
        """{other: {"ratio", "ratio_ci"}}: `name`'s speed over each other contender's, paired round by
        round, for those measured on every config."""
        from avo import stats

        out = {}
        for other in others:
            if all(other in t for t in self.times.values()):
                est = stats.relative_ratio({c: t[other] for c, t in self.times.items()},
                                           {c: t[name] for c, t in self.times.items()}, flags=self.flags)
                out[other] = {"ratio": est.ratio, "ratio_ci": [est.lo, est.hi]}
        return out

    def summary(self) -> dict:
        return {"rounds": {c: len(f) for c, f in self.flags.items()}, "launches": self.launches,
                "host_bound_samples": self.host_bound, "lagged_samples": self.lagged,
                "checks": self.checks, "excluded_rounds": sum(sum(f) for f in self.flags.values()),
                "power_capped_rounds": self.power_capped, "telemetry": self.telemetry,
                "missing_baselines": self.missing}

    def median_ms(self, config: str, name: str) -> float:
        keep = [t for t, bad in zip(self.times[config][name], self.flags[config], strict=True) if not bad]
        values = sorted(keep or self.times[config][name])
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def measure(configs: list[ShapeConfig], kernels: dict[str, dict], baselines: tuple[str, ...] = (),
            needs_more: Callable[[Measurement], bool] | None = None, min_rounds: int = 8,
            max_rounds: int = 64, block: int = 8, check: str | None = "candidate",
            telemetry=None, seed: int | None = None, pattern: str = "normal",
            crossover: str | None = None) -> Measurement:
    """Time every contender on every config in interleaved rounds. `kernels` maps a contender
    name to {AttentionSpec: fn(q, k, v, o, lse, scale)}; baselines are added by name. Rounds come in
    blocks of `block` over all configs until `min_rounds`, then while `needs_more(measurement)`
    says so, up to `max_rounds`. Inputs are N(0, 1) shaped by `pattern` (shape_logits). Raises
    TimedOutputError when a checked output of `check` is wrong, ValueError (shape_logits, before any
    sample) on an unknown pattern. `crossover` names a contender (e.g. "incumbent") that trades its
    input and output buffers with `check`'s every other round, so that where a buffer sits in
    memory is not one side's for the whole measurement (an experiment: off in the judge)."""
    from avo import verify

    rng = random.Random(seed)
    result = Measurement()
    flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    states = [_ConfigState(config, kernels, baselines, result, rng, check, pattern, crossover) for config in configs]
    readings = []
    rounds = 0
    while rounds < min_rounds or (needs_more is not None and rounds < max_rounds and needs_more(result)):
        # the first block, then doubling: few looks at the data keep the adaptive error rate near the nominal
        step = block if rounds < min_rounds else min(rounds, max_rounds - rounds)
        for state in states:
            for _ in range(step):
                state.cross(len(result.flags[state.config.name]) % 2 == 1)  # odd rounds, where crossing over
                order = list(state.contenders)
                rng.shuffle(order)
                ms = {}
                for name in order:
                    # new values before every sample (see the module doc): nothing any launch made
                    # before was made for the inputs this one reads
                    state.new_inputs(rng.randrange(1 << 30), name)
                    start, end, host_bound = state.sample(name, flush)
                    end, lagged = _settle(end)
                    ms[name] = (start, end)
                    state.lagged[name] = state.lagged.get(name, 0) + lagged
                    result.host_bound += host_bound
                # The checks of the checked contender's sample come after the round's last sample
                # (its inputs and outputs are its own: nothing since has touched them). Right after
                # its sample they left the GPU idle for a while, so the sample that came next, never
                # its own, ran from a cooler start: under the power cap an A/A judge of v0071 read
                # 0.9976x [0.9967, 0.9985] itself (paper, H100 2026-11-23), -0.6 to -1.2% on the long
                # GQA configs.
                if check in ms:
                    state.check_written(check)
                    state.check_outputs(check, verify, rng)
                    result.checks += 1
                reading = telemetry.read() if telemetry is not None else None
                readings.append(reading)
                for name in order:
                    result.times[state.config.name].setdefault(name, []).append(
                        ms[name][0].elapsed_time(ms[name][1]) / state.launches)
                result.flags[state.config.name].append(bool(telemetry and telemetry.throttled(reading)))
                result.power_capped += bool(telemetry and telemetry.power_capped(reading))
        rounds += step
    for state in states:  # work still running once the timed calls had returned: another stream
        for name, count in state.lagged.items():
            result.lagged[name] = result.lagged.get(name, 0) + count
        late = state.lagged.get(check, 0) if check else 0
        if late > rounds // 2:
            raise TimedOutputError(f"{state.config.name}: in {late} of {rounds} samples the GPU kept working after "
                                   "the timed calls had returned: work on another stream, which the timer misses")
    result.telemetry = _summary(readings, telemetry)
    return result


class _ConfigState:
    """One config's inputs, output buffers and contenders during a measurement. Launch j of every
    sample reads input set j (`launches` sets, stacked along a leading dimension) and writes the
    output buffers of its turn."""

    def __init__(self, config: ShapeConfig, kernels: dict, baselines, result: Measurement, rng,
                 checked: str | None = None, pattern: str = "normal", crossover: str | None = None):
        from avo.verify import random_inputs

        self.config = config
        self.pattern = pattern
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.kernels = {name: per_spec[config.spec] for name, per_spec in kernels.items() if config.spec in per_spec}
        self.baselines = list(baselines)
        self.lagged: dict[str, int] = {}  # samples after which the device was still busy
        self.buffers: dict[str, list] = {}
        self.turn: dict[str, int] = {}
        # one provisional input set to warm up and calibrate with; the launches per sample it gives
        # fix how many sets there are
        seed = rng.randrange(1 << 30)
        self.stacks = tuple(t.unsqueeze(0) for t in random_inputs(config, seed))
        shape_logits(self.stacks[0], self.stacks[1], pattern,  # calibrated on the inputs it times
                     torch.Generator(device="cuda").manual_seed(seed))
        # the checked contender reads input sets of its own (checked_stacks, drawn from seeds[checked]),
        # so that its checks can wait for the end of the round: the samples after it regenerate
        # only self.stacks
        self.checked = checked if checked in self.kernels else None
        # the contender that trades buffers with the checked one in crossed rounds (cross())
        self.partner = crossover if self.checked and crossover in self.kernels and crossover != checked else None
        self.crossed = False
        self.seeds: dict[str, int] = {}
        self.checked_stacks = self.stacks
        self._bind(result)
        for name in self.kernels:
            self.buffers[name] = [self._output_buffers()]
        result.times[config.name] = {}
        result.flags[config.name] = []
        self.launches, host_s, self.gpu_s = self._calibrate()
        if self.launches > 1:  # an input set of its own for every launch of a sample
            self.stacks = tuple(torch.empty((self.launches, *t.shape[1:]), dtype=t.dtype, device=t.device)
                                for t in self.stacks)
        if self.checked:
            self.checked_stacks = tuple(torch.empty_like(t) for t in self.stacks)
        if self.launches > 1 or self.checked:
            for name in [None, self.checked] if self.checked else [None]:
                self.new_inputs(rng.randrange(1 << 30), name)
            self._bind(result)
        # the GPU spins this long before each sample's start event, the same for every contender
        # (see the module doc): long enough that the launches already queued keep it busy until the
        # slowest contender's host has enqueued the last one
        self.spin_s = max(_SPIN_MIN_S, 2.0 * self._uncovered(host_s * self.launches))
        result.launches[config.name] = self.launches
        for name in self.buffers:  # a buffer of its own for every launch of a sample: none is written twice
            self.buffers[name] += [self._output_buffers() for _ in range(max(_ROTATE, self.launches) - 1)]

    def _bind(self, result: Measurement) -> None:
        """self.contenders[name][j]: fn(o, lse) running contender `name` on input set j; with a
        crossover partner, also the same with the two input sets exchanged (self._crossed)."""
        self.contenders = self._bound(result)
        if self.partner:
            self.stacks, self.checked_stacks = self.checked_stacks, self.stacks
            self._crossed = self._bound(result)
            self.stacks, self.checked_stacks = self.checked_stacks, self.stacks

    def cross(self, on: bool) -> None:
        """Crossed (on) or not: the checked contender reads the shared input sets and the partner
        (with everyone else) the checked one's, and the two use each other's output buffers. Only
        between rounds: the checked contender's inputs and outputs stay as its sample left them
        until its checks at the round's end."""
        if not self.partner or on == self.crossed:
            return
        a, b = self.checked, self.partner
        self.stacks, self.checked_stacks = self.checked_stacks, self.stacks
        self.contenders, self._crossed = self._crossed, self.contenders
        self.buffers[a], self.buffers[b] = self.buffers[b], self.buffers[a]
        self.turn[a], self.turn[b] = self.turn.get(b, 0), self.turn.get(a, 0)
        self.crossed = on

    def _bound(self, result: Measurement) -> dict[str, list[Callable]]:
        contenders: dict[str, list[Callable]] = {}
        sets = list(zip(*self.stacks, strict=True))
        for name, fn in self.kernels.items():
            own = list(zip(*self._stacks(name), strict=True))
            contenders[name] = [lambda o, lse, fn=fn, q=q, k=k, v=v: fn(q, k, v, o, lse, self.scale)
                                for q, k, v in own]
        for name in self.baselines:
            runs = []
            for q, k, v in sets:
                run, why = baseline_fn(name, self.config, q, k, v, self.scale)
                if run is None:
                    result.missing[name] = why
                    break
                runs.append(lambda o, lse, run=run: run())
            else:
                contenders[name] = runs
        return contenders

    def _output_buffers(self) -> tuple:
        config = self.config
        q = self.stacks[0][0]
        return torch.empty_like(q), torch.empty(config.batch, config.heads_q, config.seqlen_q, device="cuda")

    def _stacks(self, name: str | None) -> tuple:
        """The input sets contender `name` reads: the checked contender's own, or the shared ones."""
        return self.checked_stacks if name is not None and name == self.checked else self.stacks

    def new_inputs(self, seed: int, name: str | None = None) -> None:
        """New values in the same buffers, every input set that `name` reads (a kernel that keys a
        cache on its pointers goes stale). Drawn in the inputs' own dtype: one kernel per tensor,
        no copy."""
        self.seeds[name] = seed
        self._draw(seed, self._stacks(name))

    def _draw(self, seed: int, stacks: tuple) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        for stack in stacks:
            stack.normal_(generator=gen)
        shape_logits(stacks[0], stacks[1], self.pattern, gen)

    def _inputs_unchanged(self, name: str) -> bool:
        fresh = tuple(torch.empty_like(stack) for stack in self._stacks(name))
        self._draw(self.seeds[name], fresh)
        return all(torch.equal(a, b) for a, b in zip(self._stacks(name), fresh, strict=True))

    def sample(self, name: str, flush: torch.Tensor) -> tuple:
        """Time one sample of `name`: (start event, end event, whether the host outran the spin)."""
        buffers = self.buffers.get(name, [])
        for o, lse in buffers:  # every buffer, so none holds a previous output to reuse
            o.fill_(float("nan"))
            lse.fill_(float("nan"))
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        runs = self.contenders[name]
        torch.cuda._sleep(int(self.spin_s * _SPIN_CLOCK_HZ))
        t0 = time.perf_counter()
        start.record()
        for j in range(self.launches):
            o, lse = buffers[self.turn.get(name, 0) % len(buffers)] if buffers else (None, None)
            self.turn[name] = self.turn.get(name, 0) + 1
            runs[j](o, lse)
        end.record()
        uncovered = self._uncovered(time.perf_counter() - t0)
        host_bound = uncovered > self.spin_s
        if host_bound:  # the GPU may have waited for the host: spin longer from now on
            self.spin_s = 2.0 * uncovered
        return start, end, host_bound

    def _uncovered(self, host_s: float) -> float:
        """Host time to enqueue a sample that the sample's own earlier launches do not cover."""
        return max(0.0, host_s - (self.launches - 1) * self.gpu_s)

    def _last_sample(self, name: str) -> list[tuple]:
        buffers = self.buffers[name]
        return [buffers[i] for i in last_sample_buffers(self.turn[name], self.launches, len(buffers))]

    def check_written(self, name: str) -> None:
        """After every sample of `name`: each of its launches wrote all of its output and LSE. A kernel
        that skips some launches (one in ten, or only while it is being timed) leaves the NaN poison."""
        # one count per buffer, summed on the GPU: one sync per sample, not one per buffer
        poisoned = int(torch.stack([t.isnan().sum() for pair in self._last_sample(name) for t in pair]).sum())
        if poisoned:
            raise TimedOutputError(f"{self.config.name}: a timed call left {poisoned} output/LSE values unwritten "
                                   "(NaN poison): work skipped while timed")

    def check_outputs(self, name: str, verify, rng) -> None:
        """Right after a sample of `name`: every input set as it was generated, and the output of
        every launch of the sample on _CHECK_ROWS query rows drawn at random over the whole sequence,
        every batch and head, against the fp32 reference on the input set that launch read. A kernel
        wrong on a fraction f of its rows in some launch is caught there with probability
        1 - (1 - f)^_CHECK_ROWS (one tile in sixteen: 98%), and every launch is checked."""
        if not self._inputs_unchanged(name):
            raise TimedOutputError(f"{self.config.name}: the inputs changed while timed: a kernel must not "
                                   "write q, k, v")
        sq = self.config.seqlen_q
        rows = torch.tensor(sorted(rng.sample(range(sq), min(sq, _CHECK_ROWS))), device="cuda")
        written = self._last_sample(name)  # launch order: launch j read input set j
        out = torch.cat([o.index_select(1, rows) for o, _ in written])  # (launches * batch, rows, heads, d)
        lse = torch.cat([lse.index_select(2, rows) for _, lse in written])
        q, k, v = (stack.flatten(0, 1) for stack in self._stacks(name))  # the sets side by side as one batch
        ref_out, ref_lse, bound = verify.reference(q, k, v, self.config.causal, self.scale, rows=rows)
        diagnosis, _ = verify.compare(out, lse, ref_out, ref_lse, bound)
        if diagnosis:
            raise TimedOutputError(f"{self.config.name}: a timed call's output is wrong ({len(rows)} random "
                                   f"rows of each launch): {diagnosis}")

    def _calibrate(self) -> tuple[int, float, float]:
        """Warm every contender up, then pick launches per sample from the slowest one's GPU time.
        Also returns the longest host time one launch took (enqueueing, not running) and the
        shortest GPU time of one launch, in seconds."""
        longest, shortest, host_s = 0.0, math.inf, 0.0
        for name, runs in self.contenders.items():
            run = runs[0]
            o, lse = self.buffers[name][0] if name in self.buffers else (None, None)
            run(o, lse)  # warm: a baseline's first call may compile
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(o, lse)
            host_s = max(host_s, time.perf_counter() - t0)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            torch.cuda._sleep(int((_SPIN_MIN_S + 2.0 * host_s) * _SPIN_CLOCK_HZ))
            start.record()
            run(o, lse)
            end.record()
            torch.cuda.synchronize()
            longest = max(longest, start.elapsed_time(end))
            shortest = min(shortest, start.elapsed_time(end))
        launches = max(1, min(64, math.ceil(MIN_SAMPLE_MS / max(longest, 1e-3))))
        return launches, host_s, (shortest if shortest < math.inf else 0.0) * 1e-3


def last_sample_buffers(turn: int, launches: int, count: int) -> list[int]:
    """Indices of the output buffers the last sample's `launches` launches wrote, in launch order,
    when launches take buffers in turn (`turn` launches so far, `count` buffers)."""
    return [(turn - launches + j) % count for j in range(launches)]


_LAG_S = 200e-6  # a device sync right after the end event takes ~10-30 us when nothing else runs


def _settle(end):
    """Wait for the sample's end event, then for the whole device. If the device was still busy
    well past the end event, the sample's work went on in another stream, which the end event does
    not wait for: the sample then ends at an event recorded once the device is idle, so that work is
    timed too (with the host's latency of a sync on top: a penalty, never a gain). Returns (the
    event the sample ends at, whether it lagged)."""
    end.synchronize()
    t0 = time.perf_counter()
    torch.cuda.synchronize()
    if time.perf_counter() - t0 <= _LAG_S:
        return end, False
    idle = torch.cuda.Event(enable_timing=True)
    idle.record()
    idle.synchronize()
    return idle, True


def _summary(readings: list, telemetry) -> dict:
    got = [r for r in readings if r]
    if not got:
        return {"available": False, "why": getattr(telemetry, "why", "") or "no telemetry requested"}
    clocks = [r["sm_mhz"] for r in got]
    return {"available": True, "rounds": len(got), "sm_mhz_min": min(clocks), "sm_mhz_max": max(clocks),
            "temp_c_max": max(r["temp_c"] for r in got), "power_w_max": round(max(r["power_w"] for r in got), 1)}


def baseline_fn(name: str, config: ShapeConfig, q, k, v, softmax_scale: float):
    """A zero-argument callable running baseline `name` on (batch, seqlen, heads, head_dim) inputs,
    or None with the reason when that baseline is not available here."""
    if name == "fa4":
        try:
            from flash_attn.cute import flash_attn_func
        except Exception as exc:  # the extra is optional
            return None, f"FA4 not importable ({type(exc).__name__}: {exc}); pip install -e '.[baselines]'"

        def run_fa4():
            with torch.inference_mode():
                return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=config.causal)

        return run_fa4, ""
    if name in ("cudnn", "fa2"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.CUDNN_ATTENTION if name == "cudnn" else SDPBackend.FLASH_ATTENTION
        if config.causal and config.seqlen_q != config.seqlen_k:
            return None, "SDPA's is_causal aligns top-left; only sq == sk is comparable"
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        gqa = config.heads_q != config.heads_kv

        def run_sdpa():
            with sdpa_kernel(backend), torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(
                    qt, kt, vt, is_causal=config.causal, scale=softmax_scale, enable_gqa=gqa)

        try:
            run_sdpa()
            torch.cuda.synchronize()
        except Exception as exc:
            return None, f"{name} backend refused this shape ({type(exc).__name__}: {str(exc)[:120]})"
        return run_sdpa, ""
    raise ValueError(f"unknown baseline {name!r}: use one of {', '.join(BASELINES)}")
