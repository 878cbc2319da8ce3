"""Scaling-study files (``experiments/scaling/NAME.toml``) and the runs they imply.

A study file::

    name = "builtin"                      # optional; default: the file name
    base = "../quickstart.toml"           # the base experiment (relative to this file)
    sizes = [                             # model sizes: width/depth (heads from the base's head size)
      { d_model = 64, num_layers = 2 },   #   or { preset = "tiny" }, or any [model] keys
      { d_model = 128, num_layers = 4 },
    ]
    past_optimal = 4.0                    # warn when D > this x the compute-optimal D

    [budget]                              # how many tokens each size trains on
    rule = "fixed"                        # "fixed": tokens; "per_param": tokens_per_param x N;
    tokens = 2_000_000                    # "isoflop": every size at every budget in flops
    # tokens_per_param = 20
    # flops = [1e13, 3e13, 1e14]

    [set]                                 # overrides for every run
    "eval.every" = 0

N is the calculator's non-embedding parameter count (lm.calc); training FLOPs
per token are the calculator's too (``training_flops_per_token``: every
matmul, attention included), so an isoFLOP budget C gives D = C / flops_per_token.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.sweep.spec import unknown_keys
from lm.errors import ConfigError

RULES = ("fixed", "per_param", "isoflop")
TOP_KEYS = ("name", "description", "base", "sizes", "budget", "set", "past_optimal")
BUDGET_KEYS = ("rule", "tokens", "tokens_per_param", "flops")
CHINCHILLA_TOKENS_PER_PARAM = 20.0
"""Hoffmann et al.'s compute-optimal ratio, the reference for studies without an isoFLOP grid."""


@dataclass
class Point:
    """One run of the study: a size at a token budget."""

    index: int
    label: str
    size: dict
    """The [model] keys this size sets."""
    n: int
    """Non-embedding parameters (lm.calc)."""
    params_total: int
    flops_per_token: float
    steps: int
    tokens: int
    flops: float
    """Training FLOPs: flops_per_token x tokens."""
    budget: float | None = None
    """The isoFLOP budget this point belongs to (None for fixed / per_param)."""
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ScaleSpec:
    name: str
    path: Path
    base: Path
    rule: str
    points: list[Point]
    description: str = ""
    past_optimal: float = 4.0
    fixed: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        """The queue's ``sweep`` field of this study's entries (plain ``lab queue run`` leaves them alone)."""
        return f"scale:{self.name}"


def _pos_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _label(model) -> str:
    return f"d{model.d_model}L{model.num_layers}"


