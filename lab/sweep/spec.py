"""Sweep files: what to vary, how to search, when to stop trials early.

The format (experiments/sweeps/*.toml)::

    base = "../quickstart.toml"      # the experiment every trial starts from (relative to this file)
    metric = "val_loss"               # an eval metric: val_loss, val_bpb or val_ppl
    direction = "minimize"
    name = "lr"                       # optional; default: the file name
    [search]
    method = "grid"                   # grid | random | tpe
    trials = 8                        # random/tpe budget; grid defaults to every point
    seed = 0
    [params."optimizer.lr"]
    values = [1e-4, 3e-4, 1e-3, 3e-3] # or: low = 1e-4, high = 1e-1, log = true
    [early_stop]
    rule = "successive_halving"       # successive_halving | hyperband | none
    min_steps = 100                   # first rung; default: the base experiment's eval.every
    reduction_factor = 3
    diverge = true                    # kill trials whose loss is non-finite or climbs above its start
    [set]                             # fixed overrides for every trial
    "training.steps" = 400

:func:`load_sweep` checks the file and every trial configuration it can
produce (each grid value, each range's ends, with the fixed overrides) through
the strict experiment loader, and reports every problem at once, before any
trial starts.
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.config.dotted import flatten
from lm.errors import ConfigError

METHODS = ("grid", "random", "tpe")
RULES = ("successive_halving", "hyperband", "none")
METRICS = ("val_loss", "val_bpb", "val_ppl")
DIRECTIONS = ("minimize", "maximize")
TOP_KEYS = ("base", "metric", "direction", "name", "description", "search", "params", "early_stop", "set")
SECTION_KEYS = {
    "search": ("method", "trials", "seed"),
    "early_stop": ("rule", "min_steps", "reduction_factor", "diverge"),
}
PARAM_KEYS = ("values", "low", "high", "log", "step")
DEFAULT_RANDOM_TRIALS = 10


@dataclass
class ParamSpec:
    """One swept config key: a list of values, or a (log-)uniform range."""

    key: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int_range(self) -> bool:
        return self.values is None and all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in (self.low, self.high))

    def probe_values(self) -> list[Any]:
        """Values to validate the base config with: every listed value, or both ends of the range."""
        return list(self.values) if self.values is not None else [self.low, self.high]


@dataclass
class SweepSpec:
    """A validated sweep file."""

    name: str
    path: Path
    base: Path
    metric: str = "val_loss"
    direction: str = "minimize"
    description: str = ""
    method: str = "grid"
    trials: int = 0
    seed: int | None = 0
    params: list[ParamSpec] = field(default_factory=list)
    rule: str = "successive_halving"
    min_steps: int = 0
    reduction_factor: int = 3
    diverge: bool = True
    fixed: list[str] = field(default_factory=list)
    """The ``[set]`` table as ``key=value`` override strings."""
    total_steps: int = 0
    """training.steps of the resolved base (the Hyperband max resource)."""
    warmup_steps: int = 0

    def grid(self) -> dict[str, list[Any]]:
        return {p.key: list(p.values or []) for p in self.params}

    def fingerprint(self) -> dict:
        """What must not change between two invocations on one optuna study."""
        return {"base": str(self.base), "metric": self.metric, "direction": self.direction, "method": self.method,
                "params": [vars(p) for p in self.params], "fixed": self.fixed, "rule": self.rule,
                "min_steps": self.min_steps, "reduction_factor": self.reduction_factor, "seed": self.seed}


def override_text(key: str, value: Any) -> str:
    """``key=value`` with the value written as TOML, so ``--set`` parses it back to the same type."""
    from lm.config.loader import toml_value

    return f"{key}={toml_value(value)}"


def unknown_keys(keys, allowed, where: str) -> list[str]:
    """A problem per key not in ``allowed``, with a did-you-mean (study files of sweeps and scaling)."""
    out = []
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" — did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(allowed)}"
            out.append(f"unknown key '{where}{k}'{hint}")
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_sweep(path: str | Path, *, name: str | None = None) -> SweepSpec:
    """Read and check a sweep file and every trial config it implies; ConfigError lists all problems."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError([f"no such sweep file: {path}"], source=None)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source=source) from None
    problems = unknown_keys(raw, TOP_KEYS, "")
    for section, allowed in SECTION_KEYS.items():
        sub = raw.get(section, {})
        if not isinstance(sub, dict):
            problems.append(f"'{section}' must be a table ([{section}]), got {sub!r}")
            raw[section] = {}
        else:
            problems += unknown_keys(sub, allowed, f"{section}.")
    search, early = raw.get("search", {}), raw.get("early_stop", {})

    spec = SweepSpec(name=name or str(raw.get("name") or path.stem), path=path.absolute(), base=Path())
    if "base" not in raw or not isinstance(raw["base"], str):
        problems.append("'base' (the experiment every trial starts from, e.g. base = \"../quickstart.toml\") is required")
    else:
        spec.base = (path.parent / raw["base"]).resolve()
    spec.description = str(raw.get("description", ""))
    spec.metric = raw.get("metric", "val_loss")
    if spec.metric not in METRICS:
        problems.append(f"metric must be one of {', '.join(METRICS)} (eval metrics), got {spec.metric!r}")
    spec.direction = raw.get("direction", "minimize")
    if spec.direction not in DIRECTIONS:
        problems.append(f"direction must be 'minimize' or 'maximize', got {spec.direction!r}")
    spec.method = search.get("method", "grid")
    if spec.method not in METHODS:
        problems.append(f"search.method must be one of {', '.join(METHODS)}, got {spec.method!r}")
    spec.seed = search.get("seed", 0)
    if spec.seed is not None and not isinstance(spec.seed, int):
        problems.append(f"search.seed must be an integer, got {spec.seed!r}")
    spec.rule = early.get("rule", "successive_halving")
    if spec.rule not in RULES:
        problems.append(f"early_stop.rule must be one of {', '.join(RULES)}, got {spec.rule!r}")
    spec.diverge = early.get("diverge", True)
    if not isinstance(spec.diverge, bool):
        problems.append(f"early_stop.diverge must be true or false, got {spec.diverge!r}")
    spec.reduction_factor = early.get("reduction_factor", 3)
    if not isinstance(spec.reduction_factor, int) or isinstance(spec.reduction_factor, bool) or spec.reduction_factor < 2:
        problems.append(f"early_stop.reduction_factor must be an integer >= 2, got {spec.reduction_factor!r}")

    params = raw.get("params", {})
    if not isinstance(params, dict) or not params:
        problems.append('no parameters to sweep: add a [params."section.key"] table with values = [...] or low/high')
        params = {}
    for key, table in _param_tables(params).items():
        problems += _param(spec, key, table)

    fixed = raw.get("set", {})
    if not isinstance(fixed, dict):
        problems.append(f"[set] must be a table of fixed overrides, got {fixed!r}")
        fixed = {}
    spec.fixed = [override_text(k, v) for k, v in flatten(fixed).items()]
    swept = {p.key for p in spec.params}
    problems += [f"'{k}' is both swept and fixed in [set]; keep one" for k in flatten(fixed) if k in swept]

    if spec.method == "grid":
        ranged = [p.key for p in spec.params if p.values is None]
        if ranged:
            problems.append(f"search.method = 'grid' needs values = [...] for every parameter; "
                            f"{', '.join(ranged)} has low/high (use method = 'random' or 'tpe' for ranges)")
    grid_size = math.prod(len(p.values) for p in spec.params if p.values is not None) if spec.params else 0
    trials = search.get("trials")
    if trials is not None and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
        problems.append(f"search.trials must be a positive integer, got {trials!r}")
        trials = None
    if spec.method == "grid":
        spec.trials = min(trials, grid_size) if trials else grid_size
    else:
        spec.trials = trials or DEFAULT_RANDOM_TRIALS

    if problems:
        raise ConfigError(problems, source=source)
    _check_trial_configs(spec, early, source)
    return spec


