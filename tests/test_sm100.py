"""The Blackwell family flash_fwd_sm100 (dsl_templates/flash_fwd_sm100) and the resource checks of
avo.resources.

CPU (CI): every specialization of the paper, gqa, hdim64 and hdim256 suites compiles for sm_100a without a
GPU; the PTX has the instruction families of the design (tcgen05.mma, tcgen05.alloc/dealloc, TMA
loads and stores, setmaxnreg); the resources pass avo.resources.check_report (TMEM columns
allocated and freed, shared memory, the setmaxnreg split within the launch allocation, barrier
counts); no spills. The checks themselves are tested on PTX that breaks each rule.

GPU (a B200 only, the first thing its owner runs): outputs and LSE against the fp32 reference
through avo.verify.check.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import pytest

from avo import jit, resources
from avo.build import import_kernel_module
from avo.spec import AttentionSpec
from avo.suites import ShapeConfig, load_suite

FAMILY = "flash_fwd_sm100"
ARCH = "sm_100a"
SUITES = ("paper", "gqa", "hdim64", "hdim256")
KNOBS = jit.knob_space(FAMILY)


def suite_specs() -> list[AttentionSpec]:
    seen: dict[AttentionSpec, None] = {}
    for name in SUITES:
        for spec in load_suite(name).specs:
            seen.setdefault(spec)
    # fp16 is in no suite: one specialization keeps it compiled
    seen.setdefault(AttentionSpec("fp16", 128, True, 1))
    return list(seen)


SPECS = suite_specs()


def source_for(spec: AttentionSpec, **change):
    knobs = jit.load_knobs(FAMILY, change, spec=spec)
    return jit.render(FAMILY, knobs)


@pytest.fixture(scope="module")
def compiled():
    """{spec: CompiledKernel} for SPECS, each distinct source built once (one build process per
    source, two sources side by side), with the wall time of the whole sweep."""
    by_source: dict = {}
    for spec in SPECS:
        by_source.setdefault(source_for(spec), []).append(spec)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(jit.compile_many, src, specs, (ARCH,), run=False, trusted=True)
                   for src, specs in by_source.items()]
        results = {}
        for future in futures:
            for (spec, _arch), kernel in future.result().items():
                results[spec] = kernel
    return results, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# knobs and can_implement
# ---------------------------------------------------------------------------------------------
def test_defaults_are_in_space_and_implementable():
    for spec in SPECS + [AttentionSpec("bf16", 64, False, 8), AttentionSpec("fp16", 64, True, 4)]:
        knobs = KNOBS.default_knobs(spec)
        for f in fields(KNOBS.Knobs):
            assert getattr(knobs, f.name) in KNOBS.SPACE[f.name], (f.name, knobs)
        ok, reason = jit.implementable(source_for(spec), [spec])
        assert ok, (spec, reason)
        module = import_kernel_module(source_for(spec))
        assert module.KERNEL.smem_bytes(spec) == KNOBS.smem_bytes(spec.head_dim, 2, knobs)
        assert module.KERNEL.tmem_columns(spec) == KNOBS.tmem_columns(spec.head_dim, knobs) <= 512


@pytest.mark.parametrize(
    "spec, change, words",
    [
        # two Q tiles at d256: S0 + S1 + O0 + O1 = 768 columns (the d256 default takes one tile)
        (AttentionSpec("bf16", 256), {}, "768 TMEM columns"),
        (AttentionSpec("bf16", 96), {}, "head_dim 96"),
        # 208 x 2 + 80 + 48 = 544 > 512 per thread summed over warp groups: 69,632 > 65,536
        (AttentionSpec("bf16", 128), dict(softmax_regs=208), "65536 it gets at launch"),
        (AttentionSpec("bf16", 128), dict(kv_stages=3), "shared memory"),
    ],
)
def test_can_implement_rejects_with_reason(spec, change, words):
    base = AttentionSpec("bf16", 128)
    ok, reason = jit.implementable(source_for(base, **change), [spec])
    assert not ok
    assert words in reason


def test_space_sample_answers_can_implement():
    """Any point of SPACE renders, imports and gets a yes or a no with a reason; the accepted ones
    fit TMEM, shared memory and the launch register allocation by the knobs module's own count."""
    rng = random.Random(0)
    for _ in range(12):
        values = {k: rng.choice(v) for k, v in KNOBS.SPACE.items()}
        knobs = KNOBS.Knobs(**values)
        module = import_kernel_module(jit.render(FAMILY, knobs))
        for spec in (AttentionSpec("bf16", 64, True, 4), AttentionSpec("bf16", 128),
                     AttentionSpec("fp16", 256, True, 8)):
            ok, reason = module.KERNEL.can_implement(spec)
            assert isinstance(ok, bool) and (ok or reason)
            if ok:
                assert KNOBS.tmem_columns(spec.head_dim, knobs) <= 512
                assert KNOBS.smem_bytes(spec.head_dim, 2, knobs) <= resources.LIMITS[ARCH]["smem_bytes"]
                assert 128 * sum(module.REGISTER_SPLIT) <= 65536


