"""Two kernel sources, spec by spec over suites: is their SASS the same? (CPU; cuobjdump on PATH or
where avo.tools finds it.) Used to show that a template change leaves a knob's off path unchanged,
or that the template renders a lineage node's kernel.

    python bench/sass_same.py A.py B.py paper hdim64 hdim256
"""

import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")

from avo import jit  # noqa: E402
from avo.suites import load_suite  # noqa: E402
from avo.tools import find_binary  # noqa: E402


def sass(source: str, spec, tool: str) -> list[str]:
    """The instructions of every kernel in the source's cubin for `spec`, addresses and encodings
    dropped (kernel names differ between sources, so their lines are dropped too)."""
    cubin = jit.compile_kernel(Path(source), spec, arch="sm_90a", run=False).artifact_dir / "kernel.cubin"
    out = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "/*" in line and "Function" not in line and ".text." not in line]
    return [re.sub(r"/\* 0x[0-9a-f]+ \*/", "", line).strip() for line in lines]


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__.strip().splitlines()[-1].strip())
        return 2
    a, b, suites = sys.argv[1], sys.argv[2], sys.argv[3:]
    tool = find_binary("cuobjdump")
    if tool is None:
        print("cuobjdump not found: put the CUDA toolkit's bin on PATH")
        return 2
    differ = 0
    for suite in suites:
        for spec in load_suite(suite).specs:
            x, y = sass(a, spec, tool), sass(b, spec, tool)
            same = x == y
            differ += not same
            print(suite, spec.key(), "identical" if same else f"DIFFERENT ({len(x)} vs {len(y)} lines)", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
