"""Comparing runs: summary numbers, the config keys that differ, and overlaid curves.

Everything here reads run directories through :mod:`lm.runs` and returns plain
data or text; ``lab compare`` and ``lab sweep report`` print it. Plots are
drawn with plotext (version 6 API: ``plotext.figure``) as text, so they work
over SSH and in tests.
"""

from __future__ import annotations

import math
import os
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lm.errors import LabError

EVAL_METRICS = ("val_loss", "val_ppl", "val_bpb")
TRAIN_METRICS = ("loss", "ppl", "lr", "grad_norm", "tokens_per_s", "mfu")
# Keys that differ between any two runs without saying anything about them.
IGNORED_KEYS = ("runs_dir", "description")


@dataclass
class RunData:
    """One run directory, read once: status, records and flattened resolved config."""

    label: str
    path: Path
    status: object
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    config_problem: str = ""


def resolve_run_paths(specs: list[str], runs_dir: str | os.PathLike = "runs") -> list[Path]:
    """Run directories named by paths, names in ``runs_dir`` or unique name prefixes."""
    from lm.runs import RunDir, list_runs

    root = Path(runs_dir)
    out: list[Path] = []
    for spec in specs:
        candidates = [Path(spec), root / spec]
        found = next((c for c in candidates if c.is_dir() and RunDir(c).exists()), None)
        if found is None:
            known = [r.path for r in list_runs(root)]
            matches = [p for p in known if p.name.startswith(spec)]
            if len(matches) > 1:  # `qs-lr` names qs-lr-<time> rather than qs-lr-nowarmup-<time>
                matches = [p for p in matches if strip_stamp(p.name) == spec] or matches
            if len(matches) == 1:
                found = matches[0]
            elif matches:
                names = ", ".join(sorted(p.name for p in matches)[:8])
                raise LabError(f"'{spec}' matches {len(matches)} runs in {root} ({names}); give one of them")
            else:
                have = ", ".join(sorted(p.name for p in known)[:8]) or "none"
                raise LabError(f"no run directory '{spec}' (as a path or in {root}); runs there: {have}")
        if found not in out:
            out.append(found)
    return out