def _param_tables(params: dict, prefix: str = "") -> dict:
    """``[params."optimizer.lr"]`` and the unquoted ``[params.optimizer.lr]`` (nested tables) alike."""
    out = {}
    for key, table in params.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(table, dict) and table and not set(table) & set(PARAM_KEYS) \
                and all(isinstance(v, dict) for v in table.values()):
            out.update(_param_tables(table, name))
        else:
            out[name] = table
    return out


def _param(spec: SweepSpec, key: str, table) -> list[str]:
    where = f'params."{key}"'
    if not isinstance(table, dict):
        return [f"{where} must be a table with values = [...] or low/high, got {table!r}"]
    problems = unknown_keys(table, PARAM_KEYS, f"{where}.")
    p = ParamSpec(key=key, values=table.get("values"), low=table.get("low"), high=table.get("high"),
                  log=table.get("log", False), step=table.get("step"))
    if p.values is not None:
        if not isinstance(p.values, list):
            problems.append(f"{where}.values must be a list, got {p.values!r}")
        elif not p.values:
            problems.append(f"{where}.values is empty: the grid has no points; list at least one value")
        elif len({repr(v) for v in p.values}) != len(p.values):
            problems.append(f"{where}.values lists a value twice: {p.values!r}")
        if p.low is not None or p.high is not None:
            problems.append(f"{where}: give either values or low/high, not both")
    elif p.low is None or p.high is None:
        problems.append(f"{where} needs values = [...] or both low and high")
    else:
        if not (_is_number(p.low) and _is_number(p.high)):
            problems.append(f"{where}: low and high must be numbers, got {p.low!r} and {p.high!r}")
        elif p.low >= p.high:
            problems.append(f"{where}: low ({p.low}) must be below high ({p.high})")
        elif p.log and p.low <= 0:
            problems.append(f"{where}: log = true needs low > 0, got {p.low}")
        if not isinstance(p.log, bool):
            problems.append(f"{where}.log must be true or false, got {p.log!r}")
        if p.step is not None and (not _is_number(p.step) or p.step <= 0 or p.log):
            problems.append(f"{where}.step must be a positive number (and cannot be combined with log), got {p.step!r}")
    if not problems:
        spec.params.append(p)
    return problems


