"""`python tests/evolve_fake.py <avo.evolve args>`: the real evolve loop with a stand-in for the
GPU part of the cascade, so CPU tests can commit. A candidate's score is a fixed function of its
knobs; it is committed when not below the incumbent's, as the real commit rule would."""

import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo.evaluate import Verdict  # noqa: E402
from avo.evolve import main  # noqa: E402


def score(text: str) -> float:
    return 100.0 + int(hashlib.sha256(text.encode()).hexdigest()[:6], 16) % 1000 / 10.0


def fake_evaluate(source, suite, archs, incumbent=None, **_):
    time.sleep(float(__import__("os").environ.get("AVO_FAKE_EVAL_SECONDS", "0.3")))
    mine = score(Path(source).read_text())
    theirs = score(Path(incumbent).read_text()) if incumbent else None
    ratio = mine / theirs if theirs else None
    commit = ratio is None or ratio >= 0.9  # generous, so that a short run commits often
    gain = ratio is not None and ratio > 1.0
    return Verdict("committed" if commit else "rejected", "done", f"fake score {mine:.1f}",
                   scores={"only": mine}, geomean=mine, ratio=ratio, noise=0.002, gain=gain,
                   incumbent_scores={"only": theirs} if theirs else {})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], evaluate_fn=fake_evaluate))
