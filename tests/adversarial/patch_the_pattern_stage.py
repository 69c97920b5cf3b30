# ruff: noqa: I001  (a cheat: tests/test_adversarial.py splices it into the rendered naive kernel after its imports)
"""Adversarial candidate `patch_the_pattern_stage` (tests/test_adversarial.py): a cheat spliced into the naive kernel.
A kernel fast on N(0, 1) and slow (or wrong) on shaped logits would want the judge not to look
there: at import it empties the logit patterns and the correctness kinds but N(0, 1), turns
shape_logits and the sink's plant into no-ops, draws sinks of no strength, drops the pattern floor
to zero and stubs the judge's pattern stage and the commit rule's check of it, so that a judge in
the same process would time and check N(0, 1) only. It bypasses the static check on purpose; only
the sandbox stands in its way.
"""

try:
    import avo.evaluate
    import avo.judge
    import avo.verify

    avo.verify.LOGIT_PATTERNS = ()
    avo.verify.INPUT_KINDS = ("normal",)
    avo.verify.shape_logits = lambda *args, **kwargs: None
    avo.verify._plant_sink = lambda *args, **kwargs: None
    avo.verify.SINK_NATS = (0.0, 0.0)
    avo.evaluate.PATTERN_FLOOR = 0.0
    avo.judge._time_patterns = lambda *args, **kwargs: {}
    avo.judge.pattern_configs = lambda *args, **kwargs: []
    _commit = avo.evaluate.apply_commit_rule

    def _lenient(verdict, *args, **kwargs):
        verdict.patterns = {}
        return _commit(verdict, *args, **kwargs)

    avo.evaluate.apply_commit_rule = _lenient
except Exception:
    pass
