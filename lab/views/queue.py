"""What the Queue tab shows, read off the UI thread: entries with their runs' status, why a failed entry
failed (the last lines of its log) and how to retry it, and a comparison of the finished runs.

:class:`QueueReader` is owned by the tab's worker (one read at a time) and
keeps the comparison between reads, so an unchanged set of finished runs is
not read again; it returns a plain :class:`QueueSnapshot` the UI only draws.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lab.views.charts import ChartCurve, render_chart

MAX_COMPARED = 12  # the most recent finished runs compared
LOG_LINES = 6  # lines of a failed entry's train.log shown
# What the comparison chart can draw: (metric, label), as ``lab compare --metric``.
COMPARE_METRICS = (("val_loss", "val loss"), ("loss", "train loss"), ("lr", "learning rate"),
                   ("grad_norm", "grad norm"))
WHY_STATUSES = ("failed", "diverged", "stopped")


def _toml_keys(path: Path) -> set[str]:
    """The top-level keys of a TOML file (none when it cannot be read as TOML)."""
    try:
        return set(tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()


def is_study_file(path: Path) -> bool:
    """Whether a TOML file is a scaling study (``lab scale``: a ``base`` experiment, ``sizes`` and a ``budget``)."""
    return {"base", "sizes", "budget"} <= _toml_keys(path)


def is_sweep_file(path: Path) -> bool:
    """Whether a TOML file is a sweep (a ``base`` experiment plus ``params``/``search``)."""
    keys = _toml_keys(path)
    return "base" in keys and bool(keys & {"params", "search"})


def log_tail(path: Path, lines: int = LOG_LINES, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` non-empty lines of a log file ([] when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def retry_command(entry_id: int, runs_dir: Path, default_runs: Path | None = None) -> str:
    """The command that retries an entry (with ``--runs-dir`` unless it is the default folder)."""
    where = "" if default_runs is not None and Path(runs_dir).resolve() == Path(default_runs).resolve() else (
        f" --runs-dir {shlex.quote(str(runs_dir))}")
    return f"lab queue{where} retry {entry_id}"


def why_failed(entry, runs_dir: Path, default_runs: Path | None = None) -> str:
    """For a failed/diverged/stopped entry: its message, the last lines of its log, the retry command."""
    lines = [f"entry {entry.id} {entry.status}" + (f": {entry.message}" if entry.message else "")]
    if entry.run_dir:
        tail = log_tail(Path(entry.run_dir) / "train.log")
        if tail:
            lines.append(f"last lines of {Path(entry.run_dir).name}/train.log:")
            lines += [f"  {line}" for line in tail]
    lines.append(f"retry: r here, or `{retry_command(entry.id, runs_dir, default_runs)}`"
                 + (" (resumes its checkpoint)" if entry.status in ("failed", "stopped") else ""))
    return "\n".join(lines)


class Comparison:
    """Finished queue runs read through lab.run_comparison: summary rows, differing keys, curves of any metric."""

    def __init__(self, run_dirs: list[str]):
        from lab.run_comparison import config_diff, load_run, summarize

        self.runs = [load_run(p) for p in run_dirs]
        self.rows = [summarize(r) for r in self.runs]
        self.diff = config_diff(self.runs) if len(self.runs) > 1 else []

    def curves(self, metric: str = "val_loss") -> list[ChartCurve]:
        from lab.run_comparison import comparison_curves

        return [ChartCurve(c.label, c.xs, c.ys, marks=c.marks) for c in comparison_curves(self.runs, metric)]


@dataclass
class QueueSnapshot:
    """One read of the queue for the tab to draw."""

    entries: list = field(default_factory=list)
    """(QueueEntry, RunStatus or None) pairs."""
    runners: list = field(default_factory=list)
    why: dict[int, str] = field(default_factory=dict)
    """Entry id -> why it failed and how to retry it (failed, diverged, stopped entries)."""
    comparison: tuple | None = None
    """(Comparison or None, chart Text or None) when it changed since the last read, else None."""
    error: str = ""


class QueueReader:
    """Reads the queue, its runs and the comparison (from one worker thread at a time)."""

    def __init__(self, supervisor, default_runs: Path | None = None):
        self.supervisor = supervisor
        self.default_runs = default_runs
        self._key: tuple = ()
        self._comparison: Comparison | None = None

    def read(self, width: int, height: int, metric: str = "val_loss") -> QueueSnapshot:
        from lab.queue.store import QueueStore
        from lm.errors import LabError
        from lm.runs import RunDir

        runs_dir = self.supervisor.runs_dir
        try:
            state = QueueStore(runs_dir).read()
        except LabError as e:
            return QueueSnapshot(error=str(e))
        snap = QueueSnapshot()
        for e in state.entries:
            st = RunDir(e.run_dir).status() if e.run_dir and Path(e.run_dir).is_dir() else None
            snap.entries.append((e, st))
            if e.status in WHY_STATUSES:
                snap.why[e.id] = why_failed(e, runs_dir, self.default_runs)
        snap.runners = self.supervisor.queue_runners()
        done = tuple(e.run_dir for e in state.entries if e.status == "done" and e.run_dir)[-MAX_COMPARED:]
        key = (done, width, height, metric)
        if key != self._key:
            if self._key[:1] != (done,):
                self._comparison = Comparison(list(done)) if done else None
            self._key = key
            chart = None
            if self._comparison is not None:
                label = dict(COMPARE_METRICS).get(metric, metric)
                chart = render_chart(self._comparison.curves(metric), width, height, xlabel="step",
                                     empty=f"no {label} points")
            snap.comparison = (self._comparison, chart)
        return snap
