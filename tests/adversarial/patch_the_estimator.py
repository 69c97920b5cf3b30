# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `patch_the_estimator` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
Replaces, at import, what turns timings into a verdict: the sampler (avo.timing.measure and the
timed-output checks), the paired estimator and the commit rule (avo.stats), so that a judge in the
same process would read a 1.5x gain and commit.
It bypasses the static check on purpose; only the sandbox stands in its way.
"""

try:
    import avo.stats
    import avo.timing

    def _forged_estimate(*args, **kwargs):
        return avo.stats.RatioEstimate(ratio=1.5, lo=1.4, hi=1.6, per_config={}, pairs=64, excluded=0)

    avo.stats.paired_ratio = _forged_estimate
    avo.stats.relative_ratio = _forged_estimate
    avo.stats.decide = lambda *args, **kwargs: "commit"
    avo.stats.is_gain = lambda *args, **kwargs: True
    avo.stats.shown_slower = lambda *args, **kwargs: False
    avo.timing._ConfigState.check_outputs = lambda self, *args, **kwargs: None
    avo.timing._ConfigState.check_written = lambda self, *args, **kwargs: None
except Exception:
    pass
