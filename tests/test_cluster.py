"""Candidates spread over GPUs (avo.cluster): the per-GPU log shows that no two candidates share
a GPU, on one host with fake GPUs and on a local Ray cluster; the knob operator streams on Ray as
on one host; on Ray a candidate compiles in a CPU task first and its GPU task follows it to its
node; compile-only screening spreads over the Ray cluster's workers; a Ray worker killed
mid-candidate (judging or compiling) is recorded as lost and re-queued, and the lineage keeps
everything committed; Ctrl-C cancels the tasks in flight."""

import json
import os
import re
import time
from pathlib import Path

import pytest

from avo import jit
from avo.cluster import LOST_RETRIES, RayBackend, gpu_overlaps, read_intervals
from avo.evolve import main
from avo.lineage import Lineage
from tests.evolve_fake import fake_evaluate

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "evolve_tiny.yaml"


def _args(tmp_path, *more):
    return ["--config", str(TINY), "--set", f"run_dir={tmp_path / 'run'}", "--set",
            f"archive={tmp_path / 'archive'}", *more]


def _events(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]


def test_the_backend_keys_are_checked(monkeypatch):
    from avo.config import ConfigError, load_config

    config = load_config(TINY, ["evaluation.backend=ray", "evaluation.ray_address=auto"])
    assert (config.evaluation.backend, config.evaluation.ray_address) == ("ray", "auto")
    assert load_config(TINY).evaluation.backend == "local"
    with pytest.raises(ConfigError, match="evaluation.backend 'slurm': use local or ray"):
        load_config(TINY, ["evaluation.backend=slurm"])
    with pytest.raises(ConfigError, match="evaluation.ray_address: 6379 is an integer, expected a string or null"):
        load_config(TINY, ["evaluation.ray_address=6379"])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r'needs Ray: pip install -e "\.\[ray\]"'):
        load_config(TINY, ["evaluation.backend=ray"])


def test_the_overlap_check_finds_two_candidates_on_one_gpu():
    a = {"id": "v1", "stage": "judge", "gpu": 0, "host": None, "start": 0.0, "end": 2.0}
    assert gpu_overlaps([a, {**a, "id": "v2", "start": 2.0, "end": 3.0}]) == []  # back to back
    assert gpu_overlaps([a, {**a, "id": "v2", "gpu": 1, "start": 1.0, "end": 3.0}]) == []  # another GPU
    assert gpu_overlaps([a, {**a, "id": "v2", "host": "10.0.0.2", "start": 1.0}]) == []  # another host
    assert gpu_overlaps([a, {**a, "id": "v2", "gpu": None, "start": 1.0}]) == []  # a compile: no GPU
    inside = {**a, "id": "v3", "start": 0.5, "end": 0.7}
    assert gpu_overlaps([{**a, "end": 9.0}, {**a, "id": "v2", "start": 3.0, "end": 4.0}, inside]) == [
        ({**a, "end": 9.0}, inside), ({**a, "end": 9.0}, {**a, "id": "v2", "start": 3.0, "end": 4.0})]


def test_two_fake_gpus_never_hold_two_candidates_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(jit, "current_arch", lambda: "sm_90a")  # a GPU as far as the run can tell
    monkeypatch.setenv("AVO_FAKE_EVAL_SECONDS", "0.2")
    assert main(_args(tmp_path, "--candidates", "7", "--set", "evaluation.gpus=[0, 1]"),
                evaluate_fn=fake_evaluate) == 0
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    events = _events(tmp_path)
    rejudged = sum(e["event"] == "rejudge" for e in events)  # a commit that raced another's is judged again
    assert len(intervals) == 7 + rejudged and {r["stage"] for r in intervals} == {"judge"}
    assert sorted({r["gpu"] for r in intervals}) == [0, 1]
    assert gpu_overlaps(intervals) == []
    # and the two GPUs did work side by side: the first two after the seed overlap across them
    first, second = sorted(intervals, key=lambda r: r["start"])[1:3]
    assert first["gpu"] != second["gpu"] and second["start"] < first["end"]
    # each candidate's stage is announced (its GPU, for the progress view) before its verdict
    for record in intervals:
        started = next(i for i, e in enumerate(events) if e["event"] == "stage" and e["id"] == record["id"])
        recorded = next(i for i, e in enumerate(events) if e["event"] == "candidate" and e["id"] == record["id"])
        assert events[started]["gpu"] == record["gpu"] and started < recorded


