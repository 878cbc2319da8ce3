"""Comparing runs: summary numbers, the config keys that differ, and overlaid curves.

Everything here reads run directories through :mod:`lm.runs` and returns plain
data; ``lab compare`` and the console's Queue tab show it (plots:
:mod:`lab.views.plots`). A value that is not finite (a diverged run's ``inf``
loss) is shown as ``inf``/``nan`` in tables and as a mark on curves, never
dropped silently and never a crash.
"""

from __future__ import annotations

import math
import os
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lab.views.plots import Curve
from lm.config.dotted import flatten
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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
        "final_val_loss": vals[-1] if vals and _number(vals[-1]) else None,  # inf when it ended diverged
        "best_val_loss": min(finite_vals) if finite_vals else st.best_val_loss,
        "best_val_bpb": min(bpbs) if bpbs else st.best_val_bpb,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "tokens": int(last.get("tokens") or st.tokens or 0),
        "diverged": st.state == "diverged" or diverged_at(run) is not None,
    }


def diverged_at(run: RunData) -> str | None:
    """Why the run counts as diverged by the sweep's rule (non-finite loss, or loss above its start
    after warmup), or None; runs stopped by a sweep for diverging read as stopped in their status."""
    from lab.divergence import DivergenceWatch

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
    xs, ys, _ = series_with_marks(run, metric, x, kind)
    return xs, ys


def series_with_marks(run: RunData, metric: str, x: str = "step", kind: str | None = None
                      ) -> tuple[list[float], list[float], list[float]]:
    """(x, metric) of the finite points, and the x of records whose value is not finite (inf, NaN, or
    the null the trainer writes for them)."""
    if x not in ("step", "tokens"):
        raise LabError(f"--x must be 'step' or 'tokens', got {x!r}")
    records = run.evals if (kind or metric_kind(metric, [run])) == "eval" else run.train
    xs, ys, marks = [], [], []
    for r in records:
        if not _finite(r.get(x)) or metric not in r:
            continue
        v = r[metric]
        if _finite(v):
            xs.append(float(r[x]))
            ys.append(float(v))
        elif v is None or _number(v):
            marks.append(float(r[x]))
    return xs, ys, marks


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


def comparison_curves(runs: list[RunData], metric: str, *, x: str = "step", window: int | None = None,
                      kind: str = "ema", raw: bool = False) -> list[Curve]:
    """One smoothed curve per run; ``window`` None picks 1 for eval metrics (few points), 10 for train ones."""
    mk = metric_kind(metric, runs)
    if window is None:
        window = 1 if mk == "eval" else 10
    curves = []
    for run, label in zip(runs, short_labels([r.label for r in runs])):
        xs, ys, marks = series_with_marks(run, metric, x, mk)
        curves.append(Curve(label, xs, ys if raw else smooth(ys, window, kind), marks=marks))
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
        return f"{v:.4g}"  # 'inf', 'nan' as they are
    return str(v)
