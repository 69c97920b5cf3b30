"""What the MMA warp groups do while a WGMMA is in flight: for each main loop of a compiled kernel
(16 HGMMAs per iteration: QK^T and PV at d128), the softmax instructions between the wait for the
QK^T GEMM (WARPGROUP.DEPBAR.LE gsb0, 0x1) and the wait for the PV GEMM (... 0x0), and after it.

    python bench/sass_waits.py KERNEL.py [--suite mha_full]   # compiles (CPU is fine), reads the cubin
    python bench/sass_waits.py path/to/kernel.cubin

Issue 13: the seed lost ~4% to FA4 because ptxas placed the FFMA/exp2 of the softmax after the PV wait
(FMNMX only in between); FA4 keeps FMNMX 68 + FFMA 66 + MUFU 10 in between. Needs cuobjdump or
nvdisasm on PATH (CUDA's bin/, or `pip install nvidia-cuda-cuobjdump`).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avo.tools import find_binary, loop_body, parse_sass, sass_loops  # noqa: E402

_SOFTMAX_OPS = ("FFMA", "MUFU", "FMNMX", "FADD", "FMUL", "F2FP")


def loops_between_waits(sass_text: str, hgmma_per_iteration: int | None = 16) -> list[dict]:
    """None: any loop with both waits (d64, d256 tiles issue other HGMMA counts)."""
    instrs = parse_sass(sass_text)
    out = []
    for loop in sass_loops(instrs):
        body = loop_body(instrs, loop)
        hgmma = sum(x["op"].startswith("HGMMA") for x in body)
        if hgmma < 2 or (hgmma_per_iteration is not None and hgmma != hgmma_per_iteration):
            continue
        waits = {w: next((k for k, x in enumerate(body) if f"DEPBAR.LE gsb0, 0x{w}" in x["text"]), None)
                 for w in (1, 0)}
        if None in waits.values():
            continue

        def mix(a, b, body=body):
            c = collections.Counter(x["op"].split(".")[0] for x in body[a:b])
            return {op: c[op] for op in _SOFTMAX_OPS if c[op]}

        out.append({"loop": hex(int(loop["from"], 16)), "instructions": len(body),
                    "between_waits": mix(waits[1], waits[0]), "after_pv_wait": mix(waits[0], len(body))})
    return sorted(out, key=lambda row: int(row["loop"], 16))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", help="a kernel .py (compiled here for the suite's first spec) or a .cubin")
    ap.add_argument("--suite", default="mha_full")
    ap.add_argument("--spec", type=int, default=0, help="which of the suite's specs to compile (index)")
    args = ap.parse_args(argv)
    tool = find_binary("cuobjdump") or find_binary("nvdisasm")
    if tool is None:
        print("sass_waits: no cuobjdump or nvdisasm on PATH (pip install nvidia-cuda-cuobjdump)", file=sys.stderr)
        return 2
    cubin = Path(args.kernel)
    if cubin.suffix != ".cubin":
        from avo import jit
        from avo.suites import load_suite

        spec = load_suite(args.suite).specs[args.spec]
        built = jit.compile_kernel(cubin, spec, arch="sm_90a", run=False)
        cubin = built.artifact_dir / "kernel.cubin"
    flag = "-sass" if Path(tool).name.startswith("cuobjdump") else "-c"
    text = subprocess.run([tool, flag, str(cubin)], capture_output=True, text=True).stdout
    for row in loops_between_waits(text, hgmma_per_iteration=None):
        print(f"loop {row['loop']} ({row['instructions']} instructions): between the waits {row['between_waits']}; "
              f"after the PV wait {row['after_pv_wait']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
