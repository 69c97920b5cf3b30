"""Adversarial candidates (tests/adversarial/*.py: the naive kernel plus a cheat at import) against
the layers behind the static check: the sandboxed compile and the verdict the parent builds. Each
runs once through `evaluate(..., compile_only=True, static=False)`; then nothing may have leaked:
no file outside the sandbox's output, no secret in the verdict, no connection to a local listener,
the parent's verifier and loader untouched, never "committed", geomean 0. CPU only; skipped only
where no namespace sandbox can be started."""

import json
import os
import secrets
import socket
from pathlib import Path

import pytest

import avo.build
import avo.evaluate
import avo.jit
import avo.judge
import avo.reference
import avo.stats
import avo.timing
import avo.verify
from avo.evaluate import evaluate
from avo.spec import AttentionSpec

sandbox = pytest.importorskip("avo.sandbox")
_ok, _why = sandbox.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"no sandbox on this machine: {_why}")

ADVERSARIAL = Path(__file__).parent / "adversarial"
NAMES = sorted(p.stem for p in ADVERSARIAL.glob("*.py"))
RAISES = {"leak_secret"}  # the cheat raises at import: the compile fails, with its message
FIXED_TARGETS = [Path("/tmp/avo-adversarial-escaped.txt"), Path.home() / "avo-adversarial-escaped.txt",
                 Path.home() / "result.json", Path.cwd() / "avo-adversarial-escaped.txt", Path.cwd() / "result.json"]
# One spec (the zoo's dtype and head_dim): one compile per candidate keeps the whole file under ~2 min.
SUITE = """name: adversarial
dtype: fp16
head_dim: 64
tokens: 256
seqlens: [256]
causal: [false]
heads: [[4, 4]]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What a candidate must not reach: an outside directory, a secret, a listening socket."""
    root = tmp_path_factory.mktemp("adversarial")
    outside = root / "outside"
    outside.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    secret = "sk-avo-test-" + secrets.token_hex(16)
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = secret
    for target in FIXED_TARGETS:
        target.unlink(missing_ok=True)  # a leftover of an earlier broken run must not pass as new
    suite = root / "adversarial.yaml"
    suite.write_text(SUITE)
    yield {"root": root, "outside": outside, "listener": listener, "port": listener.getsockname()[1],
           "secret": secret, "suite": suite, "runs": {}}
    listener.close()
    if saved is None:
        os.environ.pop("OPENAI_API_KEY", None)
    else:
        os.environ["OPENAI_API_KEY"] = saved


_AFTER_IMPORTS = "from cutlass import Float32, Int32\n"


def _candidate(world, name: str) -> Path:
    """The rendered naive kernel with the cheat of tests/adversarial/<name>.py spliced in after its
    imports, so the candidate is a complete kernel module that would work if its cheat did."""
    naive = avo.jit.render("naive_attention").read_text()
    if naive.count(_AFTER_IMPORTS) != 1:
        raise AssertionError("adversarial candidates: the naive template's import block changed")
    cheat = (ADVERSARIAL / f"{name}.py").read_text()
    text = naive.replace(_AFTER_IMPORTS, _AFTER_IMPORTS + "\n" + cheat + "\n")
    text = text.replace('"/tmp/avo-adversarial-escape"', repr(str(world["outside"])))
    text = text.replace("PORT = 47613", f"PORT = {world['port']}")
    directory = world["root"] / name
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(text)
    return path


def _judge_functions() -> dict:
    """The parent's verifier, reference, loader, sampler, judge, estimator and commit-rule functions
    (avo.verify.check, avo.reference.reference_attention, avo.jit.load_callable, avo.timing.measure,
    avo.judge._time_patterns, avo.stats.decide, avo.evaluate.apply_commit_rule, ...), the sampler's
    methods, the build's (avo.build: a candidate runs inside its process), and the constants that
    say what the judge looks at (input kinds, logit patterns, the sink's strengths, the pattern
    floor)."""
    modules = (avo.verify, avo.reference, avo.jit, avo.build, avo.timing, avo.stats, avo.judge, avo.evaluate)
    found = {f"{m.__name__}.{k}": v for m in modules for k, v in vars(m).items() if callable(v)}
    found.update({f"avo.timing._ConfigState.{k}": v for k, v in vars(avo.timing._ConfigState).items() if callable(v)})
    found.update({"avo.verify.INPUT_KINDS": avo.verify.INPUT_KINDS, "avo.verify.LOGIT_PATTERNS":
                  avo.verify.LOGIT_PATTERNS, "avo.verify.SINK_NATS": avo.verify.SINK_NATS,
                  "avo.evaluate.PATTERN_FLOOR": avo.evaluate.PATTERN_FLOOR})
    return found


def _untouched(before: dict) -> list[str]:
    after = _judge_functions()
    return [name for name, fn in before.items() if after.get(name) is not fn]


def _run(world, name: str):
    """evaluate() once per candidate, with the parent's judge functions as they were before."""
    if name not in world["runs"]:
        path = _candidate(world, name)
        before = _judge_functions()
        verdict = evaluate(path, suite=str(world["suite"]), compile_only=True, static=False, timeout_s=300)
        world["runs"][name] = (path, verdict, before)
    return world["runs"][name]


@pytest.mark.parametrize("name", NAMES)
def test_adversarial_candidate_changes_nothing_outside_its_sandbox(world, name):
    path, verdict, before = _run(world, name)
    # the cheat ran (a compile that fails for another reason would make this test vacuous)
    if name in RAISES:
        assert verdict.status == "failed_compile" and "stolen secrets" in verdict.diagnosis, verdict.diagnosis
    else:
        assert verdict.status == "screened" and verdict.compile_reports, verdict.diagnosis
    assert verdict.status != "committed" and verdict.geomean == 0.0
    # no file outside the sandbox's output directory
    assert list(world["outside"].iterdir()) == []
    assert [t for t in FIXED_TARGETS if t.exists()] == []
    others = [p for p in path.parent.iterdir() if p != path]
    assert [p for p in others if "702" in p.read_text(errors="replace")] == [], others
    # the secret never reaches the verdict
    assert world["secret"] not in json.dumps(verdict.as_dict())
    # the parent's judge is untouched
    assert _untouched(before) == []
    # no connection reached the listener (the network candidate gets the full 5 s)
    listener = world["listener"]
    listener.settimeout(5.0 if name == "network" else 0.05)
    with pytest.raises(TimeoutError):
        conn, _ = listener.accept()
        conn.close()


@pytest.mark.parametrize("name", ["leak_secret", "write_at_import"])
def test_compile_kernel_runs_the_import_in_the_sandbox(world, name, tmp_path):
    """The lower layer alone: jit.compile_kernel imports the candidate in the sandbox too."""
    path = _candidate(world, name)
    before = _judge_functions()
    try:
        kernel = avo.jit.compile_kernel(path, AttentionSpec(head_dim=64), arch="sm_90a", run=False)
    except avo.jit.CompileError as exc:
        assert name in RAISES, str(exc)
        assert "stolen secrets" in str(exc) and world["secret"] not in str(exc)
    else:
        assert name not in RAISES and kernel.report["registers"] > 0
    assert list(world["outside"].iterdir()) == []
    assert [t for t in FIXED_TARGETS if t.exists()] == []
    assert _untouched(before) == []