def load_scale(path: str | Path, *, name: str | None = None, check_data: bool = True) -> ScaleSpec:
    """Read and check a study file and every run it implies; ConfigError lists all problems at once.

    ``check_data=False`` skips the check that a named dataset is downloaded (the queue's check).
    """
    from lm.calc import count_params, training_flops_per_token
    from lm.config.loader import load_experiment, toml_value
    from lm.config.schema import PRESETS, ModelConfig, default_d_ff

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError([f"no such scaling study file: {path}"], source=None)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source=source) from None
    problems = unknown_keys(raw, TOP_KEYS, "")
    study = name or raw.get("name") or path.stem
    if "base" not in raw or not isinstance(raw.get("base"), str):
        raise ConfigError(problems + ["'base' must name the base experiment file, e.g. base = \"../quickstart.toml\""],
                          source=source)
    base = (path.parent / raw["base"]).resolve()
    if not base.is_file():
        base_here = Path(raw["base"]).resolve()
        base = base_here if base_here.is_file() else base
    fixed_raw = raw.get("set", {})
    if not isinstance(fixed_raw, dict):
        problems.append("[set] must be a table of key = value overrides")
        fixed_raw = {}
    fixed = [f"{k}={toml_value(v)}" for k, v in fixed_raw.items()]
    budget = raw.get("budget", {})
    if not isinstance(budget, dict):
        problems.append("[budget] must be a table with rule = 'fixed' | 'per_param' | 'isoflop'")
        budget = {}
    problems += unknown_keys(budget, BUDGET_KEYS, "budget.")
    rule = budget.get("rule", "fixed")
    if rule not in RULES:
        problems.append(f"budget.rule must be one of {', '.join(repr(r) for r in RULES)}, got {rule!r}")
    need = {"fixed": "tokens", "per_param": "tokens_per_param", "isoflop": "flops"}.get(rule)
    if need == "flops":
        flops = budget.get("flops")
        if not (isinstance(flops, list) and flops and all(_pos_number(f) for f in flops)):
            problems.append(f"budget.flops must be a non-empty list of positive FLOP budgets, like [1e13, 3e13], "
                            f"got {flops!r}")
    elif need and not _pos_number(budget.get(need)):
        problems.append(f"budget.{need} must be a positive number for rule = {rule!r}, got {budget.get(need)!r}")
    past = raw.get("past_optimal", 4.0)
    if not _pos_number(past) or past <= 1:
        problems.append(f"past_optimal must be a number above 1 (a factor on the optimal tokens), got {past!r}")
    sizes = raw.get("sizes")
    if not (isinstance(sizes, list) and len(sizes) >= 3 and all(isinstance(s, dict) for s in sizes)):
        problems.append("sizes must list at least 3 model sizes (a fit has 3 parameters), like "
                        "[{ d_model = 64, num_layers = 2 }, ...]")
        sizes = []
    if problems:
        raise ConfigError(problems, source=source)

    cfg0 = load_experiment(base, fixed)  # the base (ConfigError names its own file and key)
    model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
    points: list[Point] = []
    seen = {}
    budgets = [float(f) for f in budget["flops"]] if rule == "isoflop" else [None]
    tokens_per_step = cfg0.tokens_per_step
    for si, size in enumerate(sizes):
        where = f"sizes[{si}]"
        keys = {k: v for k, v in size.items() if k != "preset"}
        bad = unknown_keys(keys, model_keys, f"{where}.")
        if bad:
            problems += bad
            continue
        model = cfg0.model
        if "preset" in size:
            if size["preset"] not in PRESETS:
                problems.append(f"{where}.preset {size['preset']!r} is not a preset; known: {', '.join(PRESETS)}")
                continue
            p = PRESETS[size["preset"]]
            keep = {"vocab_size": model.vocab_size, "context_length": model.context_length}
            model = dataclasses.replace(p, **keep)
            keys = {"d_model": p.d_model, "num_layers": p.num_layers, "num_heads": p.num_heads,
                    "d_ff": p.ffn_dim, **keys}
        keys.setdefault("num_heads", max(1, int(keys.get("d_model", model.d_model)) // model.d_head))
        if "d_ff" not in keys:
            keys["d_ff"] = default_d_ff(int(keys.get("d_model", model.d_model)), keys.get("ffn", model.ffn))
        try:
            model = dataclasses.replace(model, **keys)
        except TypeError as e:
            problems.append(f"{where}: {e}")
            continue
        if mp := model.problems():
            problems += [f"{where}: {p}" for p in mp]
            continue
        label = _label(model)
        if label in seen:
            problems.append(f"{where} is the same width/depth as sizes[{seen[label]}] ({label})")
            continue
        seen[label] = si
        pc = count_params(model)
        fpt = float(training_flops_per_token(model))
        for b in budgets:
            if rule == "fixed":
                target = float(budget["tokens"])
            elif rule == "per_param":
                target = float(budget["tokens_per_param"]) * pc.non_embedding
            else:
                target = b / fpt
            steps = max(1, round(target / tokens_per_step))
            tokens = steps * tokens_per_step
            warmup = min(cfg0.schedule.warmup_steps, steps // 5)
            ov = list(fixed) + [f"model.{k}={toml_value(v)}" for k, v in keys.items()] + [
                f"training.steps={steps}", f"schedule.warmup_steps={warmup}"]
            if cfg0.schedule.cosine_steps:
                ov.append(f"schedule.cosine_steps={max(steps, warmup)}")
            plabel = label if b is None else f"{label}-C{b:.0e}".replace("+", "")
            points.append(Point(index=len(points), label=plabel, size=keys, n=pc.non_embedding,
                                params_total=pc.total, flops_per_token=fpt, steps=steps, tokens=tokens,
                                flops=fpt * tokens, budget=b, overrides=ov))
    if problems:
        raise ConfigError(problems, source=source)
    # Every run's config is valid (and, with check_data, its dataset downloaded) before any starts.
    if check_data:
        from lab.queue.validate import resolve_all

        try:
            resolve_all([(str(base), p.overrides) for p in points])
        except ConfigError as e:  # the same missing dataset would otherwise be named once per point
            raise ConfigError(list(dict.fromkeys(e.problems)), source=e.source) from None
    else:
        for p in points:
            load_experiment(base, p.overrides)
    return ScaleSpec(name=study, path=path, base=base, rule=rule, points=points,
                     description=str(raw.get("description", "")), past_optimal=float(past), fixed=fixed)


def plan_rows(spec: ScaleSpec) -> list[dict[str, Any]]:
    return [{"point": p.label, "N (non-emb)": p.n, "params": p.params_total, "steps": p.steps,
             "tokens": p.tokens, "FLOPs": p.flops} for p in spec.points]
