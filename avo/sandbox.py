"""A sandbox for the one step that must run a candidate's Python: compiling it (CuTe DSL executes
the kernel module to trace it).

Mechanism: Linux namespaces through util-linux `unshare`, present wherever util-linux is and usable
unprivileged where user namespaces are on (checked on the CPU machines and the H100/H200 image,
2026-11-22). bubblewrap would do the same job but is installed on neither machine, and the GPU
machine cannot install packages. Inside the sandbox:
- user namespace (mapped root: no privilege outside), PID namespace (the candidate sees and can
  signal no other process; when the sandbox's first process dies, everything in it dies);
- network namespace with only a loopback that is down: no network at all;
- mount namespace in which every mount is remounted read-only except the output directory, and
  the GPU device nodes are masked: a compile needs no GPU, and must not disturb one being timed;
- a scrubbed environment (an allow-list: no API keys, no AVO_* settings), HOME and TMPDIR inside
  the output directory; address-space and CPU-time limits (setrlimit); the wall-time limit is the
  caller's (it kills the process group).

Without working namespaces, untrusted code is refused unless the user opts out explicitly:
`AVO_SANDBOX=off` in the environment of the command (read by the parent only).

`python -m avo.sandbox --rw DIR [--rw DIR] [--gpu] -- ARGV...` is the in-namespace setup; callers
use `command()` to build the whole command line.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["SandboxUnavailable", "available", "command", "environment", "limits", "required"]

# What a sandboxed process may see of its parent's environment: paths the interpreter and the DSL
# need, nothing that names a secret or an avo setting.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH", "VIRTUAL_ENV",
             "CUTE_DSL_LIBS", "CUTE_DSL_ARCH")
_GIB = 1 << 30


class SandboxUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(True, "") when a namespace sandbox can be started here, else (False, why). Probed once."""
    unshare = shutil.which("unshare")
    if not unshare or not sys.platform.startswith("linux"):
        return False, "util-linux `unshare` not found (Linux only)"
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        proc = subprocess.run(command([sys.executable, "-c", "print('ok')"], writable=[probe]),
                              capture_output=True, text=True, timeout=30, env=environment(probe))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"unshare failed to start: {exc}"
    if proc.returncode != 0 or proc.stdout.strip() != "ok":
        detail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return False, f"user/mount/network namespaces unavailable: {detail[:200]}"
    return True, ""


def required() -> bool:
    """False only when the user opted out with AVO_SANDBOX=off."""
    return os.environ.get("AVO_SANDBOX", "on").strip().lower() not in ("off", "0", "no", "false")


def command(argv: list[str], writable: list[Path], gpu: bool = False) -> list[str]:
    """The command line that runs `argv` inside the sandbox, with `writable` the only writable
    paths. gpu=True keeps the GPU device nodes (for a judge that runs compiled kernels)."""
    setup = [sys.executable, "-m", "avo.sandbox"]
    for path in writable:
        setup += ["--rw", str(Path(path).resolve())]
    if gpu:
        setup.append("--gpu")
    return ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--propagation", "private", "--", *setup, "--", *argv]


def environment(home: Path, extra: dict | None = None) -> dict:
    """A scrubbed environment: the allow-listed variables, HOME and TMPDIR under `home`."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    env.update(extra or {})
    return env


# A d128 seed compile runs within 8 GiB of address space (checked 2026-11-22); twice that leaves room
# for larger kernels and keeps a runaway candidate from taking a 24 GiB machine with it.
def limits(address_space_gib: float = 16.0, cpu_seconds: int = 3600, file_gib: float = 2.0):
    """A preexec_fn: address-space, CPU-time and file-size limits, and death with the parent (even by SIGKILL:
    PR_SET_PDEATHSIG survives exec, and `unshare --kill-child` passes it on)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (int(address_space_gib * _GIB),) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(file_gib * _GIB),) * 2)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return apply


# ---------------------------------------------------------------------------------------------
# inside the namespaces


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(point.encode().decode("unicode_escape"))  # mountinfo escapes spaces as \040
    return points


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SandboxUnavailable(f"mount {' '.join(args)}: {proc.stderr.strip()[:200]}")


def _setup(writable: list[str], gpu: bool) -> None:
    for path in writable:
        _mount("--bind", path, path)  # its own mount, so it stays writable below
    if not gpu:
        for node in sorted(Path("/dev").glob("nvidia*")):
            if node.is_char_device():
                _mount("--bind", "/dev/null", str(node))
    keep = set(writable)
    for point in _mount_points():
        if point in keep:
            continue
        try:
            _mount("-o", "remount,bind,ro", point)
        except SandboxUnavailable:
            if point == "/":
                raise
    # refuse to run if anything meant to be closed is still writable
    for path in ("/", "/tmp", "/dev/shm", "/var/tmp", os.getcwd(), str(Path(__file__).resolve().parent)):
        if Path(path).exists() and not any(path.startswith(w) for w in writable) and os.access(path, os.W_OK):
            raise SandboxUnavailable(f"{path} is still writable inside the sandbox")


def _main(argv: list[str]) -> int:
    split = argv.index("--")
    opts, target = argv[:split], argv[split + 1:]
    writable = [opts[i + 1] for i, o in enumerate(opts) if o == "--rw"]
    try:
        _setup(writable, gpu="--gpu" in opts)
    except SandboxUnavailable as exc:
        print(f"avo.sandbox: {exc}", file=sys.stderr)
        return 97
    if writable:
        os.chdir(writable[0])
    os.execvpe(target[0], target, os.environ)
    return 98  # not reached


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
