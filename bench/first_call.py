"""First-call time of `avo.attention` in a new process, for a kernel already in the disk cache.

    python bench/first_call.py [--dtype bf16] [--head-dim 128] [--causal] [--gqa 1] [--node ID]
                               [--archive DIR] [--runs 5] [--out FILE]

The parent fills the disk cache once (a child that compiles if needed), then starts `--runs` fresh
children. Each child imports torch and initializes CUDA (not counted: every torch program pays
them), then times, in order: `import avo` with its op module, the first call (choose the kernel,
load it from the disk cache, launch, synchronize) and a second call. A second set of children
first calls a throwaway torch custom op, paying torch's one-time lazy imports for custom ops
(any custom op pays them once per process), to split that from avo's own first-call cost. Each
child asserts nothing was compiled and reports whether the CuTe DSL and torch._dynamo got
imported. Prints one JSON line of medians in milliseconds. On a machine without an sm_90a GPU it
says so in one line (exit 2) unless `--cpu`.

Without a GPU (`--cpu`) only what can run here is timed, for the sm_90a kernel compiled here:
loading kernel.so through tvm_ffi (what avo.jit does), then `import cutlass.cute` plus
`cute.runtime.load_module` of kernel.o (the DSL's way, the fallback with no C compiler).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def child(args) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    if args.cpu:
        from pathlib import Path

        from avo import jit

        t0 = time.perf_counter()
        jit.load_callable(Path(args.object))  # kernel.so through tvm_ffi when it was linked
        t1 = time.perf_counter()
        import cutlass.cute as cute

        t2 = time.perf_counter()
        module = cute.runtime.load_module(os.path.join(args.object, "kernel.o"), enable_tvm_ffi=True)
        module.avo_kernel  # noqa: B018 (the symbol lookup is part of loading)
        t3 = time.perf_counter()
        return {"load_shared_ms": 1e3 * (t1 - t0), "import_cutlass_ms": 1e3 * (t2 - t1),
                "load_object_ms": 1e3 * (t3 - t2)}

    torch.cuda.init()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    heads_kv = 4
    q = torch.randn(1, 1024, heads_kv * args.gqa, args.head_dim, device="cuda", dtype=dtype)
    k = torch.randn(1, 1024, heads_kv, args.head_dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    torch.cuda.synchronize()
    times = {}
    if args.torch_warm:  # torch's own one-time cost of a process's first custom op, paid by any of them
        t = time.perf_counter()

        @torch.library.custom_op("avo_first_call::twice", mutates_args=(), schema="(Tensor x) -> Tensor")
        def twice(x):
            return x * 2

        twice.register_fake(lambda x: torch.empty_like(x))
        twice(q)
        torch.cuda.synchronize()
        times["torch_first_custom_op_ms"] = 1e3 * (time.perf_counter() - t)
    t = time.perf_counter()
    import avo
    from avo import jit

    fn = avo.load(args.node, args.archive) if (args.node or args.archive) else avo.attention
    times["import_avo_ms"] = 1e3 * (time.perf_counter() - t)  # avo.ops (torch.library op, lineage)
    for name in ("first_call_ms", "second_call_ms"):
        t = time.perf_counter()
        fn(q, k, v, causal=args.causal)
        torch.cuda.synchronize()
        times[name] = 1e3 * (time.perf_counter() - t)
    stats = jit.compile_stats()
    assert stats["compiles"] == 0, f"the kernel was compiled in the measured process: {stats}"
    # 1 when the CuTe DSL got imported (kernel.o loaded through it), 0 when tvm_ffi loaded kernel.so
    times["dsl_imported"] = int("cutlass.cute" in sys.modules)
    # 1 when torch._dynamo got imported: custom_op's first call did (seconds); Library ops must not
    times["dynamo_imported"] = int("torch._dynamo" in sys.modules)
    return times


def warm(args) -> str:
    """Fill the disk cache; returns the artifact dir of the kernel."""
    from avo import ops
    from avo.spec import AttentionSpec

    spec = AttentionSpec(args.dtype, args.head_dim, args.causal, args.gqa)
    owner = ops.load(args.node, args.archive)
    kernel = owner.kernel(spec, "sm_90a") if args.cpu else owner.prepare(spec)
    return str(kernel.artifact_dir)


def run_child(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"child {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--gqa", type=int, default=1, help="query heads per KV head")
    ap.add_argument("--node", default=None, help="a lineage node id (default: the archive's best)")
    ap.add_argument("--archive", default=None, help="lineage directory (default: avo.ops.default_archive())")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpu", action="store_true", help="no GPU: time import + load_module only")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--object", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warm:
        print(json.dumps({"artifact_dir": warm(args)}))
        return 0
    if args.child:
        print(json.dumps(child(args)))
        return 0

    if not args.cpu:
        from avo import jit

        arch = jit.current_arch()
        if arch != "sm_90a":  # expected on a laptop or CI: one line, no traceback
            print(f"bench/first_call.py: no sm_90a GPU here ({arch or 'no CUDA GPU'}); the first call is timed on "
                  "an H100/H200. On this machine --cpu times loading the compiled kernel.", file=sys.stderr)
            return 2
    base = [f"--dtype={args.dtype}", f"--head-dim={args.head_dim}", f"--gqa={args.gqa}"]
    base += ["--causal"] * args.causal + ["--cpu"] * args.cpu
    base += [f"--node={args.node}"] * bool(args.node) + [f"--archive={args.archive}"] * bool(args.archive)
    artifact = run_child([*base, "--warm"])["artifact_dir"]
    sets = {"cold": [*base, "--child", f"--object={artifact}"]}
    if not args.cpu:
        sets["torch_op_warmed"] = [*base, "--child", "--torch-warm"]
    result = {"device": "cpu" if args.cpu else _device_name(), "kernel": artifact, "runs": args.runs,
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    for name, argv in sets.items():
        samples = [run_child(argv) for _ in range(args.runs)]
        result[name] = {key: round(statistics.median(s[key] for s in samples), 2) for key in samples[0]}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    return 0


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"


if __name__ == "__main__":
    sys.exit(main())
