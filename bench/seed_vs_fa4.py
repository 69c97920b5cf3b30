"""One GPU visit for the flash_fwd_sm90 seed kernel: correctness of every precompiled
specialization, then TFLOPS against FA4 (flash_attn.cute) and cuDNN (torch SDPA) in the same run.

    python bench/seed_vs_fa4.py --objs scratch/objs [--out $OUT] [--phases check,suite,variants]

Kernels come from objects exported on the CPU machine (`bench/precompile_seed.py`: a manifest plus
one `<name>.o` per (spec, knobs)). Each phase runs in a child process under a watchdog, so a
kernel that hangs is recorded as HANG and the phase goes on after it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUITE_TOKENS = 32 * 1024
SUITE_SEQLENS = (4096, 8192, 16384, 32768)
SUITE_HEADS = {"mha16": (16, 16), "gqa32/8": (32, 8), "gqa32/4": (32, 4)}
VARIANT_SEQLENS = (8192, 16384)

CHECK_SHAPES = [  # (batch, seqlen_q, seqlen_k)
    (2, 1, 1),
    (1, 17, 17),
    (2, 255, 255),
    (1, 1000, 1000),
    (2, 1000, 113),  # causal: rows that see no key
    (1, 113, 1000),
    (1, 4097, 4097),
]


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
def load_kernels(objs: str):
    import cutlass.cute as cute

    manifest = json.load(open(os.path.join(objs, "manifest.json")))
    cache = {}

    def get(name):
        if name not in cache:
            mod = cute.runtime.load_module(os.path.join(objs, f"{name}.o"), enable_tvm_ffi=True)
            cache[name] = (mod, mod.kernel)
        return cache[name][1]

    return manifest, get


def run_kernel(fn, q, k, v, o, lse, scale):
    fn(q, k, v, o, lse, scale)


def inputs(spec, b, sq, sk, hq, hkv, device="cuda"):
    import torch

    dt = spec.torch_dtype
    d = spec.head_dim
    q = torch.randn(b, sq, hq, d, device=device, dtype=dt)
    k = torch.randn(b, sk, hkv, d, device=device, dtype=dt)
    v = torch.randn(b, sk, hkv, d, device=device, dtype=dt)
    return q, k, v


def check_one(fn, spec, b, sq, sk, hq, hkv):
    import torch

    from avo.reference import reference_attention

    q, k, v = inputs(spec, b, sq, sk, hq, hkv)
    scale = 1.0 / math.sqrt(spec.head_dim)
    o = torch.full_like(q, float("nan"))
    lse = torch.full((b, hq, sq), float("nan"), device=q.device, dtype=torch.float32)
    run_kernel(fn, q, k, v, o, lse, scale)
    torch.cuda.synchronize()
    ref_o, ref_lse = reference_attention(q, k, v, spec.causal, scale)
    pt_o, _ = reference_attention(q, k, v, spec.causal, scale, dtype=spec.torch_dtype)
    nan_o = int(o.isnan().sum())
    err = (o.float() - ref_o).abs().max().item() if nan_o == 0 else float("nan")
    pt_err = (pt_o.float() - ref_o).abs().max().item()
    inf_ref = torch.isinf(ref_lse)
    lse_pattern_ok = bool((torch.isinf(lse) == inf_ref).all()) and not bool(lse.isnan().any())
    fin = ~inf_ref
    lse_err = (lse[fin] - ref_lse[fin]).abs().max().item() if fin.any() and lse_pattern_ok else 0.0
    ok = nan_o == 0 and err <= 2 * pt_err + 1e-4 and lse_pattern_ok and lse_err <= 2e-3
    return ok, dict(err=err, pt_err=pt_err, nan=nan_o, lse_err=lse_err, lse_pattern=lse_pattern_ok)


def worker_check(args, skip):
    from avo.spec import AttentionSpec

    manifest, get = load_kernels(args.objs)
    for name, ent in manifest.items():
        if name in skip:
            continue
        spec = AttentionSpec(**ent["spec"])
        g = spec.qhead_per_kvhead
        heads = [(4, 4)] if g == 1 else [(4 * g, 4)]
        if g == 4:
            heads = [(8, 2), (32, 8)]
        log(f"BEGIN {name}")
        try:
            fn = get(name)
        except Exception as e:  # noqa: BLE001
            log(f"RESULT {name} LOADFAIL {str(e)[-300:]}")
            continue
        shapes = CHECK_SHAPES if "__default" in name else CHECK_SHAPES[:6]
        n_ok, n, worst = 0, 0, []
        for hq, hkv in heads:
            for b, sq, sk in shapes:
                if sq * sk * hq * b > 4097 * 4097 * 8 and hq > 8:
                    continue
                try:
                    ok, info = check_one(fn, spec, b, sq, sk, hq, hkv)
                except Exception as e:  # noqa: BLE001
                    ok, info = False, {"exc": str(e)[-300:]}
                n += 1
                n_ok += ok
                if not ok:
                    worst.append(((b, sq, sk, hq, hkv), info))
        status = "PASS" if n_ok == n else "FAIL"
        log(f"RESULT {name} {status} {n_ok}/{n} " + json.dumps(worst[:4]))


def tflops(b, h, sq, sk, d, causal, ms):
    f = 4.0 * b * h * sq * sk * d / (2 if causal else 1)
    return f / ms / 1e9


def bench_ms(fn):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=30, rep=150, return_mode="median")


def baselines(spec, q, k, v, causal):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    res = {}
    try:
        from flash_attn.cute import flash_attn_func

        flash_attn_func(q, k, v, causal=causal)
        res["fa4"] = bench_ms(lambda: flash_attn_func(q, k, v, causal=causal))
    except Exception as e:  # noqa: BLE001
        log(f"  fa4 failed: {str(e)[-200:]}")
    try:
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        g = q.shape[2] // k.shape[2]
        if g > 1:
            kt = kt.repeat_interleave(g, dim=1)
            vt = vt.repeat_interleave(g, dim=1)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
            res["cudnn"] = bench_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
    except Exception as e:  # noqa: BLE001
        log(f"  cudnn failed: {str(e)[-200:]}")
    return res


def worker_time(args, skip, variants: bool, head_dims=(128,)):
    import torch

    from avo.spec import AttentionSpec

    manifest, get = load_kernels(args.objs)
    for hd in head_dims:
      for causal in (False, True):
        for hname, (hq, hkv) in SUITE_HEADS.items():
            g = hq // hkv
            seqlens = VARIANT_SEQLENS if variants else SUITE_SEQLENS
            if variants and hname == "gqa32/4":
                continue
            if hd != 128:  # other head_dims: MHA at 8k only, every object of that spec
                if hname != "mha16":
                    continue
                seqlens = (8192,)
            names = [n for n, e in manifest.items()
                     if AttentionSpec(**e["spec"]) == AttentionSpec("bf16", hd, causal, g)
                     and (hd != 128 or variants != n.endswith("__default"))]
            for s in seqlens:
                key = f"d{hd} {'causal' if causal else 'full'} {hname} s{s}"
                if key in skip:
                    continue
                log(f"BEGIN {key}")
                b = SUITE_TOKENS // s
                spec = AttentionSpec("bf16", hd, causal, g)
                q, k, v = inputs(spec, b, s, s, hq, hkv)
                o = torch.empty_like(q)
                lse = torch.empty(b, hq, s, device="cuda", dtype=torch.float32)
                scale = 1.0 / math.sqrt(hd)
                row = {}
                for n in names:
                    try:
                        fn = get(n)
                        run_kernel(fn, q, k, v, o, lse, scale)
                        torch.cuda.synchronize()
                        row[n.split("__")[1]] = bench_ms(functools.partial(run_kernel, fn, q, k, v, o, lse, scale))
                    except Exception as e:  # noqa: BLE001
                        log(f"  {n} failed: {str(e)[-200:]}")
                if not variants or hd != 128:
                    row.update(baselines(spec, q, k, v, causal))
                tf = {kk: round(tflops(b, hq, s, s, hd, causal, ms), 1) for kk, ms in row.items()}
                log(f"RESULT {key} " + json.dumps(tf))
                del q, k, v, o, lse
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# orchestrator: one child per phase, restarted after a hang with the hung item skipped
# ---------------------------------------------------------------------------------------------
def run_phase(phase: str, args, results: dict, stall_s: float = 25.0):
    import select

    skip: list[str] = []
    restarts = 0
    while True:
        cmd = [sys.executable, __file__, "--worker", phase, "--objs", args.objs, "--skip", json.dumps(skip)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        current, last = None, time.time()
        hung = False
        while True:
            r, _, _ = select.select([p.stdout], [], [], 5.0)
            if r:
                line = p.stdout.readline()
                if not line:
                    break
                last = time.time()
                line = line.rstrip()
                log(f"[{phase}] {line}")
                if line.startswith("BEGIN "):
                    current = line[6:]
                elif line.startswith("RESULT "):
                    rest = line[7:]
                    results.setdefault(phase, []).append(rest)
                    skip.append(current)
                    current = None
            elif time.time() - last > stall_s:
                hung = True
                p.kill()
                break
        rc = p.wait()
        if hung and current is not None:
            log(f"[{phase}] HANG on {current}: killed, continuing after it")
            results.setdefault(phase, []).append(f"{current} HANG")
            skip.append(current)
            continue
        if rc != 0 and restarts < 4:
            restarts += 1
            log(f"[{phase}] child exited rc={rc} during {current}; restarting")
            if current is not None:
                results.setdefault(phase, []).append(f"{current} CRASH rc={rc}")
                skip.append(current)
            continue
        return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objs", default="scratch/objs")
    ap.add_argument("--phases", default="check,suite,variants,other_hd")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--skip", default="[]")
    args = ap.parse_args()
    if args.worker:
        import faulthandler

        faulthandler.enable()
        skip = set(json.loads(args.skip))
        import torch

        torch.manual_seed(0)
        {"check": lambda: worker_check(args, skip),
         "suite": lambda: worker_time(args, skip, False),
         "variants": lambda: worker_time(args, skip, True),
         "other_hd": lambda: worker_time(args, skip, False, head_dims=(64, 256))}[args.worker]()
        return
    import torch

    log(f"date {time.strftime('%Y-%m-%d %H:%M:%S')} device {torch.cuda.get_device_name()}")
    results: dict = {}
    for phase in args.phases.split(","):
        t0 = time.time()
        run_phase(phase, args, results)
        log(f"phase {phase} took {time.time() - t0:.0f}s")
    log("\n===== SUMMARY =====")
    for phase, rows in results.items():
        log(f"-- {phase}")
        for r in rows:
            if phase == "check":
                log("  " + (r if "PASS" in r else r[:600]))
            else:
                key, _, js = r.partition(" {")
                if js:
                    d = json.loads("{" + js)
                    fa = d.get("fa4")
                    ratio = {kk: round(vv / fa, 3) for kk, vv in d.items() if fa and kk not in ("fa4",)}
                    log(f"  {key}: {d}  ratio_vs_fa4 {ratio}")
                else:
                    log("  " + r)
        if phase in ("suite", "other_hd"):
            ratios = {}
            for r in rows:
                _, _, js = r.partition(" {")
                if js:
                    d = json.loads("{" + js)
                    for kk, vv in d.items():
                        if kk != "fa4" and d.get("fa4"):
                            ratios.setdefault(kk, []).append(vv / d["fa4"])
            for kk, rs in ratios.items():
                gm = math.exp(sum(math.log(x) for x in rs) / len(rs))
                log(f"  geomean {kk}/fa4 = {gm:.3f} over {len(rs)} configs, min {min(rs):.3f}")


if __name__ == "__main__":
    main()
