"""Agent steps side by side, one per GPU (`evaluation.gpus: [0, 1]`), on the CPU: a local
OpenAI-compatible server answers each step from its own script, two fake sm_90a GPUs, a stand-in
cascade (tests/evolve_fake_gpus.py) whose speeds are written in the candidates. Two steps are in
flight at once (the server holds their first answers until both asked), each on its own GPU and
candidate file; a commit that raced another commit is judged again against the new incumbent; a
run killed with steps in flight loses nothing recorded and resumes; the lineage stays one
consistent history throughout."""

import collections
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from avo import jit
from avo.cluster import gpu_overlaps, read_intervals
from avo.evolve import main
from avo.lineage import Lineage
from tests import evolve_fake_gpus
from tests.evolve_fake_gpus import fake_evaluate, speed
from tests.test_agent import SECRET, ScriptedServer, _call, _reply

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "evolve_tiny.yaml"


class RoutedServer(ScriptedServer):
    """Chat completions for steps running side by side: each conversation is answered from the
    script of the step its brief names ("Candidate file: v0003.py"), whatever the order the
    requests of different steps arrive in; a script that ran out gives up. gates[node id] runs
    before the first answer to that step's conversation; default(node id) scripts a step that has
    no script of its own."""

    def __init__(self, scripts: dict, gates: dict | None = None, default=None):
        self.scripts, self.gates, self.default = scripts, gates or {}, default
        self.asked: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        super().__init__([])

    def next_item(self, body: dict):
        brief = next((m["content"] for m in body["messages"] if m["role"] == "user"), "") or ""
        found = re.search(r"Candidate file: (v\d+)\.py", brief)
        if not found:  # a supervisor's review: no advice
            return {"content": "No advice."}
        node = found.group(1)
        with self.lock:
            turn = self.asked[node]
            self.asked[node] += 1
        if turn == 0 and node in self.gates:
            try:
                self.gates[node]()
            except Exception as exc:  # seen by the test, which fails on it
                self.failures.append(f"{node}: {type(exc).__name__} {exc}")
        script = self.scripts.get(node) or (self.default(node) if self.default else [])
        return script[turn] if turn < len(script) else _reply(_call("give_up", {"reason": "done"}))


def _step(speed: int, *checks: str) -> list[dict]:
    """A step that writes its speed into the candidate, runs `checks` (test, benchmark), submits."""
    return [_reply(_call("edit_candidate", {"old": "TILE_N = 32", "new": f"TILE_N = 32  # speed: {speed}"})),
            *[_reply(_call(name, {})) for name in checks],
            _reply(_call("submit", {"rationale": f"speed {speed}"}))]


def _both_ask_first() -> dict:
    """Gates holding the first answers to v0001 and v0002 until both steps have asked: the two are
    then in flight at once, whatever the machine's speed."""
    barrier = threading.Barrier(2, timeout=60)
    return {"v0001": barrier.wait, "v0002": barrier.wait}


def _args(tmp_path, server, candidates: int) -> list[str]:
    return ["--config", str(TINY), "--set", f"run_dir={tmp_path / 'run'}", "--set", f"archive={tmp_path / 'archive'}",
            "--operator", "agent", "--candidates", str(candidates), "--set", "evaluation.gpus=[0, 1]",
            "--set", f"endpoint.base_url={server.url}", "--set", "endpoint.model=scripted",
            "--set", "endpoint.api_key_env=AVO_TEST_API_KEY", "--set", "endpoint.request_timeout_s=60",
            "--set", "agent.max_turns=8", "--set", "supervisor.stall_steps=100"]


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def _consistent(root: Path) -> Lineage:
    """The lineage as one history: ids unique and dense (none lost), every parent there (and its
    edge), nothing left pending, and each commit judged against the commit before it (the seed
    against none), the last of them the incumbent."""
    raw = json.loads((root / "lineage.json").read_text())["graph"]["nodes"]
    ids = [n["id"] for n in raw]
    assert sorted(ids) == [f"v{i:04d}" for i in range(len(ids))]
    lineage = Lineage.load(root)
    for node in lineage.nodes():
        assert all(p in lineage for p in node.parents)
        assert sorted(lineage.graph.predecessors(node.id)) == sorted(node.parents)
    assert lineage.nodes("pending") == []
    commits = sorted(lineage.nodes("committed"), key=lambda c: c.committed_at)
    assert [c.extra["judged_against"] for c in commits] == [None] + [c.id for c in commits[:-1]]
    assert lineage.best().id == commits[-1].id
    return lineage


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")  # two sm_90a GPUs as far as the run can tell
    monkeypatch.setenv("AVO_TEST_API_KEY", SECRET)
    evolve_fake_gpus.CALLS.clear()
    evolve_fake_gpus.HOOKS.clear()
    yield evolve_fake_gpus.CALLS
    evolve_fake_gpus.HOOKS.clear()


