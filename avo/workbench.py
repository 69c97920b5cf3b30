"""The harness as the agent operator sees it (avo.agent.Workbench): compile, test, benchmark and
submit a candidate file, each answered with a JSON-able report. Submit runs the full cascade and
records the verdict on the step's lineage node; the commit rule is the harness's, never the agent's.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HarnessWorkbench"]


class HarnessWorkbench:
    def __init__(self, run, node):
        self.run, self.node = run, node  # avo.evolve.Run and the step's reserved (pending) node
        self.submitted = False

    def _evaluate(self, path: Path, **kwargs):
        cfg = self.run.config
        archs = tuple(dict.fromkeys((cfg.arch, *cfg.compile_archs)))
        return self.run.evaluate_fn(path, suite=cfg.suite, archs=archs, timeout_s=cfg.evaluation.timeout_s,
                                    seeds=cfg.evaluation.seeds, rounds=cfg.evaluation.rounds, **kwargs)

    def compile(self, path: Path) -> dict:
        verdict = self._evaluate(path, compile_only=True)
        if verdict.status == "screened":
            return {"ok": True, "report": verdict.compile_reports}
        return {"ok": False, "status": verdict.status, "error": verdict.diagnosis, "report": verdict.compile_reports}

    def test(self, path: Path) -> dict:
        if self.run.compile_only:
            return {"ok": False, "error": f"no {self.run.config.arch} GPU here: correctness cannot be run; "
                                          "compile() is what this machine can check"}
        verdict = self._evaluate(path, stop_after="correctness")
        return {"ok": verdict.status == "screened", "status": verdict.status, "diagnosis": verdict.diagnosis,
                "correctness": verdict.correctness}

    def benchmark(self, path: Path) -> dict:
        if self.run.compile_only:
            return {"ok": False, "error": f"no {self.run.config.arch} GPU here: nothing can be timed"}
        verdict = self._evaluate(path, incumbent=self.run.incumbent_source())
        return {"ok": verdict.status in ("committed", "rejected"), "status_if_submitted": verdict.status,
                "diagnosis": verdict.diagnosis, "scores": verdict.scores, "geomean": verdict.geomean,
                "incumbent_scores": verdict.incumbent_scores, "ratio": verdict.ratio, "noise": verdict.noise}

    def submit(self, path: Path, rationale: str) -> dict:
        if self.submitted:
            return {"status": "refused", "reason": "this step already submitted"}
        self.submitted = True
        node = self.run.lineage.get(self.node.id)
        node.rationale = rationale
        verdict = self.run.judge(node, Path(path))
        return {"status": verdict.status, "node_id": node.id, "geomean": verdict.geomean, "ratio": verdict.ratio,
                "noise": verdict.noise, "diagnosis": verdict.diagnosis}
