"""Run configuration: frozen dataclasses loaded from YAML (`yaml.safe_load`), overridable from the
command line as `--set section.key=value`, and saved resolved beside the run. Every key is used;
an unknown key is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["ConfigError", "RunConfig", "load_config", "save_config"]


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SeedConfig:
    template: str = "flash_fwd_sm90"  # a dsl_templates/ family
    knobs: dict = field(default_factory=dict)  # overrides of the template's defaults
    node: str | None = None  # start from this lineage node instead (its source and knobs)


@dataclass(frozen=True)
class BudgetConfig:
    wall_hours: float = 168.0  # the paper ran 7 days
    candidates: int = 500  # candidates evaluated by this run (all of them, committed or not)
    tokens: int = 50_000_000  # model tokens over the run (agent operator)


@dataclass(frozen=True)
class EndpointSection:
    base_url: str | None = None  # None: no model; the knob operator runs
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's NAME; the key is never stored
    temperature: float = 0.2
    request_timeout_s: float = 300.0
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    max_tokens: int = 4096  # completion tokens per reply, sent on every request
    context_window: int | None = None  # the model's context in tokens; None: 100k assumed


@dataclass(frozen=True)
class AgentSection:
    max_turns: int = 40
    max_tokens_per_step: int = 400_000
    max_seconds_per_step: float = 3600.0
    outage_wait_s: float = 1800.0  # an unreachable endpoint pauses the run this long at most, then it stops


@dataclass(frozen=True)
class SupervisorSection:
    stall_steps: int = 6  # steps without a commit before the supervisor redirects
    repeat_limit: int = 3  # the same edit or failure this many times is a cycle
    fork_within: float = 0.05  # fork to committed nodes within this fraction of the best geomean


@dataclass(frozen=True)
class EvaluationSection:
    timeout_s: float = 900.0  # the whole cascade of one candidate
    seeds: int = 2
    rounds: int = 128  # cap on paired timing rounds per config (adaptive: stops once the decision is clear)
    baselines: tuple[str, ...] = ("fa4", "cudnn")  # measured in the same run on each commit
    gpus: tuple[int, ...] = (0,)  # one isolated worker per GPU: the knob operator evaluates one proposal on each
    # knob proposals per GPU compiling on the CPU while the GPU judges another (local and ray): with
    # compiles slower than judges (mha suite on an H200: ~10 s against ~7 s) 2 keeps every GPU busy
    lookahead: int = 2
    backend: str = "local"  # local: the GPUs of `gpus` on this host; ray: every GPU of a Ray cluster (avo.cluster)
    ray_address: str | None = None  # backend ray: "auto" (the cluster this host joined), HOST:PORT, ray://...;
    # None starts a Ray instance of this host's own


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"  # config.yaml, state.json, events.jsonl, candidates/, transcripts/
    archive: str = "archive"  # the lineage store shared by runs
    arch: str = "sm_90a"  # measured on (a GPU of) this arch
    compile_archs: tuple[str, ...] = ("sm_90a",)  # also compile-verified for these, e.g. sm_100a
    suite: str = "mha"
    operator: str = "auto"  # agent | knobs | auto (agent when an endpoint is set)
    random_seed: int = 0
    seed: SeedConfig = field(default_factory=SeedConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    endpoint: EndpointSection = field(default_factory=EndpointSection)
    agent: AgentSection = field(default_factory=AgentSection)
    supervisor: SupervisorSection = field(default_factory=SupervisorSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)

    def resolved_operator(self) -> str:
        if self.operator == "auto":
            return "agent" if self.endpoint.base_url else "knobs"
        return self.operator


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        target = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(value)
    config = _build(RunConfig, data, "")
    _validate(config)
    return config


def save_config(config: RunConfig, path: str | Path) -> None:
    from avo.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(where + k for k in unknown)}; "
                          f"known under {where or 'the top level'}: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {where}{name}: {value!r} is {_kind(value)}, expected a section "
                                  f"(a mapping with keys {', '.join(f.name for f in dataclasses.fields(hint))})")
            kwargs[name] = _build(hint, value or {}, f"{where}{name}.")
        else:
            kwargs[name] = _typed(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _typed(value, hint, key: str):
    """`value` as the field type `hint` wants (an int is a fine float, one item a fine tuple), or a
    one-line ConfigError naming the key, the value and the type: checked before anything is written."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(_typed(item, args[0], f"{key}[{i}]") for i, item in enumerate(items))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, dict) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))
    if type(None) in args:
        expected += " or null"
    raise ConfigError(f"config key {key}: {value!r} is {_kind(value)}, expected {expected}")


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _validate(config: RunConfig) -> None:
    from avo.jit import ARCHS

    if config.operator not in ("agent", "knobs", "auto"):
        raise ConfigError(f"operator {config.operator!r}: use agent, knobs or auto")
    for arch in (config.arch, *config.compile_archs):
        if arch not in ARCHS:
            raise ConfigError(f"arch {arch!r}: use one of {', '.join(ARCHS)}")
    if config.operator == "agent" and not (config.endpoint.base_url and config.endpoint.model):
        raise ConfigError("operator agent needs endpoint.base_url and endpoint.model")
    if config.evaluation.backend not in ("local", "ray"):
        raise ConfigError(f"evaluation.backend {config.evaluation.backend!r}: use local or ray")
    if config.evaluation.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("evaluation.backend ray needs Ray: pip install -e \".[ray]\"")
    if not 0 <= config.evaluation.lookahead <= 8:
        raise ConfigError(f"evaluation.lookahead {config.evaluation.lookahead}: use 0 to 8 (candidates per GPU "
                          "compiled ahead of its judge)")
    if config.budget.candidates < 1 or config.budget.wall_hours <= 0:
        raise ConfigError("budget.candidates and budget.wall_hours must be positive")