def test_concurrent_batches_wait_for_a_busy_gpu(tmp_path):
    """Two callers at once (e.g. two agents' steps) on the same GPU list: the GPU takes one at a time."""
    import threading

    from avo.cluster import evaluate_local
    from avo.progress import Progress

    progress = Progress(tmp_path / "events.jsonl", "t", live=False)

    def sleepy(source, gpu=None, **_):
        time.sleep(0.2)
        return source

    threads = [threading.Thread(target=evaluate_local, args=(sleepy, [(f"v{i}", f"s{i}")], {}, [0], progress))
               for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    intervals = read_intervals(tmp_path / "events.jsonl")
    assert len(intervals) == 3 and gpu_overlaps(intervals) == []
    # with two GPUs, a one-candidate call takes the idle one while the other is held
    holding, release = threading.Event(), threading.Event()

    def hold(source, gpu=None, **_):
        holding.set()
        release.wait(10)
        return gpu

    busy = threading.Thread(target=evaluate_local, args=(hold, [("v3", "s3")], {}, [0, 1], progress))
    busy.start()
    assert holding.wait(10)
    assert evaluate_local(lambda source, gpu=None, **_: gpu, [("v4", "s4")], {}, [0, 1], progress) == [1]
    release.set()
    busy.join()


@pytest.mark.slow
def test_compiles_go_first_on_the_cpu_budget_and_the_gpu_waits_only_for_the_judge(tmp_path, monkeypatch):
    """Two real naive-template variants on one fake GPU, a budget of one build at a time: each is
    compiled before its judge starts (the judge finds everything in the cache), and the second
    compiles while the first is being judged."""
    from avo import cluster
    from avo.progress import Progress
    from avo.suites import load_suite

    monkeypatch.setattr(cluster, "_CORES", cluster._Cores(1))
    specs = load_suite("tiny").specs
    sources = [jit.render("naive_attention", jit.load_knobs("naive_attention", knobs))
               for knobs in ({"block_m": 64, "tile_n": 64}, {"block_m": 256, "tile_n": 16})]
    built_here = []

    def judge(source, gpu=None, **kwargs):
        before = jit.compile_stats()["compiles"]
        jit.compile_many(source, specs, kwargs["archs"], run=False)
        built_here.append(jit.compile_stats()["compiles"] - before)
        time.sleep(2.0)
        return gpu

    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    kwargs = {"suite": "tiny", "archs": ("sm_90a",), "compile_only": None}
    jobs = [("v0001", sources[0]), ("v0002", sources[1])]
    assert cluster.evaluate_local(judge, jobs, kwargs, [0], progress, compile_first=True) == [0, 0]
    assert built_here == [0, 0]  # nothing left to build once a candidate reaches its GPU
    stages = {(r["id"], r["stage"]): r for r in read_intervals(tmp_path / "events.jsonl")}
    for node_id, _ in jobs:
        assert stages[(node_id, "compile")]["end"] <= stages[(node_id, "judge")]["start"]
        assert stages[(node_id, "compile")]["gpu"] is None and stages[(node_id, "judge")]["gpu"] == 0
    first, second = stages[("v0001", "compile")], stages[("v0002", "compile")]
    assert first["end"] <= second["start"] or second["end"] <= first["start"]  # one build at a time
    later = second if first["start"] < second["start"] else first
    judged = stages[("v0001" if later is second else "v0002", "judge")]
    assert later["start"] < judged["end"] and judged["start"] < later["end"]  # compiled while the other was judged


def test_the_progress_view_shows_each_gpus_candidate_and_stage(tmp_path):
    from avo.progress import Progress

    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    progress.event("stage", id="v0003", stage="judge", gpu=1, host=None)
    progress.event("stage", id="v0004", stage="evaluate", gpu=0, host="10.0.0.7")
    progress.event("stage", id="v0005", stage="compile", gpu=None, host=None)
    panel = progress._panel()
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(panel)
    text = console.export_text()
    assert "gpu1  v0003  judge" in text and "10.0.0.7 gpu0  v0004  evaluate" in text and "cpu  v0005  compile" in text
    progress.event("stage_done", id="v0003", stage="judge", gpu=1, host=None, start=0.0, end=1.5)
    assert set(progress.in_flight) == {"v0004", "v0005"}
    line = progress._line("stage_done", {"id": "v0003", "stage": "judge", "gpu": 1, "start": 0.0, "end": 1.5})
    assert line.endswith("gpu1  v0003 judge done in 1.5 s")


def test_no_ray_cluster_at_the_address_is_a_one_line_error(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    if ray.is_initialized() or Path("/tmp/ray/ray_current_cluster").exists():
        pytest.skip("a Ray cluster is up on this host: `auto` would find it")
    env = {k: os.environ.pop(k) for k in ("RAY_ADDRESS",) if k in os.environ}
    try:  # "auto" with no `ray start` on this host: Ray answers at once
        assert main(_args(tmp_path, "--set", "evaluation.backend=ray", "--set", "evaluation.ray_address=auto")) == 2
    finally:
        os.environ.update(env)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("avo.evolve: evaluation.ray_address 'auto': no Ray cluster there (")
    assert err[-1].endswith("or leave ray_address unset for one of this host's own")


# -- a local Ray cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray cluster of this machine only (127.0.0.1): 2 CPUs and 2 GPUs Ray places tasks on (it
    does not look at the hardware for declared GPUs), shut down after the module. Its workers get
    a kernel cache of their own: kernels other test modules compiled would make every compile
    instant, and the side-by-side timing of two compiles would show nothing."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray connection is already open in this process")
    cache = tmp_path_factory.mktemp("ray_kernel_cache")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", runtime_env={"env_vars": {"AVO_CACHE_DIR": str(cache)}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_compile_only_screening_spreads_over_the_ray_workers(tmp_path, ray_cluster):
    """The real cascade (static check, sandboxed compile) on the naive template's knob variants,
    as Ray tasks: the seed, then a batch of two on the cluster's two CPUs side by side."""
    assert main(_args(tmp_path, "--candidates", "3", "--set", "evaluation.backend=ray")) == 0
    lineage = Lineage.load(tmp_path / "archive")
    nodes = lineage.nodes()
    assert [n.operator for n in nodes] == ["seed", "knobs", "knobs"]
    assert {n.status for n in nodes} == {"screened"}  # the cluster's GPUs are declared, not real: screened
    assert all(n.extra["compile_reports"]["sm_90a"] for n in nodes)
    assert all(Path(n.source_path).exists() for n in nodes)  # the driver wrote every source
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    assert [r["stage"] for r in intervals] == ["compile"] * 3 and all(r["gpu"] is None for r in intervals)
    assert len({r["host"] for r in intervals}) == 1  # one node: this machine
    first, second = sorted(intervals[1:], key=lambda r: r["start"])
    assert second["start"] < first["end"]  # the batch of two compiled side by side


