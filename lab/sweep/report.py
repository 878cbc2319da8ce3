"""What a sweep found: its trials, the best one, the metric against the swept parameter, divergence.

Reads only the optuna study in ``<runs>/sweeps/<name>/optuna.db`` (trial
states, parameters, intermediate values and the attributes the driver set:
run directory, pruned/diverged step, message), so it works while the sweep is
running or after it ended.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lab.views.plots import Curve, render_plot
from lab.sweep.search import SPEC_FILE, load_study, sweep_dir


@dataclass
class TrialRow:
    """One trial as the report shows it."""

    number: int
    outcome: str
    """done, pruned, diverged, failed or running."""
    params: dict
    value: float | None
    """The final metric of a finished trial."""
    last_value: float | None
    """The last reported (eval) metric, for any trial."""
    last_step: int | None
    run_dir: str = ""
    diverged_step: int | None = None
    message: str = ""
    curve: dict = field(default_factory=dict)


@dataclass
class SweepReport:
    name: str
    metric: str
    direction: str
    params: list[str]
    trials: list[TrialRow]
    best: TrialRow | None


def build_report(runs_dir: str | Path, name: str) -> SweepReport:
    """Collect a sweep's trials and its best trial from its optuna study."""
    import optuna

    study = load_study(runs_dir, name)
    info_path = sweep_dir(runs_dir, name) / SPEC_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    states = optuna.trial.TrialState
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if t.state == states.COMPLETE:
            outcome = "done"
        elif attrs.get("diverged"):
            outcome = "diverged"
        elif t.state == states.PRUNED:
            outcome = "pruned"
        elif t.state == states.RUNNING:
            outcome = "running"
        else:
            outcome = "failed"
        steps = sorted(t.intermediate_values)
        rows.append(TrialRow(
            number=t.number, outcome=outcome, params=dict(t.params),
            value=t.value if t.state == states.COMPLETE else None,
            last_value=t.intermediate_values[steps[-1]] if steps else None,
            last_step=steps[-1] if steps else None, run_dir=attrs.get("run_dir", ""),
            diverged_step=attrs.get("diverged_step"), message=attrs.get("message", ""),
            curve={s: t.intermediate_values[s] for s in steps}))
    done = [r for r in rows if r.value is not None]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    best = min(done, key=lambda r: sign * r.value) if done else None
    params = info.get("params") or sorted({k for r in rows for k in r.params})
    return SweepReport(name=name, metric=info.get("metric", "val_loss"),
                       direction=info.get("direction", "minimize"), params=params, trials=rows, best=best)


def divergence_lines(report: SweepReport) -> list[str]:
    """Where training diverged, and the boundary between stable and diverging values of the first parameter."""
    diverged = [r for r in report.trials if r.outcome == "diverged"]
    if not diverged:
        return ["no trial diverged"]
    lines = []
    for r in sorted(diverged, key=lambda r: r.number):
        where = f"at step {r.diverged_step}" if r.diverged_step is not None else ""
        lines.append(f"trial {r.number} ({params_text(r.params)}) diverged {where}: {r.message}".replace("  ", " "))
    if report.params:
        key = report.params[0]
        bad = [r.params[key] for r in diverged if _number(r.params.get(key))]
        good = [r.params[key] for r in report.trials if r.outcome in ("done", "pruned") and _number(r.params.get(key))]
        if bad:
            text = f"lowest {key} that diverged: {min(bad):.4g}"
            stable_below = [g for g in good if g < min(bad)]
            if stable_below:
                text += f"; highest stable {key} below it: {max(stable_below):.4g}"
            lines.append(text)
    return lines


def metric_vs_param_plot(report: SweepReport, *, width: int | None = None, height: int | None = None,
                         color: bool = True) -> str:
    """The metric of every trial against the first swept parameter (log x when it spans a decade or more)."""
    if not report.params:
        return "(no parameters)"
    key = report.params[0]
    pts = {"done": ([], []), "pruned": ([], []), "diverged": ([], [])}
    finite = [r.value if r.value is not None else r.last_value for r in report.trials if r.outcome != "diverged"]
    finite = [v for v in finite if v is not None and math.isfinite(v)]
    top = max(finite) if finite else 1.0
    for r in sorted(report.trials, key=lambda r: r.params.get(key, 0) if _number(r.params.get(key)) else 0):
        x = r.params.get(key)
        if not _number(x):
            continue
        if r.outcome == "done" and r.value is not None:
            pts["done"][0].append(float(x))
            pts["done"][1].append(r.value)
        elif r.outcome == "pruned" and r.last_value is not None:
            pts["pruned"][0].append(float(x))
            pts["pruned"][1].append(r.last_value)
        elif r.outcome == "diverged":
            pts["diverged"][0].append(float(x))
            pts["diverged"][1].append(top)  # drawn along the top: it has no meaningful value
    xs_all = [x for xs, _ in pts.values() for x in xs]
    xlog = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
    curves = [Curve(f"finished ({report.metric})", *pts["done"], lines=True),
              Curve("pruned (last eval)", *pts["pruned"], marker="o", lines=False),
              Curve("diverged", *pts["diverged"], marker="x", lines=False)]
    return render_plot(curves, title=f"sweep {report.name}: {report.metric} vs {key}", xlabel=key,
                       ylabel=report.metric, xlog=xlog, width=width, height=height, color=color,
                       legend="top-center")  # a U-shaped curve leaves the top middle free


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def params_text(params: dict) -> str:
    """``lr=0.001, model.norm=post``."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