# ---------------------------------------------------------------------------------------------
# every suite specialization compiles for sm_100a, with the design's instructions and resources
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key())
def test_compiles_for_sm100a_with_resources_checked(compiled, spec):
    kernel = compiled[0][spec]
    assert isinstance(kernel, jit.CompiledKernel), kernel
    report = dict(kernel.report)
    module = import_kernel_module(source_for(spec))
    report["register_split"] = list(module.KERNEL.register_split)
    assert resources.check_report(report, ARCH, kernel.artifact_dir) == []

    facts = resources.ptx_facts((kernel.artifact_dir / "kernel.ptx").read_text())
    assert facts["tcgen05_mma"] > 0 and facts["wgmma"] == 0
    # one allocation of the whole TMEM, freed once, the permit given up
    assert [a["columns"] for a in facts["tcgen05_alloc"]] == [512]
    assert [d["columns"] for d in facts["tcgen05_dealloc"]] == [512]
    assert facts["tcgen05_relinquish"] == 1
    assert facts["tcgen05_ld"] > 0 and facts["tcgen05_st"] > 0 and facts["tcgen05_commit"] > 0
    assert facts["tma_loads"] > 0 and facts["tma_stores"] > 0
    assert sorted(set(facts["setmaxnreg"])) == sorted(
        {("inc", module.SOFTMAX_REGS), ("dec", module.CORRECTION_REGS), ("dec", module.OTHER_REGS)})
    # the launch allocation is the one can_implement budgets against
    assert report["threads_per_block"] == module.NUM_THREADS == 512
    assert report["registers"] == module.LAUNCH_REGS == 128
    assert 128 * sum(module.REGISTER_SPLIT) <= report["registers"] * report["threads_per_block"]
    assert report["stack_frame_bytes"] == 0, "spills"
    assert report["dynamic_smem_bytes"] + report["static_smem_bytes"] <= resources.LIMITS[ARCH]["smem_bytes"]
    assert report["dynamic_smem_bytes"] == module.KERNEL.smem_bytes(spec)  # can_implement's figure is exact
    assert report["compile_seconds"] > 0


def test_compile_times_reported(compiled, capsys):
    kernels, wall = compiled
    with capsys.disabled():
        print(f"\nflash_fwd_sm100 for {ARCH}: {len(kernels)} specializations, sweep {wall:.0f} s wall"
              " (0 when the kernel cache was warm)")
        for spec, kernel in kernels.items():
            r = kernel.report
            print(f"  {spec.key():24s} compile {r['compile_seconds']:6.1f} s  regs {r['registers']}"
                  f"  smem {r['dynamic_smem_bytes']} B  code {r.get('code_bytes', 0)} B")
    assert all(k.report["compile_seconds"] > 0 for k in kernels.values())


COMPILE_VARIANTS = [
    (AttentionSpec("bf16", 128, True, 8), dict(ex2_emu_period=4, rescale_threshold=8.0)),
    (AttentionSpec("bf16", 128, True, 8), dict(pack_gqa=True)),
    (AttentionSpec("bf16", 64, False, 4), dict(pack_gqa=True)),
    (AttentionSpec("bf16", 128, True, 4), dict(tile_n=64, kv_stages=3)),
]


@pytest.mark.parametrize("spec, change", COMPILE_VARIANTS,
                         ids=lambda x: x.key() if isinstance(x, AttentionSpec) else ",".join(x))