def _dies_once(marker: Path, victim: str):
    """fake_evaluate, but the Ray worker evaluating `victim` kills itself the first time."""

    def evaluate(source, **kwargs):
        if Path(source).stem == victim and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # as a node or worker lost mid-candidate: no verdict, no exception
        return fake_evaluate(source, **kwargs)

    return evaluate


@pytest.mark.slow
def test_a_worker_killed_mid_candidate_is_lost_requeued_and_nothing_committed_is_lost(
        tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setattr(RayBackend, "gpu_arch", lambda self: "sm_90a")  # measure on the declared GPUs
    marker = tmp_path / "killed"
    evaluate = _dies_once(marker, victim="v0002")
    assert main(_args(tmp_path, "--candidates", "5", "--set", "evaluation.backend=ray"), evaluate_fn=evaluate) == 0
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a Ray worker died, not the driver
    events = _events(tmp_path)
    lost = [e for e in events if e["event"] == "lost"]
    assert [(e["id"], e["attempt"], e["requeued"]) for e in lost] == [("v0002", 1, True)]
    assert "Error" in lost[0]["error"]
    recorded = [e for e in events if e["event"] == "candidate"]
    assert sorted(e["id"] for e in recorded) == [f"v000{i}" for i in range(5)]  # each recorded once
    again = next(e for e in recorded if e["id"] == "v0002")
    assert events.index(lost[0]) < events.index(again) and again["status"] in ("committed", "rejected")
    assert again["diagnosis"].startswith("fake score")  # its real verdict, from the second attempt
    lineage = Lineage.load(tmp_path / "archive")
    assert len(lineage) == 5 and not lineage.nodes("pending")
    committed = lineage.nodes("committed")
    assert committed and all((lineage.root / n.source_path).exists() for n in committed)
    # the declared GPUs took one candidate at a time each, as Ray placed them (a commit that raced
    # another's is judged again: the knob operator streams on Ray too)
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    rejudged = sum(e["event"] == "rejudge" for e in events)
    assert {r["stage"] for r in intervals} == {"evaluate"} and len(intervals) == 5 + rejudged
    assert {r["gpu"] for r in intervals} <= {0, 1} and gpu_overlaps(intervals) == []


@pytest.mark.slow
def test_a_candidate_lost_every_time_is_recorded_crashed_after_bounded_retries(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setattr(RayBackend, "gpu_arch", lambda self: None)

    def always_dies(source, **kwargs):
        if Path(source).stem == "v0001":
            os._exit(1)
        return fake_evaluate(source, **kwargs)

    assert main(_args(tmp_path, "--candidates", "2", "--set", "evaluation.backend=ray"), evaluate_fn=always_dies) == 0
    lost = [e for e in _events(tmp_path) if e["event"] == "lost"]
    assert [e["attempt"] for e in lost] == list(range(1, LOST_RETRIES + 2)) and not lost[-1]["requeued"]
    node = Lineage.load(tmp_path / "archive").get("v0001")
    assert node.status == "crashed" and node.diagnosis.startswith(f"lost {LOST_RETRIES + 1} times")


@pytest.mark.slow
def test_knob_proposals_stream_on_ray_with_lookahead_per_gpu_and_spend_the_budget_exactly(
        tmp_path, ray_cluster, monkeypatch):
    """On Ray the knob operator streams as on one host: 2 GPUs x (1 judged + 1 ahead) proposals in
    flight (batches would hold 2), never two judges on one GPU, every candidate recorded once."""
    monkeypatch.setattr(RayBackend, "gpu_arch", lambda self: "sm_90a")  # measure on the declared GPUs
    monkeypatch.setenv("AVO_FAKE_EVAL_SECONDS", "0.3")
    archive = tmp_path / "archive"

    def counting(source, **kwargs):  # in a Ray worker, after the judge's time: reserved, not yet recorded
        verdict = fake_evaluate(source, **kwargs)
        pending = len(Lineage.load(archive).nodes("pending"))
        verdict.diagnosis = f"{verdict.diagnosis}; pending {pending}"
        return verdict

    assert main(_args(tmp_path, "--candidates", "9", "--set", "evaluation.backend=ray", "--set",
                      "evaluation.lookahead=1"), evaluate_fn=counting) == 0
    events = _events(tmp_path)
    recorded = [e for e in events if e["event"] == "candidate"]
    assert sorted(e["id"] for e in recorded) == [f"v000{i}" for i in range(9)]  # the budget, exactly
    assert events[-1]["event"] == "stop" and "candidate budget" in events[-1]["reason"]
    pending = [int(re.search(r"; pending (\d+)", e["diagnosis"]).group(1)) for e in recorded]
    assert pending[0] == 1 and max(pending[1:]) == 4  # the seed alone, then 4 in flight, never more
    lineage = Lineage.load(tmp_path / "archive")
    assert len(lineage) == 9 and not lineage.nodes("pending")
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    rejudged = sum(e["event"] == "rejudge" for e in events)
    assert len(intervals) == 9 + rejudged and {r["gpu"] for r in intervals} == {0, 1}
    assert gpu_overlaps(intervals) == []


@pytest.mark.slow
def test_on_ray_a_candidate_compiles_in_a_cpu_task_first_and_is_judged_on_its_node(tmp_path, ray_cluster):
    """Two real naive-template variants through RayBackend.map with compile_first: each builds in a
    task without a GPU (logged as a compile on no GPU), and its GPU task, placed on that node,
    finds every kernel in the node's cache. A source the static check refuses is never compiled:
    its evaluate says why."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from avo.evaluate import Verdict
    from avo.progress import Progress

    backend = RayBackend(None)  # the fixture's cluster: one node
    placed = []

    class Spy:  # the GPU task's options, as map asks Ray for them
        def __init__(self, task):
            self.task = task

        def options(self, **options):
            placed.append(options.get("scheduling_strategy"))
            return self.task.options(**options)

    backend._task = Spy(backend._task)

    def judge(source, incumbent=None, gpu=None, **kwargs):  # in the GPU task: what is left to build
        import ray

        if "import os" in Path(source).read_text():
            return Verdict("failed_compile", "static", "refused")
        before = jit.compile_stats()["compiles"]
        jit.compile_many(source, jit_specs(kwargs["suite"]), kwargs["archs"], run=False)
        built = jit.compile_stats()["compiles"] - before
        return Verdict("screened", "compile", f"built {built} on {ray.get_runtime_context().get_node_id()}")

    sources = [jit.render("naive_attention", jit.load_knobs("naive_attention", knobs))
               for knobs in ({"block_m": 64, "tile_n": 32}, {"block_m": 128, "tile_n": 16})]
    refused = tmp_path / "refused.py"
    refused.write_text("import os\nKERNEL = None\n")
    jobs = [("v0001", sources[0]), ("v0002", sources[1]), ("v0003", refused)]
    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    kwargs = {"suite": "tiny", "archs": ("sm_90a",), "compile_only": None, "timeout_s": 300.0}
    verdicts = backend.map(judge, jobs, kwargs, progress, compile_first=True)
    node = ray_cluster.get_runtime_context().get_node_id()  # the driver's node: the only one
    assert [v.diagnosis for v in verdicts] == [f"built 0 on {node}", f"built 0 on {node}", "refused"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    done = {(e["id"], e["stage"]): e for e in events if e["event"] == "stage_done"}
    assert set(done) == {("v0001", "compile"), ("v0001", "evaluate"), ("v0002", "compile"), ("v0002", "evaluate"),
                         ("v0003", "evaluate")}  # no compile task for the refused source
    for node_id in ("v0001", "v0002"):
        compiled, judged = done[(node_id, "compile")], done[(node_id, "evaluate")]
        assert compiled["gpu"] is None and compiled["host"] == judged["host"] and judged["gpu"] in (0, 1)
        assert compiled["end"] <= judged["start"]
        started = [e["stage"] for e in events if e["event"] == "stage" and e["id"] == node_id]
        assert started == ["compile", "evaluate"]
    # the GPU tasks of the compiled two follow their compile to its node (soft: elsewhere if it is gone)
    affinities = [s for s in placed if s is not None]
    assert len(placed) == 3 and len(affinities) == 2
    assert all(isinstance(s, NodeAffinitySchedulingStrategy) and s.node_id == node and s.soft for s in affinities)


@pytest.mark.slow
def test_on_ray_a_job_past_the_stop_is_left_unjudged(tmp_path, ray_cluster):
    """may_start (evolve's --stop-after) is asked before a GPU task is submitted: False leaves the
    job unjudged (None), after its compile task or, for a source with nothing to build, at once."""
    from avo.progress import Progress

    backend = RayBackend(None)
    source = jit.render("naive_attention", jit.load_knobs("naive_attention", {"block_m": 64, "tile_n": 32}))
    refused = tmp_path / "refused.py"
    refused.write_text("import os\nKERNEL = None\n")
    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    kwargs = {"suite": "tiny", "archs": ("sm_90a",), "compile_only": None, "timeout_s": 300.0}
    verdicts = backend.map(fake_evaluate, [("v0001", source), ("v0002", refused)], kwargs, progress,
                           compile_first=True, may_start=lambda: False)
    assert verdicts == [None, None]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {(e["id"], e["stage"]) for e in events if e["event"] == "stage_done"} == {("v0001", "compile")}


def jit_specs(suite: str):
    from avo.suites import load_suite

    return load_suite(suite).specs


@pytest.mark.slow
def test_a_worker_killed_in_its_compile_task_is_lost_requeued_and_the_lineage_intact(
        tmp_path, ray_cluster, monkeypatch):
    """Compiles ahead on Ray (a stand-in build, so that the fake evaluate can judge), the Ray worker
    building v0002 dies the first time: `lost` at its compile, built again, then judged once."""
    from avo import cluster

    monkeypatch.setattr(RayBackend, "gpu_arch", lambda self: "sm_90a")
    monkeypatch.setenv("AVO_FAKE_EVAL_SECONDS", "0.1")
    marker = tmp_path / "killed"

    def build(source, kwargs):  # in the compile task
        if Path(source).stem == "v0002" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)

    monkeypatch.setattr(cluster, "_build_kernels", build)
    mapped = RayBackend.map  # the fake evaluate does not read the kernel cache: compile first anyway
    monkeypatch.setattr(RayBackend, "map", lambda self, *args, **kwargs: mapped(self, *args, **{
        **kwargs, "compile_first": True}))
    assert main(_args(tmp_path, "--candidates", "5", "--set", "evaluation.backend=ray", "--set",
                      "evaluation.lookahead=0"), evaluate_fn=fake_evaluate) == 0
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    events = _events(tmp_path)
    lost = [e for e in events if e["event"] == "lost"]
    assert [(e["id"], e["stage"], e["attempt"], e["requeued"]) for e in lost] == [("v0002", "compile", 1, True)]
    recorded = [e for e in events if e["event"] == "candidate"]
    assert sorted(e["id"] for e in recorded) == [f"v000{i}" for i in range(5)]  # each recorded once
    again = next(e for e in recorded if e["id"] == "v0002")
    assert events.index(lost[0]) < events.index(again) and again["diagnosis"].startswith("fake score")
    lineage = Lineage.load(tmp_path / "archive")
    assert len(lineage) == 5 and not lineage.nodes("pending")
    committed = lineage.nodes("committed")
    assert committed and all((lineage.root / n.source_path).exists() for n in committed)
    assert all(n.parents for n in lineage.nodes() if n.operator == "knobs")  # each from a committed parent
    intervals = read_intervals(tmp_path / "run" / "events.jsonl")
    for node_id in (f"v000{i}" for i in range(5)):  # every judge (a raced commit's again) after its compile
        mine = sorted((r for r in intervals if r["id"] == node_id), key=lambda r: r["start"])
        assert [r["stage"] for r in mine] == ["compile", "evaluate"] * (len(mine) // 2) and mine
        for compiled, judged in zip(mine[::2], mine[1::2], strict=True):
            assert compiled["gpu"] is None and judged["gpu"] in (0, 1) and compiled["end"] <= judged["start"]
    assert gpu_overlaps(intervals) == []


@pytest.mark.slow
def test_cancel_stops_the_tasks_of_every_map_call_in_flight(tmp_path, ray_cluster, monkeypatch):
    """Ctrl-C while threads wait in RayBackend.map (the knob operator streaming): cancel() makes each
    call raise, and the compile task it waited on is gone: its CPUs are free for the next task."""
    import threading

    from avo import cluster
    from avo.progress import Progress

    def build(source, kwargs):  # a compile that would hold both CPUs for a minute
        time.sleep(60)

    monkeypatch.setattr(cluster, "_build_kernels", build)
    backend = RayBackend(None)
    progress = Progress(tmp_path / "events.jsonl", "t", live=False)
    source = jit.render("naive_attention", jit.load_knobs("naive_attention", {}))
    kwargs = {"suite": "tiny", "archs": ("sm_90a",), "compile_only": None}
    raised = []

    def call():
        try:
            backend.map(fake_evaluate, [("v0001", source)], kwargs, progress, compile_first=True)
        except BaseException as exc:  # noqa: BLE001 - what map raised is the test's subject
            raised.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    events = tmp_path / "events.jsonl"
    for _ in range(300):  # the compile task has started on a worker
        if events.exists() and '"stage": "compile"' in events.read_text():
            break
        time.sleep(0.1)
    backend.cancel()
    thread.join(30)
    assert not thread.is_alive() and type(raised[0]).__name__ == "_Cancelled"
    assert "stage_done" not in events.read_text()
    probe = ray_cluster.remote(lambda: "ran").options(num_cpus=2)  # the 2 CPUs the compile held
    assert ray_cluster.get(probe.remote(), timeout=30) == "ran"
