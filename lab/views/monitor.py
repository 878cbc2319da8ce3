"""Turning run directories into what the Monitor tab draws, off the UI thread.

:class:`FrameBuilder` owns the :class:`~lab.views.run_tail.RunTail` of the
selected run and of the runs overlaid on its chart; :meth:`FrameBuilder.build`
polls them (a ``stat()`` each when nothing changed) and, when something did,
renders sparkline data, the loss chart and the new events into a
:class:`MonitorFrame`. :class:`RunLister` lists the runs
folder, re-reading only run directories whose ``status.json`` changed.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from lab.views.charts import ChartCurve, render_chart
from lab.views.formats import format_duration, format_number  # noqa: F401 (the monitor's formats)
from lab.views.run_tail import RunTail

SPARK_METRICS = (("loss", "loss"), ("ppl", "perplexity"), ("grad_norm", "grad norm"),
                 ("tokens_per_s", "tokens/s"), ("lr", "learning rate"))
SMOOTHING = (0, 10, 50, 200)
MAX_TAILS = 16  # run tails kept in memory (the selected run and overlays; others are dropped)


@dataclass(frozen=True)
class SparkData:
    """One sparkline: bucket means over x, and where values were not finite."""

    xs: list[float]
    ys: list[float]
    marks: list[float] = field(default_factory=list)


@dataclass
class MonitorFrame:
    """Everything the monitor draws for the selected run, computed off the UI thread."""

    path: Path
    view: object
    """A :class:`lab.views.run_tail.RunView`."""
    sparklines: dict[str, SparkData] = field(default_factory=dict)
    chart: Text | None = None
    new_events: list[dict] = field(default_factory=list)
    reset_events: bool = False


@dataclass(frozen=True)
class ChartOptions:
    """How the loss chart is drawn."""

    x_axis: str = "step"
    """'step' or 'tokens'."""
    log_y: bool = False
    smoothing: int = 0
    """EMA span in records; 0 draws the raw curve (downsampled by bucket min/max)."""
    overlays: tuple[str, ...] = ()
    """Other run directories whose train loss is overlaid."""
    width: int = 60
    height: int = 12


def short_name(name: str) -> str:
    """A run name without its -YYYYmmdd-HHMMSS stamp (legends)."""
    return re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", name)


class FrameBuilder:
    """Run tails plus rendering; :meth:`build` may be called from one worker thread at a time."""

    def __init__(self, max_points: int = 2000):
        self.max_points = max_points
        self.lock = threading.Lock()
        self._tails: dict[str, RunTail] = {}
        self._events_seen: dict[str, int] = {}
        self._last_key: tuple | None = None

    def tail(self, path: str | os.PathLike) -> RunTail:
        key = str(Path(path))
        t = self._tails.get(key)
        if t is None:
            if len(self._tails) >= MAX_TAILS:
                self._tails.pop(next(iter(self._tails)))
            t = self._tails[key] = RunTail(key, self.max_points)
        return t

    def build(self, path: str | os.PathLike, opts: ChartOptions, force: bool = False) -> MonitorFrame | None:
        """Poll the run (and its overlays); a new frame if anything changed (or ``force``), else None."""
        with self.lock:
            tail = self.tail(path)
            changed = tail.poll()
            overlays = [self.tail(p) for p in opts.overlays if str(Path(p)) != str(tail.path)]
            for o in overlays:
                changed = o.poll() or changed
            key = (str(tail.path), opts, tuple(o.version for o in overlays), tail.version)
            if not changed and not force and key == self._last_key:
                return None
            self._last_key = key
            view = tail.view()
            frame = MonitorFrame(path=tail.path, view=view)
            for name, _ in SPARK_METRICS:
                series = tail.series[name]
                frame.sparklines[name] = SparkData(*series.means(), series.marks())
            frame.chart = render_chart(self.curves(tail, overlays, opts), opts.width, opts.height,
                                       log_y=opts.log_y, xlabel="tokens" if opts.x_axis == "tokens" else "step",
                                       empty="no metrics yet: the run is starting or preparing its data")
            seen = self._events_seen.get(str(tail.path), 0)
            events = list(tail.events)
            if seen > len(events) or tail.events.maxlen and seen >= tail.events.maxlen:
                frame.reset_events, seen = True, 0
            frame.new_events = events[seen:]
            self._events_seen[str(tail.path)] = len(events)
            return frame

    def forget_events(self, path: str | os.PathLike) -> None:
        """The next frame of ``path`` carries every event again (the log was cleared)."""
        with self.lock:
            self._events_seen.pop(str(Path(path)), None)

    @staticmethod
    def curves(tail: RunTail, overlays: list[RunTail], opts: ChartOptions) -> list[ChartCurve]:
        """Train loss (raw min/max or smoothed), validation loss points, overlaid runs' train loss."""
        axis = 1 if opts.x_axis == "tokens" else 0
        loss = tail.series["loss"]
        xs, ys = loss.smoothed(opts.smoothing, axis) if opts.smoothing else loss.points(axis)
        label = "train loss" + (f" (ema {opts.smoothing})" if opts.smoothing else "")
        out = [ChartCurve(label, xs, ys, marks=loss.marks(axis))]
        val = tail.series["val_loss"]
        vx, vy = val.points(axis)
        if vx or val.non_finite:
            out.append(ChartCurve("val loss", vx, vy, markers=True, marks=val.marks(axis)))
        for o in overlays:
            ox, oy = o.series["loss"].smoothed(max(opts.smoothing, 10), axis)
            out.append(ChartCurve(short_name(o.run.name), ox, oy, marks=o.series["loss"].marks(axis)))
        return out


@dataclass
class _Listed:
    key: tuple | None
    summary: object


class RunLister:
    """``list_runs`` that re-reads only the run directories whose status.json changed."""

    def __init__(self, runs_dir: str | os.PathLike):
        self.runs_dir = Path(runs_dir)
        self._cache: dict[str, _Listed] = {}

    def list(self) -> list:
        """RunSummary of every run directory, newest first."""
        from lm.runs import RunDir, summarize_run

        try:
            children = [p for p in os.scandir(self.runs_dir) if p.is_dir()]
        except OSError:
            return []
        out, seen = [], set()
        for entry in children:
            status = os.path.join(entry.path, "status.json")
            try:
                st = os.stat(status)
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                if not RunDir(entry.path).exists():
                    continue
                key = None
            seen.add(entry.path)
            cached = self._cache.get(entry.path)
            if cached is None or cached.key != key or key is None:
                summary = summarize_run(entry.path)
            elif cached.summary.state == "running":
                summary = _recheck(cached.summary, entry.path)  # its pid may have died without a word
            else:
                summary = cached.summary
            cached = self._cache[entry.path] = _Listed(key, summary)
            out.append(cached.summary)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        out.sort(key=lambda r: (r.started or 0.0, r.name), reverse=True)
        return out


def _recheck(summary, path: str):
    """A listed running run, with its state re-derived (a dead pid reads as stopped)."""
    from lm.runs import RunDir

    state = RunDir(path).status().state
    if state == summary.state:
        return summary
    from dataclasses import replace

    return replace(summary, state=state)