def test_knob_variants_compile(spec, change):
    """Knobs off by default (FMA-emulated exp2, conditional rescaling, packed GQA, 64-key blocks)
    compile without spills and pass the checks. (ex2_emu_period 2 leaves a 16-byte stack.)"""
    src = source_for(spec, **change)
    kernel = jit.compile_kernel(src, spec, arch=ARCH, run=False, trusted=True)
    report = dict(kernel.report, register_split=list(import_kernel_module(src).KERNEL.register_split))
    assert resources.check_report(report, ARCH, kernel.artifact_dir) == []
    assert report["stack_frame_bytes"] == 0, "spills"
    ptx = (kernel.artifact_dir / "kernel.ptx").read_text()
    if change.get("ex2_emu_period"):
        # a quarter of the exponentials on the FMA pipes: the polynomial's exponent shift is there
        assert ptx.count("shl.b32") >= 2 * 128 // 4
    if change.get("pack_gqa"):
        # Q and O tiles are (d, group, positions) boxes: 5-D tensor maps (d, group, seqlen, kv heads, batch)
        assert "cp.async.bulk.tensor.5d" in ptx


# ---------------------------------------------------------------------------------------------
# the checks themselves: PTX that breaks each rule
# ---------------------------------------------------------------------------------------------
GOOD_PTX = """
.entry k() .reqntid 512, 1, 1 {
    mov.b32 %r1, 512;
    tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%r9], %r1;
    tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;
    setmaxnreg.inc.sync.aligned.u32 192;
    setmaxnreg.dec.sync.aligned.u32 80;
    setmaxnreg.dec.sync.aligned.u32 48;
    bar.sync 1, 416;
    bar.sync 1, 416;
    mov.b32 %r2, 256;
    mbarrier.init.shared.b64 [%r3], %r2;
    tcgen05.mma.cta_group::1.kind::f16 [%r4], %rd1, %rd2, %r5, %p1;
    cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r6], [%rd3, {%r7, %r8}], [%r9];
    mov.b32 %r10, 512;
    tcgen05.dealloc.cta_group::1.sync.aligned.b32 %r11, %r10;
}
"""
GOOD_REPORT = {"registers": 128, "threads_per_block": 512, "static_smem_bytes": 1024,
               "dynamic_smem_bytes": 200704, "register_split": [192, 192, 80, 48]}


def check(ptx: str, **report) -> list[str]:
    return resources.check_report({**GOOD_REPORT, **report, "ptx_facts": resources.ptx_facts(ptx)}, ARCH)


def test_check_report_passes_a_clean_kernel():
    assert check(GOOD_PTX) == []
    facts = resources.ptx_facts(GOOD_PTX)
    assert facts["tcgen05_alloc"] == [{"cta_group": 1, "columns": 512}]
    assert facts["tma_loads"] == 1 and facts["tcgen05_mma"] == 1 and facts["reqntid"] == 512


@pytest.mark.parametrize(
    "edit, report, words",
    [
        (("mov.b32 %r10, 512;\n    tcgen05.dealloc.cta_group::1.sync.aligned.b32 %r11, %r10;", ""), {},
         "freed []"),
        (("mov.b32 %r10, 512;", "mov.b32 %r10, 256;"), {}, "freed [256]"),
        (("mov.b32 %r1, 512;", "mov.b32 %r1, 1024;"), {}, "> the 512 of an SM"),
        (("mov.b32 %r1, 512;", "mov.b32 %r1, 96;"), {}, "power of two"),
        (("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;", ""), {}, "relinquish"),
        (None, {"dynamic_smem_bytes": 232448}, "shared memory 233472 B"),
        # the Hopper hang, Blackwell-sized: 200 x 2 + 80 + 48 = 528 per thread > 512
        (("setmaxnreg.inc.sync.aligned.u32 192;", "setmaxnreg.inc.sync.aligned.u32 200;"),
         {"register_split": [200, 200, 80, 48]}, "setmaxnreg.inc would wait forever"),
        (("setmaxnreg.inc.sync.aligned.u32 192;", "setmaxnreg.inc.sync.aligned.u32 200;"), {},
         "not in register_split"),
        (("setmaxnreg.dec.sync.aligned.u32 80;\n    setmaxnreg.dec.sync.aligned.u32 48;", ""), {},
         "no setmaxnreg.dec"),
        (("bar.sync 1, 416;\n    bar.sync 1, 416;", "bar.sync 1, 416;\n    bar.sync 1, 384;"), {},
         "different thread counts"),
        (("bar.sync 1, 416;\n    bar.sync 1, 416;", "bar.sync 1, 400;"), {}, "not a multiple of 32"),
        (("mov.b32 %r2, 256;", "mov.b32 %r2, 0;"), {}, "arrival count 0"),
        (("mov.b32 %r1, 512;\n    tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%r9], %r1;", ""),
         {}, "never allocated"),
    ],
)
def test_check_report_catches(edit, report, words):
    ptx = GOOD_PTX
    if edit:
        assert edit[0] in ptx
        ptx = ptx.replace(*edit)
    problems = check(ptx, **report)
    assert any(words in p for p in problems), problems


