"""The trainer's side of the run-directory contract: metrics, events and status.

``metrics.jsonl`` and ``events.jsonl`` get one JSON object per line, flushed
per line; ``status.json`` is rewritten atomically. Record formats are those
of ``docs/run-directory.md``. Everything written also goes to an optional
``progress(kind, record)`` callback (kind ``"train"``, ``"eval"`` or
``"event"``), which is how ``lab run`` draws its live line without reading
the files back. A failing callback is reported once and never stops training.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lm.processes import identity
from lm.records import JsonLinesWriter, truncate_jsonl_after_step
from lm.runs import EVENTS_FILE, METRICS_FILE, STATUS_FILE, RunDir, atomic_write_json

Progress = Callable[[str, dict], None]

STATUS_INTERVAL = 1.0
"""Seconds between status.json rewrites at train log steps (state changes are written at once)."""


class RunRecorder:
    """Writes metrics.jsonl, events.jsonl and status.json of one run directory."""

    def __init__(self, run_dir: str | os.PathLike, total_steps: int, progress: Progress | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        previous = RunDir(self.run_dir).status().to_dict()  # type-checked: a resume never trusts a bad value
        now = time.time()
        self.status = {
            "state": "running", **identity(),
            "step": int(previous.get("step") or 0), "total_steps": int(total_steps),
            "tokens": int(previous.get("tokens") or 0),
            "started": previous.get("started") or now, "updated": now,
            "best_val_loss": previous.get("best_val_loss"), "best_val_bpb": previous.get("best_val_bpb"),
            "last_val_loss": previous.get("last_val_loss"), "exit_code": None, "message": "",
        }
        self._status_written = 0.0
        self._metrics: JsonLinesWriter | None = None
        self._events = JsonLinesWriter(self.run_dir / EVENTS_FILE)

    def drop_metrics_after(self, step: int) -> int:
        """On resume: forget train/eval records newer than the checkpoint (they are recomputed)."""
        self._close_metrics()
        return truncate_jsonl_after_step(self.run_dir / METRICS_FILE, step)

    def _metrics_writer(self) -> JsonLinesWriter:
        if self._metrics is None:
            self._metrics = JsonLinesWriter(self.run_dir / METRICS_FILE)
        return self._metrics

    def metric(self, record: dict) -> None:
        """Append a train or eval record (it carries its own ``type``)."""
        self._metrics_writer().write(record)
        self._notify(record["type"], record)

    def event(self, event: str, step: int, time_s: float, message: str = "", **extra) -> dict:
        """Append an event record: start, resume, eval, checkpoint, halt, stop, finish, error."""
        rec = {"type": "event", "event": event, "step": int(step), "time": round(float(time_s), 3),
               "wall": time.time(), "message": message, **extra}
        self._events.write(rec)
        self._notify("event", rec)
        return rec

    def _notify(self, kind: str, record: dict) -> None:
        if self.progress is None:
            return
        try:
            self.progress(kind, record)
        except Exception as e:  # a display bug must not cost the run
            print(f"lab: progress display failed ({type(e).__name__}: {e}); training continues", file=sys.stderr)
            self.progress = None

    def update_status(self, *, throttle: bool = False, **fields) -> None:
        """Merge ``fields`` into status.json and rewrite it atomically.

        With ``throttle`` (train log steps) the file is rewritten at most once
        every ``STATUS_INTERVAL`` seconds: a rename costs a millisecond or more
        on a busy journaling filesystem, too much to pay every few steps.
        """
        self.status.update(fields)
        now = time.time()
        self.status["updated"] = now
        if throttle and now - self._status_written < STATUS_INTERVAL:
            return
        self._status_written = now
        atomic_write_json(self.run_dir / STATUS_FILE, self.status)

    def finish(self, state: str, exit_code: int, message: str = "", **fields) -> None:
        """Write the final status (``done``, ``failed``, ``stopped`` or ``diverged``)."""
        self.update_status(state=state, exit_code=int(exit_code), message=message, **fields)

    def _close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def close(self) -> None:
        self._close_metrics()
        self._events.close()


class NullRecorder(RunRecorder):
    """The recorder of ranks other than 0 in a distributed run: rank 0 alone writes the run directory."""

    def __init__(self, run_dir: str | os.PathLike, total_steps: int, progress: Progress | None = None):
        self.run_dir = Path(run_dir)
        self.progress = None
        self.status = {"state": "running", "total_steps": int(total_steps)}

    def drop_metrics_after(self, step: int) -> int:
        return 0

    def metric(self, record: dict) -> None:
        pass

    def event(self, event: str, step: int, time_s: float, message: str = "", **extra) -> dict:
        return {"type": "event", "event": event, "step": int(step), "message": message, **extra}

    def update_status(self, *, throttle: bool = False, **fields) -> None:
        self.status.update(fields)

    def close(self) -> None:
        pass