def test_two_steps_run_at_once_each_on_its_own_gpu_and_candidate(tmp_path, fake_gpus):
    speeds = {"v0001": 110, "v0002": 105, "v0003": 120, "v0004": 125}
    server = RoutedServer({"v0001": _step(110, "benchmark"), "v0002": _step(105, "test"),
                           "v0003": _step(120, "benchmark", "test"), "v0004": _step(125)}, gates=_both_ask_first())
    try:
        assert main(_args(tmp_path, server, candidates=5), evaluate_fn=fake_evaluate) == 0
    finally:
        server.close()
    assert server.failures == []
    lineage = _consistent(tmp_path / "archive")
    nodes = {n.id: n for n in lineage.nodes()}
    assert sorted(nodes) == ["v0000", *speeds] and all(nodes[i].operator == "agent" for i in speeds)
    assert lineage.best().id == "v0004"  # the fastest commits whichever order the steps ran in
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["candidates"] == 5 and len(state["steps"]) == 4  # the budget, not one step more

    # v0001 and v0002 were in flight at once, on the two GPUs, both from the seed's snapshot
    first, second = nodes["v0001"].extra["step"], nodes["v0002"].extra["step"]
    assert first["start"] < second["end"] and second["start"] < first["end"]
    assert {first["gpu"], second["gpu"]} == {0, 1}
    assert first["incumbent"] == second["incumbent"] == "v0000" and nodes["v0001"].parents == ["v0000"]

    # each step edited its own candidate file
    for node_id, value in speeds.items():
        text = (tmp_path / "run" / "candidates" / f"{node_id}.py").read_text()
        assert speed(text) == value and text.count(f"# speed: {value}") == 1

    # every GPU run of a step was on that step's GPU, held alone, and is in the per-GPU log by its tool
    runs = [c for c in fake_gpus if c["source"] in {f"{i}.py" for i in speeds}]
    assert runs and all(c["gpu"] == nodes[c["source"][:-3]].extra["step"]["gpu"] for c in runs)
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    assert gpu_overlaps(intervals) == []
    on_gpus = [r for r in intervals if r["gpu"] is not None]
    assert all(r["gpu"] == nodes[r["id"]].extra["step"]["gpu"] for r in on_gpus if r["id"] in speeds)
    by_stage = {stage: sorted({r["id"] for r in on_gpus if r["stage"] == stage}) for stage in ("test", "benchmark")}
    assert by_stage == {"test": ["v0002", "v0003"], "benchmark": ["v0001", "v0003"]}
    assert {r["id"] for r in on_gpus if r["stage"] == "judge"} == {"v0000", *speeds}
    # the benchmark compares with the step's snapshot, whatever another step committed since
    assert next(c for c in runs if c["source"] == "v0001.py" and c["incumbent"])["incumbent"] == "v0000.py"
    steps = [e for e in _events(tmp_path) if e["event"] == "step"]
    assert sorted(e["id"] for e in steps) == sorted(speeds) and {e["gpu"] for e in steps} == {0, 1}