def flatten(table: dict, prefix: str = "") -> dict:
    """``{"model": {"norm": "pre"}}`` -> ``{"model.norm": "pre"}``."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def load_run(path: str | os.PathLike) -> RunData:
    """Read a run directory's status, metrics and config.toml."""
    from lm.runs import RunDir

    rd = RunDir(path)
    records = rd.metrics()
    run = RunData(label=rd.name, path=rd.path, status=rd.status(),
                  train=[r for r in records if r.get("type") == "train"],
                  evals=[r for r in records if r.get("type") == "eval"])
    try:  # the resolved config spells out every value, so a plain parse is enough to diff it
        run.config = flatten(tomllib.loads(rd.config_path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        run.config_problem = f"config.toml unreadable ({type(e).__name__})"
    return run


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(run: RunData) -> dict:
    """The numbers of one comparison row."""
    vals = [r.get("val_loss") for r in run.evals]
    finite_vals = [v for v in vals if _finite(v)]
    bpbs = [r.get("val_bpb") for r in run.evals if _finite(r.get("val_bpb"))]
    speeds = [r["tokens_per_s"] for r in run.train if _finite(r.get("tokens_per_s"))]
    st = run.status
    last = run.train[-1] if run.train else {}
    return {
        "run": run.label,
        "state": st.state,
        "steps": int(st.step or last.get("step") or 0),
        "total_steps": int(st.total_steps or 0),
        "final_val_loss": vals[-1] if vals and _finite(vals[-1]) else None,
        "best_val_loss": min(finite_vals) if finite_vals else st.best_val_loss,
        "best_val_bpb": min(bpbs) if bpbs else st.best_val_bpb,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "tokens": int(last.get("tokens") or st.tokens or 0),
        "diverged": st.state == "diverged" or diverged_at(run) is not None,
    }


def diverged_at(run: RunData) -> str | None:
    """Why the run counts as diverged by the sweep's rule (non-finite loss, or loss above its start
    after warmup), or None; runs stopped by a sweep for diverging read as stopped in their status."""
    from lab.sweep.search import DivergenceWatch

    warmup, vocab = run.config.get("schedule.warmup_steps", 0), run.config.get("model.vocab_size")
    watch = DivergenceWatch(int(warmup) if _finite(warmup) else 0, int(vocab) if _finite(vocab) else None)
    for rec in run.train:
        reason = watch.check(rec)
        if reason:
            return reason
    return None


def config_diff(runs: list[RunData]) -> list[tuple[str, list]]:
    """Keys whose value is not the same in every run (missing keys count as different), sorted."""
    keys = sorted(set().union(*(r.config for r in runs))) if runs else []
    out = []
    for key in keys:
        if key in IGNORED_KEYS:
            continue
        values = [r.config.get(key, _MISSING) for r in runs]
        if any(v != values[0] for v in values[1:]):
            out.append((key, [None if v is _MISSING else v for v in values]))
    return out


class _Missing:
    def __repr__(self) -> str:
        return "-"


_MISSING = _Missing()


def metric_kind(metric: str, runs: list[RunData]) -> str:
    """'eval' or 'train': which records carry ``metric`` (LabError naming the known metrics)."""
    if metric in EVAL_METRICS or any(metric in r for run in runs for r in run.evals[:1]):
        return "eval"
    if metric in TRAIN_METRICS or any(metric in r for run in runs for r in run.train[:1]):
        return "train"
    raise LabError(f"unknown metric {metric!r}; eval metrics: {', '.join(EVAL_METRICS)}; "
                   f"train metrics: {', '.join(TRAIN_METRICS)}")


def series(run: RunData, metric: str, x: str = "step", kind: str | None = None) -> tuple[list[float], list[float]]:
    """(x values, metric values) of one run, finite points only; x is 'step' or 'tokens'."""
    if x not in ("step", "tokens"):
        raise LabError(f"--x must be 'step' or 'tokens', got {x!r}")
    records = run.evals if (kind or metric_kind(metric, [run])) == "eval" else run.train
    xs, ys = [], []
    for r in records:
        if _finite(r.get(metric)) and _finite(r.get(x)):
            xs.append(float(r[x]))
            ys.append(float(r[metric]))
    return xs, ys


def ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average with alpha = 2/(span+1), debiased so the start is not pulled to 0."""
    if span <= 1:
        return list(values)
    alpha = 2.0 / (span + 1.0)
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(acc / weight)
    return out


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` points (fewer at the start)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smooth(values: list[float], window: int, kind: str = "ema") -> list[float]:
    """Smooth with an EMA ('ema', span ``window``) or a trailing mean ('mean')."""
    if kind == "ema":
        return ema(values, window)
    if kind == "mean":
        return moving_average(values, window)
    raise LabError(f"smoothing must be 'ema' or 'mean', got {kind!r}")


PLAIN_MARKERS = ("*", "+", "o", "x", "#", "=", "%", "@")


@dataclass
class Curve:
    """One line (or set of markers) of a plot."""

    label: str
    xs: list[float]
    ys: list[float]
    marker: str | None = None
    lines: bool = True


def render_plot(curves: list[Curve], *, title: str = "", xlabel: str = "", ylabel: str = "",
                xlog: bool = False, width: int | None = None, height: int | None = None,
                color: bool = True, legend: str = "top-right") -> str:
    """The curves overlaid in one terminal plot, as a string.

    ``legend`` is where the legend goes (``top-right``, ``bottom-left``, ``top-center`` ...):
    the place the curves are least likely to cross.
    """
    import plotext as plt

    if not hasattr(plt, "figure") or not hasattr(plt.figure, "signal"):
        raise LabError(f"plots need plotext 6 or newer (found {getattr(plt, '__version__', 'an older one')}); "
                       "upgrade it with: pip install -U plotext")
    drawable = [c for c in curves if c.xs]
    if not drawable:
        return "(nothing to plot: no finite points)"
    size = os.get_terminal_size(1) if os.isatty(1) else os.terminal_size((100, 30))
    fig = plt.figure
    plt.terminal.limit(False, False)  # the size is chosen here (from the terminal when there is one)
    fig.clear()
    fig.plot_size(width or min(size.columns, 140), height or max(12, min(size.lines - 6, 30)))
    fig.theme("default" if color else "clear")
    # Without colors the curves must differ by their marker (a line is drawn with its marker).
    plain = iter(PLAIN_MARKERS * (len(drawable) // len(PLAIN_MARKERS) + 1))
    for c in drawable:
        marker = c.marker or (None if color else next(plain))
        sig = fig.signal(c.xs, c.ys, marker=marker) if marker else fig.signal(c.xs, c.ys)
        sig.label(c.label)
        if c.lines and len(c.xs) > 1:
            sig.lines()
        fig.draw(sig)
    if xlog:
        fig.ruler("x").scale("log")
    xs = [x for c in drawable for x in c.xs]
    ys = [y for c in drawable for y in c.ys]
    vertical, horizontal = legend.split("-")
    # Legend coordinates are in axis units; on a log axis that unit is log10.
    lo, hi = (math.log10(min(xs)), math.log10(max(xs))) if xlog else (min(xs), max(xs))
    lx = {"left": lo, "right": hi, "center": (lo + hi) / 2}[horizontal]
    fig.legend(x=lx, y=max(ys) if vertical == "top" else min(ys), ha=horizontal, va=vertical, relative=True)
    if title:
        fig.title(title)
    if xlabel:
        fig.label(xlabel, "x")
    if ylabel:
        fig.label(ylabel, "y")
    return fig.build().string(colorless=not color)


def comparison_curves(runs: list[RunData], metric: str, *, x: str = "step", window: int | None = None,
                      kind: str = "ema", raw: bool = False) -> list[Curve]:
    """One smoothed curve per run; ``window`` None picks 1 for eval metrics (few points), 10 for train ones."""
    mk = metric_kind(metric, runs)
    if window is None:
        window = 1 if mk == "eval" else 10
    curves = []
    for run, label in zip(runs, short_labels([r.label for r in runs])):
        xs, ys = series(run, metric, x, mk)
        curves.append(Curve(label, xs, ys if raw else smooth(ys, window, kind)))
    return curves


def short_labels(names: list[str]) -> list[str]:
    """Run names without their ``-YYYYmmdd-HHMMSS`` stamps where they stay distinct (shorter legends)."""
    short = [strip_stamp(n) for n in names]
    return short if len(set(short)) == len(short) else list(names)


def strip_stamp(name: str) -> str:
    """``quickstart-20261122-101500`` (or ``...-101500-2``) -> ``quickstart``."""
    import re

    return re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", name)


def text_console():
    """A rich Console: the terminal's width on a TTY, wide when piped (so tables are not squeezed)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def format_value(v) -> str:
    """A config or metric value, compactly."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
