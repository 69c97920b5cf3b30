"""Compile flash_fwd_sm90 specializations for sm_90a on a GPU-less machine and export them for
`bench/seed_vs_fa4.py`: <out>/<name>.o (TVM-FFI objects) plus <out>/manifest.json.

    python bench/precompile_seed.py [--out scratch/objs] [--workers 2] [name filters...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEMPLATE = ROOT / "dsl_templates" / "flash_fwd_sm90" / "template.py.j2"


def load_module(knobs):
    import jinja2

    src = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined).render(knobs=knobs)
    name = "seed_" + hashlib.sha256(src.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "avo_seed_bench" / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_args(spec):
    import cutlass
    import cutlass.cute as cute

    b, sq, sk, hq, hkv = (cute.sym_int() for _ in range(5))

    def bshd(s, h):
        strides = tuple(cute.sym_int(divisibility=8) for _ in range(3)) + (1,)
        return cute.runtime.make_fake_tensor(spec.cutlass_dtype, (b, s, h, spec.head_dim), strides, assumed_align=16)

    lse = cute.runtime.make_fake_compact_tensor(cutlass.Float32, (b, hq, sq), stride_order=(2, 1, 0), assumed_align=4)
    stream = cute.runtime.make_fake_stream(use_tvm_ffi_env_stream=True)
    return bshd(sq, hq), bshd(sk, hkv), bshd(sk, hkv), bshd(sq, hq), lse, cutlass.Float32(1.0), stream


def job(args):
    out, name, spec_d, knobs_d = args
    import cutlass.cute as cute

    from avo.spec import AttentionSpec
    from dsl_templates.flash_fwd_sm90.knobs import Knobs

    spec, knobs = AttentionSpec(**spec_d), Knobs(**knobs_d)
    path = Path(out) / f"{name}.o"
    if path.exists():
        return name, "cached", 0.0
    mod = load_module(knobs)
    ok, why = mod.KERNEL.can_implement(spec)
    if not ok:
        return name, f"rejected: {why}", 0.0
    t0 = time.time()
    try:
        fn = cute.compile(mod.KERNEL(spec), *fake_args(spec), options="--enable-tvm-ffi")
    except Exception as e:  # noqa: BLE001
        return name, f"error: {str(e)[-800:]}", 0.0
    seconds = time.time() - t0
    fn.export_to_c(object_file_path=str(path) + ".tmp", function_name="kernel")
    os.rename(str(path) + ".tmp", path)
    return name, "ok", seconds


def entries():
    """Every default specialization of the correctness matrix, the suite's GQA 32/4, and the
    d128 / d64 / d256 knob variants the last visit timed."""
    from avo.spec import AttentionSpec
    from dsl_templates.flash_fwd_sm90.knobs import default_knobs

    def entry(spec, knobs, tag="default"):
        return f"{spec.key()}__{tag}", asdict(spec), asdict(knobs)

    out = []
    for dt in ("bf16", "fp16"):
        for hd in (64, 128, 256):
            for causal in (False, True):
                for g in (1, 4):
                    s = AttentionSpec(dt, hd, causal, g)
                    out.append(entry(s, default_knobs(s)))
    for causal in (False, True):
        s = AttentionSpec("bf16", 128, causal, 8)
        out.append(entry(s, default_knobs(s)))
        for g in (1, 4):
            s = AttentionSpec("bf16", 128, causal, g)
            k0 = default_knobs(s)
            out.append(entry(s, k0.replace(head_swizzle=not k0.head_swizzle), "swzflip"))
            for tag, kw in {"nopingpong": dict(pingpong=False), "st3": dict(num_stages=3),
                            "n176": dict(tile_n=176)}.items():
                out.append(entry(s, k0.replace(**kw), tag))
        s = AttentionSpec("bf16", 64, causal, 1)
        out.append(entry(s, default_knobs(s).replace(tile_m=128, mma_regs=240, producer_regs=24), "m128"))
        s = AttentionSpec("bf16", 256, causal, 1)
        out.append(entry(s, default_knobs(s).replace(tile_n=64), "n64"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "scratch" / "objs"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("filters", nargs="*")
    args = ap.parse_args()
    todo = [e for e in entries() if not args.filters or any(f in e[0] for f in args.filters)]
    os.makedirs(args.out, exist_ok=True)
    mf = Path(args.out) / "manifest.json"
    manifest = json.loads(mf.read_text()) if mf.exists() else {}
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as ex:
        for (name, spec_d, knobs_d), (_, status, seconds) in zip(
            todo, ex.map(job, [(args.out, *e) for e in todo]), strict=True
        ):
            print(f"{name}: {status} {seconds:.1f}s", flush=True)
            if status in ("ok", "cached"):
                manifest[name] = {"spec": spec_d, "knobs": knobs_d}
    mf.write_text(json.dumps(manifest, indent=1))
    print(f"{len(todo)} specializations in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