def _wait_for(condition, what: str, seconds: float = 60.0) -> None:
    """A synchronisation point, not a timing assertion: poll until `condition()`, fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.02)


def _status(root: Path, node_id: str) -> str | None:
    lineage = Lineage.load(root)
    return lineage.get(node_id).status if node_id in lineage else None


@pytest.mark.parametrize("speed_b", [130, 110])
def test_a_commit_that_raced_another_is_judged_again_against_the_new_incumbent(tmp_path, fake_gpus, speed_b):
    """v0001 (speed 120) and v0002 both start from the seed; v0001's judge ends only once v0002's has
    begun (against the seed), and v0002's only once v0001 is recorded committed, so v0002's commit
    raced v0001's: it is judged again, on its own GPU, against v0001, and recorded by that second
    verdict."""
    archive = tmp_path / "archive"
    judging = threading.Event()

    def second(call):
        judging.set()
        _wait_for(lambda: _status(archive, "v0001") == "committed", "v0001's commit")

    evolve_fake_gpus.HOOKS.update({"v0001.py": lambda call: _wait_for(judging.is_set, "v0002's judge"),
                                   "v0002.py": second})
    server = RoutedServer({"v0001": _step(120), "v0002": _step(speed_b)}, gates=_both_ask_first())
    try:
        assert main(_args(tmp_path, server, candidates=3), evaluate_fn=fake_evaluate) == 0
    finally:
        server.close()
    assert server.failures == []
    lineage = _consistent(archive)
    a, b = lineage.get("v0001"), lineage.get("v0002")
    assert a.extra["step"]["incumbent"] == b.extra["step"]["incumbent"] == "v0000"  # both from the seed
    judges = {n: [(c["incumbent"], c["gpu"]) for c in fake_gpus if c["source"] == f"{n}.py"]
              for n in ("v0001", "v0002")}
    gpu_a, gpu_b = a.extra["step"]["gpu"], b.extra["step"]["gpu"]
    assert gpu_a != gpu_b
    assert judges == {"v0001": [("v0000.py", gpu_a)], "v0002": [("v0000.py", gpu_b), ("v0001.py", gpu_b)]}
    assert (a.status, a.extra["judged_against"]) == ("committed", "v0000")
    assert b.extra["judged_against"] == "v0001" and b.extra["rejudged"] == ["v0000"]
    assert b.extra["ratio"] == pytest.approx(speed_b / 120)  # the second verdict is the one recorded
    assert "judged again against v0001" in b.diagnosis
    assert b.status == ("committed" if speed_b > 120 else "rejected")
    assert lineage.best().id == ("v0002" if speed_b > 120 else "v0001")
    raced = [e for e in _events(tmp_path) if e["event"] == "rejudge"]
    assert [(e["id"], e["judged_against"], e["incumbent"], e["gpu"]) for e in raced] == [
        ("v0002", "v0000", "v0001", gpu_b)]
    # what the model was told is the recorded verdict
    told = [json.loads(line) for line in (tmp_path / "run" / "transcripts" / "v0002.jsonl").read_text().splitlines()]
    submitted = next(e for e in told if e.get("role") == "tool" and e.get("name") == "submit")
    assert f'"status": "{b.status}"' in submitted["content"]


def test_a_run_killed_with_steps_in_flight_loses_nothing_and_resumes(tmp_path, fake_gpus):
    """Killed (SIGKILL) while its second pair of steps waits on the model: every node recorded so
    far stays as it was, the two in flight are pending on disk with their candidate files; the
    resumed run records them crashed and spends the rest of the budget, one history throughout."""
    arrived = {n: threading.Event() for n in ("v0003", "v0004")}
    release = threading.Event()

    def hold(node_id):
        def gate():
            arrived[node_id].set()
            release.wait(120)
        return gate

    server = RoutedServer({"v0001": _step(110), "v0002": _step(120)},
                          gates={"v0003": hold("v0003"), "v0004": hold("v0004")},
                          default=lambda node_id: _step(100 + 10 * int(node_id[1:])))
    archive, run_dir = tmp_path / "archive", tmp_path / "run"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "evolve_fake_gpus.py"),
                             *_args(tmp_path, server, candidates=6)], cwd=REPO, stdout=log, stderr=log)
    try:
        for node_id, event in arrived.items():
            _wait_for(lambda e=event: e.is_set() or proc.poll() is not None, f"{node_id}'s step", 120)
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        release.set()
        killed = Lineage.load(archive)
        before = {n.id: n.status for n in killed.nodes()}
        assert before["v0003"] == before["v0004"] == "pending"
        assert all(before[n] in ("committed", "rejected") for n in ("v0001", "v0002"))
        assert (run_dir / "candidates" / "v0003.py").exists() and (run_dir / "candidates" / "v0004.py").exists()
        assert json.loads((run_dir / "state.json").read_text())["candidates"] == 3

        assert main(["--resume", str(run_dir)], evaluate_fn=fake_evaluate) == 0
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
        log.close()
        server.close()
    lineage = _consistent(archive)
    after = {n.id: n for n in lineage.nodes()}
    assert sorted(after) == [f"v{i:04d}" for i in range(8)]  # 3 more steps: the budget of 6 candidates
    assert all(after[n].status == before[n] for n in ("v0000", "v0001", "v0002"))  # recorded stays recorded
    assert after["v0003"].status == after["v0004"].status == "crashed"
    assert "the run stopped" in after["v0003"].diagnosis
    assert lineage.best().id == "v0007" and json.loads((run_dir / "state.json").read_text())["candidates"] == 6


def test_profile_runs_on_the_steps_gpu_and_holds_it(tmp_path, monkeypatch):
    """A step's profile tool pins Nsight Compute to the step's GPU (CUDA_VISIBLE_DEVICES) and holds
    that GPU while it runs: the per-GPU log has the profile stage, and every ncu call inside it."""
    import os
    import stat
    from types import SimpleNamespace

    from avo import tools
    from avo.lineage import Candidate
    from avo.progress import Progress
    from avo.workbench import HarnessWorkbench

    text = jit.render("naive_attention", jit.load_knobs("naive_attention", {"tile_n": 32})).read_text()
    lineage = Lineage(tmp_path / "archive")
    lineage.add(Candidate(id="v0000", status="committed", template="naive_attention"), text)
    candidate = tmp_path / "run" / "candidates" / "v0001.py"
    candidate.parent.mkdir(parents=True)
    candidate.write_text(text)
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
echo "$(date +%s.%N) gpu=$CUDA_VISIBLE_DEVICES $*" >> {tmp_path / 'ncu_calls'}
case " $* " in *" --import "*) exec cat {REPO / 'tests' / 'data' / 'ncu_raw_sample.csv'} ;; esac
while [ $# -gt 0 ]; do [ "$1" = -o ] && touch "$2.ncu-rep"; shift; done
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")
    run = SimpleNamespace(progress=Progress(tmp_path / "events.jsonl", "t", live=False))
    ctx = tools.Context(candidate=candidate, workbench=HarnessWorkbench(run, SimpleNamespace(id="v0001"), gpu=1),
                        lineage=lineage, parent_id="v0000", node_id="v0001", run_dir=tmp_path / "run", suite="tiny",
                        arch="sm_90a")
    out = tools.call(ctx, "profile", {})
    assert out.ok, out.text
    calls = (tmp_path / "ncu_calls").read_text().splitlines()
    launches = [c for c in calls if "--import" not in c]
    assert len(launches) == 2 and all(" gpu=1 " in c for c in launches)  # the candidate and v0000, on GPU 1
    (stage,) = read_intervals(tmp_path / "events.jsonl")
    assert (stage["id"], stage["stage"], stage["gpu"]) == ("v0001", "profile", 1)
    assert all(stage["start"] <= float(c.split()[0]) <= stage["end"] for c in calls)


def test_the_incumbent_is_the_latest_commit_not_the_latest_created(tmp_path):
    """Steps side by side (and a knob batch, recorded slowest first) commit in another order than
    their nodes were created: the incumbent is the node recorded committed last. A lineage written
    before commit times were kept falls back on creation times."""
    from avo.lineage import Candidate

    lineage = Lineage(tmp_path)
    lineage.add(Candidate(id="v0000", status="committed", created=1.0), "seed")
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="pending", created=2.0))
    lineage.add(Candidate(id="v0002", parents=["v0000"], status="pending", created=3.0))
    lineage.add(Candidate(id="v0002", parents=["v0000"], status="committed", created=3.0), "b")
    lineage.add(Candidate(id="v0001", parents=["v0000"], status="committed", created=2.0), "a")
    assert lineage.best().id == "v0001" and Lineage.load(tmp_path).best().id == "v0001"
    assert lineage.get("v0002").committed_at < lineage.get("v0001").committed_at
    for node_id in ("v0000", "v0001", "v0002"):  # as an older archive has them
        lineage.update(node_id, committed_at=None)
    assert lineage.best().id == "v0002"
