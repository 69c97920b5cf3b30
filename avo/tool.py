"""`python -m avo.tool NAME [key=value ...]`: the tool registry from a shell.

Any coding agent that can run commands (or a person) drives a run with it, with the same tools and
the same confinement as the in-process agent and the MCP server:

    python -m avo.tool --config configs/evolve_tiny.yaml --set run_dir=runs/cli list_lineage
    python -m avo.tool --run runs/cli read_candidate start_line=1 max_lines=40
    python -m avo.tool --run runs/cli edit_candidate old='TILE_N = 32' new='TILE_N = 16'
    python -m avo.tool --run runs/cli submit rationale='smaller K/V tile'
    python -m avo.tool --list                                   # the tools and their arguments

A value is read by the tool's schema (`count=60`, `loops=true`, `configs=a,b` or `configs=[a, b]`),
`--json '{...}'` passes the arguments as one object, and `@file` reads a value from a file
(`write_candidate text=@new_kernel.py`). The step in progress is kept in the run directory, so
successive commands continue it; submit or give_up records it in the lineage and the next command
opens the next step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _arguments(pairs: list[str], raw_json: str | None) -> dict:
    args = json.loads(raw_json) if raw_json else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"argument {pair!r} must look like key=value")
        if value.startswith("@"):
            args[key] = Path(value[1:]).read_text()
            continue
        args[key] = value  # text: the registry reads numbers, booleans and lists by the tool's schema
    return args


def open_run(config: str | None, run_dir: str | None, overrides: list[str]):
    """The Run that `--config` starts (or continues, if its run directory exists) or `--run` names."""
    from avo.config import load_config, save_config
    from avo.evolve import Run

    if run_dir:
        path = Path(run_dir) / "config.yaml"
        if not path.exists():
            raise ValueError(f"{run_dir} is not a run directory (no config.yaml); start one with --config")
        cfg = load_config(path, overrides)
    elif config:
        cfg = load_config(config, overrides)
    else:
        raise ValueError("give --config FILE (a new or existing run) or --run RUN_DIR")
    resume = (Path(cfg.run_dir) / "state.json").exists()
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    if not (Path(cfg.run_dir) / "config.yaml").exists():
        save_config(cfg, Path(cfg.run_dir) / "config.yaml")
    from avo.workbench import StderrProgress

    run = Run(cfg, resume=resume, progress=StderrProgress(Path(cfg.run_dir) / "events.jsonl", f"avo: {cfg.name}"))
    if not resume:
        run.save_state()
    return run


def _launch(source: str, config_json: str, arch: str) -> int:
    """Internal (`_launch`): run one kernel once on one config inside an NVTX range, for ncu."""
    import torch

    from avo import jit
    from avo.suites import ShapeConfig
    from avo.verify import random_inputs

    shape = ShapeConfig(**json.loads(config_json))
    kernel = jit.compile_kernel(source, shape.spec, arch=arch, run=True)
    q, k, v = random_inputs(shape, seed=0)
    out = torch.empty_like(q)
    lse = torch.empty(shape.batch, shape.heads_q, shape.seqlen_q, device=q.device, dtype=torch.float32)
    scale = shape.head_dim ** -0.5
    kernel.fn(q, k, v, out, lse, scale)  # warm-up, outside the profiled range
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("avo_profile")
    kernel.fn(q, k, v, out, lse, scale)
    torch.cuda.nvtx.range_pop()
    torch.cuda.synchronize()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_launch"]:
        return _launch(*argv[1:4])
    from avo import tools

    parser = argparse.ArgumentParser(prog="python -m avo.tool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="run config YAML: starts the run, or continues it if its run_dir exists")
    parser.add_argument("--run", metavar="RUN_DIR", help="an existing run directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--json", help="the tool's arguments as one JSON object")
    parser.add_argument("--list", action="store_true", help="list the tools and their arguments")
    parser.add_argument("name", nargs="?", help="the tool")
    parser.add_argument("args", nargs="*", help="key=value arguments")
    opts = parser.parse_args(argv)
    if opts.list or not opts.name:
        for tool in tools.REGISTRY.values():
            params = " ".join(f"{k}={'<' + v.get('type', 'value') + '>'}" + ("" if k in tool.required else "?")
                              for k, v in tool.params.items())
            print(f"{tool.name} {params}\n    {tool.description}")
        return 0 if opts.list else 2
    if opts.name not in tools.REGISTRY:
        print(f"avo.tool: unknown tool {opts.name!r}; --list shows them", file=sys.stderr)
        return 2
    from avo.config import ConfigError
    from avo.lineage import LineageError
    from avo.suites import SuiteError
    from avo.workbench import ExternalSession

    try:
        args = _arguments(opts.args, opts.json)
        run = open_run(opts.config, opts.run, opts.set)
    except (ConfigError, SuiteError, LineageError, ValueError, OSError) as exc:
        print(f"avo.tool: {exc}", file=sys.stderr)
        return 2
    try:
        out = ExternalSession(run, via="cli").call(opts.name, args)
    except RuntimeError as exc:  # the seed failed to compile, the run cannot start
        print(f"avo.tool: {exc}", file=sys.stderr)
        return 1
    finally:
        run.progress.close()
    print(out.text)
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main())
