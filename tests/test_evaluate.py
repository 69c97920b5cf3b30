"""The cascade's CPU-side parts: fitness, the commit rule with noise, static checks, and the whole
cascade in compile-only mode."""

import math

import pytest

from avo import jit
from avo.evaluate import NOISE_CAP, NOISE_FLOOR, commit_decision, evaluate, geomean, static_check


def test_geomean_is_zero_on_any_failure():
    assert geomean([100.0, 400.0]) == pytest.approx(200.0)
    assert geomean([500.0, 0.0, 600.0]) == 0.0 and geomean([]) == 0.0
    assert geomean([2.0] * 7) == pytest.approx(2.0)


@pytest.mark.parametrize("ratio, noise, expected", [
    (None, 0.01, (True, False)),  # no incumbent: the first correct kernel is committed
    (1.000, 0.01, (True, False)),  # a tie is "not slower"
    (0.995, 0.01, (True, False)),  # slower, but within the measured noise
    (0.985, 0.01, (False, False)),  # slower beyond the noise
    (1.005, 0.01, (True, False)),  # faster, but not beyond the noise: no claimed gain
    (1.020, 0.01, (True, True)),  # a real gain
    (0.999, 0.0, (True, False)),  # the noise floor applies when spread was ~0
    (0.997, 0.0, (False, False)),
    (0.986, 0.05, (False, False)),  # a noisy run forgives at most NOISE_CAP of slowdown
    (0.992, 0.05, (True, False)),
    (1.040, 0.05, (True, False)),  # and a gain must still clear the whole noise
    (1.060, 0.05, (True, True)),
])
def test_commit_rule_with_noise(ratio, noise, expected):
    assert commit_decision(ratio, noise) == expected
    assert (NOISE_FLOOR, NOISE_CAP) == (0.002, 0.01)


@pytest.mark.parametrize("line, message", [
    ("import torch", "import of 'torch'"),
    ("import os", "import of 'os'"),
    ("from avo import timing", "import of 'avo'"),
    ("import threading", "import of 'threading'"),
    ("x = eval('1')", "eval()"),
    ("f = open('/tmp/x')", "open()"),
    ("g = math.__dict__", "__dict__"),
])
def test_static_check_rejects_what_could_game_the_harness(line, message):
    text = jit.render("naive_attention").read_text() + "\n" + line + "\n"
    ok, why = static_check(text)
    assert not ok and message in why


def test_static_check_accepts_the_templates_and_needs_an_entry():
    for template in ("naive_attention", "flash_fwd_sm90"):
        assert static_check(jit.render(template).read_text()) == (True, "")
    assert static_check("import math\nX = 1\n") == (False, "the module does not define KERNEL (the kernel class)")
    assert static_check("def f(:\n")[1].startswith("syntax error at line 1")


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