def test_check_report_without_declared_split_uses_the_least_any_split_needs():
    # 4 warp groups, targets 240 and 24: 240 + 3 x 24 = 312 fits; 3 groups at 240 do not, which
    # only a declared split can tell
    ptx = GOOD_PTX.replace("u32 192;", "u32 240;").replace("u32 80;", "u32 24;").replace("u32 48;", "u32 24;")
    assert check(ptx, register_split=None) == []
    ptx = ptx.replace("u32 24;", "u32 128;")  # 240 + 3 x 128 = 624 > 512
    assert any("already need" in p for p in check(ptx, register_split=None))


def test_check_report_catches_the_hopper_hang():
    """archive v0023/v0028 (knowledge/tried.md): 240 x 2 + 32 = 512 registers per thread slot over
    384 threads is 65,536 > the 64,512 (168 x 384) the CTA got at launch; setmaxnreg.inc hung.
    Only the declared split shows it: the least any split needs (240 + 2 x 32) fits."""
    ptx = "setmaxnreg.dec.sync.aligned.u32 32;\nsetmaxnreg.inc.sync.aligned.u32 240;\n"
    report = {"registers": 168, "threads_per_block": 384, "static_smem_bytes": 0, "dynamic_smem_bytes": 164864,
              "ptx_facts": resources.ptx_facts(ptx)}
    assert resources.check_report(report, "sm_90a") == []
    problems = resources.check_report({**report, "register_split": [32, 240, 240]}, "sm_90a")
    assert any("65536 registers > the 64512" in p for p in problems), problems
    v0005 = {**report, "register_split": [32, 232, 232],
             "ptx_facts": resources.ptx_facts(ptx.replace("u32 240", "u32 232"))}
    assert resources.check_report(v0005, "sm_90a") == []  # 232 x 2 + 32 = 496: it ran


def test_check_report_sm90_has_no_tensor_memory():
    assert any("without tensor memory" in p for p in
               resources.check_report({**GOOD_REPORT, "ptx_facts": resources.ptx_facts(GOOD_PTX)}, "sm_90a"))


# ---------------------------------------------------------------------------------------------
# The barrier protocol, without a GPU: a model of the template's roles (their loops transcribed
# from template.py.j2; keep them in step with it) over mbarriers with PTX parity semantics,
# tcgen05 ops executed in issue order at random times and TMA landing in any order. Every
# interleaving tried must finish (no hang), every wait must see exactly the phase it means (a
# waiter two phases behind would alias), and TMEM must flow: softmax reads the S of its block,
# PV reads the P of its block after O was rescaled for it, QK overwrites P only after that PV.
# ---------------------------------------------------------------------------------------------
class _Mbar:
    def __init__(self, count):
        self.count, self.pending, self.phase, self.tx = count, count, 0, 0

    def arrive(self, n=1, tx=0):
        self.pending -= n
        self.tx += tx
        assert self.pending >= 0, "more arrivals than the barrier's count"
        self.flip()

    def flip(self):
        if self.pending == 0 and self.tx == 0:
            self.phase, self.pending = self.phase + 1, self.count

    def passed(self, parity):  # mbarrier.try_wait.parity
        return self.phase % 2 != parity