def _check_trial_configs(spec: SweepSpec, early: dict, source: str) -> None:
    """Resolve the base with the fixed overrides and each probe value; fills the spec's step counts."""
    from lab.queue.validate import resolve_entry

    try:
        base_cfg = resolve_entry(spec.base, spec.fixed)
    except ConfigError as e:
        raise ConfigError([f"base {e.source or spec.base}: {p}" for p in e.problems], source=source) from None
    problems, seen = [], set()
    for p in spec.params:
        for value in p.probe_values():
            try:
                resolve_entry(spec.base, spec.fixed + [override_text(p.key, value)])
            except ConfigError as e:
                for problem in e.problems:
                    if problem not in seen:
                        seen.add(problem)
                        problems.append(f'params."{p.key}" = {value!r}: {problem}')
    if not problems and len(spec.params) > 1 and spec.method == "grid":
        first = next(itertools.product(*(p.values for p in spec.params)))
        try:
            resolve_entry(spec.base, spec.fixed + [override_text(p.key, v) for p, v in zip(spec.params, first)])
        except ConfigError as e:
            problems += [f"the grid point {dict(zip((p.key for p in spec.params), first))}: {q}" for q in e.problems]
    spec.total_steps = base_cfg.training.steps
    spec.warmup_steps = base_cfg.schedule.warmup_steps
    min_steps = early.get("min_steps", base_cfg.eval.every or max(1, base_cfg.training.steps // 10))
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 1:
        problems.append(f"early_stop.min_steps must be a positive integer, got {min_steps!r}")
    elif spec.rule != "none" and min_steps >= spec.total_steps:
        problems.append(f"early_stop.min_steps ({min_steps}) must be below training.steps ({spec.total_steps}) "
                        "or no trial can be stopped early")
    else:
        spec.min_steps = min_steps
    if spec.rule != "none" and base_cfg.eval.every == 0:
        problems.append("early stopping compares eval losses, but eval.every = 0 evaluates only at the end; "
                        "set eval.every (in the base or [set]) or early_stop.rule = 'none'")
    if problems:
        raise ConfigError(problems, source=source)
