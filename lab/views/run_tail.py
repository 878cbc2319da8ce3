"""What the monitor knows about one run, kept up to date by reading only what was appended.

:class:`RunTail` wraps the run directory readers of :mod:`lm.runs`: a
:class:`~lm.records.MetricsTail` per JSON-lines file (byte offsets, complete lines
only, a reset when a resume rewrote the file), a ``stat()`` before each read so
an idle run costs one system call per poll, and a :class:`MinMaxSeries` per
metric so a run of any length is drawn from at most ``max_points`` points.
:meth:`RunTail.poll` runs in a worker thread; the UI gets a :class:`RunView`,
an immutable snapshot it can draw without touching files.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path

from lab.views.series import MinMaxSeries

TRAIN_SERIES = ("loss", "ppl", "grad_norm", "tokens_per_s", "lr")
EVAL_SERIES = ("val_loss", "val_bpb")
# A null in these fields is what the trainer writes for a non-finite value (JSON has no inf or NaN):
# drawn as a mark, not left out.
NULL_IS_NON_FINITE = frozenset(("loss", "ppl", "grad_norm", "val_loss", "val_bpb"))
NAN = float("nan")
ETA_WINDOW = 50  # train records the ETA's rate is measured over


def _file_key(path: Path) -> tuple | None:
    """(inode, size, mtime) of a file, or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class RunView:
    """A snapshot of one run for drawing: status, latest values, series, events."""

    path: Path
    name: str
    state: str
    step: int
    total_steps: int
    tokens: int
    message: str
    last_train: dict
    last_eval: dict
    best_val_loss: float | None
    eta_s: float | None
    records: int
    events: tuple[dict, ...]
    series: dict[str, MinMaxSeries] = field(repr=False)
    version: int = 0
    world: str = ""
    """'2 x DDP', '8 x FSDP' for a distributed run (status.json's world_size and parallel), else ''."""

    @property
    def progress(self) -> float:
        """Fraction of the steps done (0 when the total is unknown)."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class RunTail:
    """Incremental reader of one run directory (use from one thread at a time)."""

    def __init__(self, path: str | os.PathLike, max_points: int = 2000, max_events: int = 500):
        from lm.records import MetricsTail
        from lm.runs import RunDir

        self.run = RunDir(path)
        self.max_points = max_points
        self._metrics = MetricsTail(self.run.metrics_path)
        self._events_tail = MetricsTail(self.run.events_path)
        self._keys: dict[str, tuple | None] = {}
        self.series = {name: MinMaxSeries(max_points) for name in TRAIN_SERIES + EVAL_SERIES}
        self.events: collections.deque[dict] = collections.deque(maxlen=max_events)
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=ETA_WINDOW)
        self.status = self.run.status()
        self.records = 0
        self.version = 0

    @property
    def path(self) -> Path:
        return self.run.path

    def _changed(self, path: Path) -> bool:
        key = _file_key(path)
        if key == self._keys.get(str(path), ()):
            return False
        self._keys[str(path)] = key
        return True

    def poll(self) -> bool:
        """Read whatever was appended since the last call; True if anything changed."""
        changed = False
        if self._changed(self.run.status_path):
            self.status = self.run.status()
            changed = True
        elif self.status.state == "running" and self.status.pid:
            # A killed run never rewrites its status: recheck its pid now and then (cheap).
            st = self.run.status()
            if st.state != self.status.state:
                self.status, changed = st, True
        if self._changed(self.run.metrics_path):
            records = self._metrics.read()
            if self._metrics.reset:
                self._clear_metrics()
            if records:
                self._ingest(records)
            changed = True
        if self._changed(self.run.events_path):
            events = self._events_tail.read()
            if self._events_tail.reset:
                self.events.clear()
            self.events.extend(events)
            changed = True
        if changed:
            self.version += 1
        return changed

    def _clear_metrics(self) -> None:
        for s in self.series.values():
            s.clear()
        self.last_train, self.last_eval = {}, {}
        self._recent.clear()
        self.records = 0

    def _ingest(self, records: list[dict]) -> None:
        train = [r for r in records if r.get("type") == "train"]
        evals = [r for r in records if r.get("type") == "eval"]
        self.records += len(records)
        for recs, names in ((train, TRAIN_SERIES), (evals, EVAL_SERIES)):
            if not recs:
                continue
            xs = [(r.get("step") or 0, r.get("tokens") or 0) for r in recs]
            for name in names:
                ys = [r.get(name) for r in recs]
                if all(type(y) is float for y in ys):  # the usual case: one C-speed pass, no filtering
                    self.series[name].extend(xs, ys)
                    continue
                if name in NULL_IS_NON_FINITE:  # null: a non-finite value; a missing key: nothing to draw
                    ys = [NAN if y is None and name in r else y for y, r in zip(ys, recs)]
                keep = [i for i, y in enumerate(ys) if isinstance(y, (int, float)) and not isinstance(y, bool)]
                if keep:
                    self.series[name].extend([xs[i] for i in keep], [float(ys[i]) for i in keep])
        if train:
            self.last_train = train[-1]
            for r in train[-ETA_WINDOW:]:
                if isinstance(r.get("time"), (int, float)):
                    self._recent.append((int(r.get("step") or 0), float(r["time"])))
        if evals:
            self.last_eval = evals[-1]

    def eta(self) -> float | None:
        """Seconds of training left at the recent pace (from the records' own clock), or None."""
        st = self.status
        if st.state != "running" or len(self._recent) < 2 or not st.total_steps:
            return None
        (s0, t0), (s1, t1) = self._recent[0], self._recent[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return max(0.0, (st.total_steps - s1) * (t1 - t0) / (s1 - s0))

    def view(self) -> RunView:
        """An immutable snapshot for the UI thread (the series are shared; they are only appended to
        by this tail's worker, and the UI reads them between polls)."""
        st = self.status
        step = max(int(st.step or 0), int(self.last_train.get("step") or 0))
        tokens = max(int(st.tokens or 0), int(self.last_train.get("tokens") or 0))
        vals = self.series["val_loss"]
        best = st.best_val_loss if st.best_val_loss is not None else vals.minimum()
        return RunView(path=self.path, name=self.run.name, state=st.state, step=step,
                       total_steps=int(st.total_steps or 0), tokens=tokens, message=st.message or "",
                       last_train=dict(self.last_train), last_eval=dict(self.last_eval), best_val_loss=best,
                       eta_s=self.eta(), records=self.records, events=tuple(self.events),
                       series=self.series, version=self.version, world=world_label(st.extra))


def world_label(extra: dict) -> str:
    """How a distributed run is shown: '<world_size> x <MODE>' (nothing for one process)."""
    n, mode = extra.get("world_size"), extra.get("parallel")
    if not isinstance(n, int) or n <= 1 or not isinstance(mode, str):
        return ""
    return f"{n} x {mode.upper()}"