def _simulate(n_blocks: int, kv_stages: int, q_tiles: int, seed: int):
    rng = random.Random(seed)
    bars = {}
    for i in range(q_tiles):
        bars.update({f"s_full{i}": _Mbar(1), f"p_ready{i}": _Mbar(256), f"stats{i}": _Mbar(128),
                     f"stats_final{i}": _Mbar(128), f"o_full{i}": _Mbar(1), f"o_staged{i}": _Mbar(128),
                     f"q_full{i}": _Mbar(1), f"q_empty{i}": _Mbar(1)})
    for st in range(kv_stages):
        bars.update({f"{kv}_{side}{st}": _Mbar(1) for kv in "kv" for side in ("full", "empty")})
    tensor_queue, tma_queue, waits = [], [], {}
    s_block, p_block, o_block, rescaled, smem = {}, {}, {}, {}, {}

    def wait(role, name, parity):
        n, first = waits.setdefault((role, name), [0, 1 if parity == 0 else 0])
        while not bars[name].passed(parity):
            yield
        assert bars[name].phase == n + first, f"{role} on {name}: phase {bars[name].phase}, meant {n + first}"
        waits[(role, name)][0] += 1

    def pipe_state(stages, producer):
        return [0, 1 if producer else 0, stages]  # index, phase, stages

    def advance(st):
        st[0] += 1
        if st[0] == st[2]:
            st[0], st[1] = 0, st[1] ^ 1

    def load():
        qs, ks, vs = pipe_state(q_tiles, True), pipe_state(kv_stages, True), pipe_state(kv_stages, True)

        def issue(kind, st, block):
            yield from wait("load", f"{kind}_empty{st[0]}", st[1])
            bars[f"{kind}_full{st[0]}"].arrive(tx=1)
            tma_queue.append((kind, st[0], block))
            advance(st)

        yield from issue("q", qs, 0)
        yield from issue("k", ks, 0)
        if q_tiles == 2:
            yield from issue("q", qs, 1)
        for j in range(1, n_blocks):
            yield from issue("v", vs, j - 1)
            yield from issue("k", ks, j)
        yield from issue("v", vs, n_blocks - 1)

    def mma():
        qs, ks, vs = pipe_state(q_tiles, False), pipe_state(kv_stages, False), pipe_state(kv_stages, False)

        def ready(kind, st):
            yield from wait("mma", f"{kind}_full{st[0]}", st[1])

        def release(kind, st):
            tensor_queue.append(("commit", f"{kind}_empty{st[0]}"))
            advance(st)

        for i in range(q_tiles):
            yield from ready("q", qs)
            advance(qs)
            if i == 0:
                yield from ready("k", ks)
            tensor_queue.extend([("qk", i, 0, ("k", ks[0])), ("commit", f"s_full{i}")])
        release("k", ks)
        p_phase = 0
        for j in range(1, n_blocks):
            yield from ready("v", vs)
            for i in range(q_tiles):
                yield from wait("mma", f"p_ready{i}", p_phase)
                tensor_queue.append(("pv", i, j - 1, ("v", vs[0])))
                if i == 0:
                    yield from ready("k", ks)
                tensor_queue.extend([("qk", i, j, ("k", ks[0])), ("commit", f"s_full{i}")])
            release("k", ks)
            release("v", vs)
            p_phase ^= 1
        yield from ready("v", vs)
        for i in range(q_tiles):
            yield from wait("mma", f"p_ready{i}", p_phase)
            tensor_queue.extend([("pv", i, n_blocks - 1, ("v", vs[0])), ("commit", f"o_full{i}")])
        release("v", vs)

    def softmax(i):
        for j in range(n_blocks):
            yield from wait(f"softmax{i}", f"s_full{i}", j % 2)
            assert s_block.get(i) == j, f"softmax {i} step {j} read the S of block {s_block.get(i)}"
            smem[("scale", i)] = j
            bars[f"stats{i}"].arrive(128)
            yield
            assert s_block.get(i) == j, f"S{i} overwritten while softmax {i} read it"
            p_block[i] = j
            bars[f"p_ready{i}"].arrive(128)
        smem[("final", i)] = True
        bars[f"stats_final{i}"].arrive(128)

    def correction():
        for j in range(n_blocks):
            for i in range(q_tiles):
                yield from wait("correction", f"stats{i}", j % 2)
                assert smem[("scale", i)] == j, f"correction read a stale scale for tile {i}"
                if j > 0:
                    assert o_block.get(i) == j - 1, f"O{i} rescaled for step {j} before PV({j - 1}) completed"
                    rescaled[i] = j
                yield
                bars[f"p_ready{i}"].arrive(128)
        for i in range(q_tiles):
            yield from wait("correction", f"o_full{i}", 0)
            yield from wait("correction", f"stats_final{i}", 0)
            assert o_block.get(i) == n_blocks - 1 and smem[("final", i)]
            bars[f"o_staged{i}"].arrive(128)

    def epilogue():
        for i in range(q_tiles):
            yield from wait("epilogue", f"o_staged{i}", 0)

    def tensor_core():  # tcgen05: in issue order, each op whenever
        if tensor_queue and rng.random() < 0.5:
            op = tensor_queue.pop(0)
            if op[0] == "commit":
                bars[op[1]].arrive()
                return
            kind, i, j, operand = op
            assert smem.get(operand) == j, f"{op}: its K/V buffer holds block {smem.get(operand)}"
            if kind == "qk":
                s_block[i] = j
                p_block.pop(i, None)  # P lives in S's columns
            else:
                assert p_block.get(i) == j, f"PV{i}({j}) read P of block {p_block.get(i)}"
                assert j == 0 or (rescaled.get(i) == j and o_block.get(i) == j - 1), f"PV{i}({j}) on an unrescaled O"
                o_block[i] = j

    def tma():  # copies land in any order
        if tma_queue and rng.random() < 0.4:
            kind, stage, block = tma_queue.pop(rng.randrange(len(tma_queue)))
            smem[(kind, stage)] = block
            bar = bars[f"{kind}_full{stage}"]
            bar.tx -= 1
            bar.flip()

    live = {"load": load(), "mma": mma(), "correction": correction(), "epilogue": epilogue(),
            **{f"softmax{i}": softmax(i) for i in range(q_tiles)}}
    for _ in range(100_000):
        for name in rng.sample(sorted(live), len(live)):
            try:
                next(live[name])
            except StopIteration:
                del live[name]
        tensor_core()
        tma()
        if not live:
            break
    assert not live, f"hang: {sorted(live)} never finish"


