"""`python tests/evolve_fake_gpus.py <avo.evolve args>`: the real evolve loop on a host that, as far
as the run can tell, has sm_90a GPUs, with a stand-in for the cascade: a candidate's speed is
written in its text (`# speed: 120`, the first one; 100 without), and it is committed when its
ratio to the incumbent clears the commit bar the run passes (`commit_bar`), as the real rule would. Every call is kept
in CALLS (source and incumbent file names, GPU, stage), and HOOKS[source file name] runs before a
judge of that source answers: how a test orders two steps' judges."""

import re
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo import jit  # noqa: E402
from avo.evaluate import Verdict  # noqa: E402
from avo.evolve import main  # noqa: E402

CALLS: list[dict] = []
HOOKS: dict = {}
_lock = threading.Lock()


def speed(text: str) -> float:
    found = re.search(r"# speed: (\d+)", text)
    return float(found.group(1)) if found else 100.0


def fake_evaluate(source, suite=None, archs=(), incumbent=None, gpu=None, compile_only=None, stop_after=None,
                  commit_bar=1 - 0.005, **_):
    stage = "compile" if compile_only else stop_after or "judge"
    call = {"source": Path(source).name, "incumbent": Path(incumbent).name if incumbent else None, "gpu": gpu,
            "stage": stage, "start": time.time()}
    if stage == "judge" and call["source"] in HOOKS:
        HOOKS[call["source"]](call)
    with _lock:
        CALLS.append(call)
    if stage != "judge":
        return Verdict("screened", stage, f"fake {stage}: fine")
    mine = speed(Path(source).read_text())
    theirs = speed(Path(incumbent).read_text()) if incumbent else None
    ratio = mine / theirs if theirs else None
    commit = ratio is None or ratio >= commit_bar
    return Verdict("committed" if commit else "rejected", "done", f"fake speed {mine:.0f}", scores={"only": mine},
                   geomean=mine, ratio=ratio, noise=0.002, gain=ratio is not None and ratio > 1.0,
                   incumbent_scores={"only": theirs} if theirs else {})


if __name__ == "__main__":
    jit.current_arch = lambda: "sm_90a"
    sys.exit(main(sys.argv[1:], evaluate_fn=fake_evaluate))