@pytest.mark.parametrize("q_tiles", [1, 2])
@pytest.mark.parametrize("kv_stages", [1, 2, 3])
def test_barrier_protocol_never_hangs_and_keeps_tmem_in_order(kv_stages, q_tiles):
    for seed in range(40):
        for n_blocks in (1, 2, 3, 6):
            _simulate(n_blocks, kv_stages, q_tiles, seed)


# ---------------------------------------------------------------------------------------------
# GPU: a B200 only. The first command its owner runs:
#   python -m pytest -q tests/test_sm100.py -m gpu
# ---------------------------------------------------------------------------------------------
def _is_sm100() -> bool:
    return jit.current_arch() == ARCH


sm100 = pytest.mark.skipif(not _is_sm100(), reason="needs an sm_100 GPU (B200); compile-only here")

RAGGED = [  # (batch, seqlen_q, seqlen_k): ragged tails, one key, causal rows that see no key
    (1, 1, 1), (2, 17, 17), (1, 255, 1000), (2, 1000, 113), (1, 300, 300), (1, 4097, 4097),
]


def configs_for(spec: AttentionSpec) -> list[ShapeConfig]:
    heads = [(4, 4)] if spec.qhead_per_kvhead == 1 else [(spec.qhead_per_kvhead * 2, 2)]
    return [ShapeConfig(f"b{b}_q{sq}_k{sk}_h{hq}/{hkv}", b, sq, sk, hq, hkv, spec.head_dim, spec.causal, spec.dtype)
            for b, sq, sk in RAGGED for hq, hkv in heads]


@pytest.mark.gpu
@sm100
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.key())
def test_matches_reference_on_b200(spec):
    from avo import verify

    kernel = jit.compile_kernel(source_for(spec), spec, arch=ARCH, run=True, trusted=True)
    suites = [s for s in (load_suite(n) for n in SUITES) if spec in s.specs]
    configs = configs_for(spec) + [c for s in suites for c in s.correctness if c.spec == spec]
    result = verify.check(kernel.fn, configs, seeds=2)
    assert result["ok"], result["diagnosis"]


@pytest.mark.gpu
@sm100
@pytest.mark.parametrize("change", [dict(ex2_emu_period=2), dict(rescale_threshold=8.0), dict(tile_n=64),
                                    dict(kv_stages=1), dict(pack_gqa=True)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("causal", [False, True])
def test_knob_variants_match_reference_on_b200(change, causal):
    from avo import verify

    spec = AttentionSpec("bf16", 128, causal, 4)
    kernel = jit.compile_kernel(source_for(spec, **change), spec, arch=ARCH, run=True, trusted=True)
    result = verify.check(kernel.fn, configs_for(spec), seeds=2)
    assert result["ok"], result["diagnosis"]


@pytest.mark.skipif(_is_sm100(), reason="on a B200 the run measures; this checks the run without one")
def test_evolve_on_sm100a_without_a_b200_screens_and_commits_nothing(tmp_path, capsys, compiled):
    from avo.evolve import main
    from avo.lineage import Lineage

    config = jit.REPO / "configs" / "evolve_paper_sm100.yaml"
    assert main(["--config", str(config), "--set", f"run_dir={tmp_path / 'run'}", "--set",
                 f"archive={tmp_path / 'archive'}", "--candidates", "1"]) == 0
    nodes = Lineage.load(tmp_path / "archive").nodes()
    assert [(n.operator, n.status) for n in nodes] == [("seed", "screened")]
    assert nodes[0].extra["compile_reports"]["sm_100a"]
    assert "compile-only screening" in capsys.readouterr().out
