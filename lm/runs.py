"""Run directories: the files a training process writes and everyone else reads.

The layout and the record formats are the contract in ``docs/run-directory.md``.
The trainer writes through the helpers here (atomic ``status.json``) and the
JSON-lines writer of :mod:`lm.records`; the queue, the console's monitor, ``lab
runs``, ``lab compare`` and ``lab chat`` read through :class:`RunDir`,
:class:`lm.records.MetricsTail` and :func:`list_runs`. This module is torch-free
so listing runs is instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.atomic import atomic_write
from lm.errors import CheckpointError, ConfigError
from lm.processes import DEAD, REUSED, process_state
from lm.records import MetricsTail, json_safe, reverse_records

CONFIG_FILE = "config.toml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train.log"

STATES = ("pending", "running", "done", "failed", "stopped", "diverged")


# ----------------------------------------------------------------------------- writing

def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (:func:`lm.atomic.atomic_write`): readers never see half a file."""
    atomic_write(path, json.dumps(json_safe(obj)))


def new_run_dir(cfg, runs_dir: str | os.PathLike | None = None, now: float | None = None) -> Path:
    """Create and return ``<runs_dir>/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if taken).

    ``runs_dir`` defaults to ``cfg.runs_dir``. The directory is created with an
    exclusive mkdir, so two processes starting in the same second get two dirs.
    """
    parent = Path(runs_dir if runs_dir is not None else cfg.runs_dir)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{_safe_name(cfg.name)}-{stamp}"
    for n in range(1, 1000):
        path = parent / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run directory under {parent}")


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip())
    return cleaned.strip(".") or "run"


# ----------------------------------------------------------------------------- reading

MAX_PID = 2**31 - 1
"""pid_t is a C int: a larger number in status.json is not a process on any host."""

# The type each status.json key must have; a value of another type is a problem, not a crash.
_WHOLE = "a whole number >= 0"
_NUMBER = "a finite number or null"
_STATUS_KINDS = {"state": "state", "pid": "pid", "host": "text", "step": _WHOLE, "total_steps": _WHOLE,
                 "tokens": _WHOLE, "started": _NUMBER, "updated": _NUMBER, "best_val_loss": _NUMBER,
                 "best_val_bpb": _NUMBER, "last_val_loss": _NUMBER, "exit_code": "exit code", "message": "text"}


def _status_value_ok(kind: str, v: Any) -> bool:
    if kind == "state":
        return v in STATES
    if kind == "pid":
        return v is None or (type(v) is int and 0 < v <= MAX_PID)
    if kind == "text":
        return isinstance(v, str)
    if kind == _WHOLE:
        return type(v) is int and v >= 0
    if kind == _NUMBER:
        return v is None or (type(v) in (int, float) and math.isfinite(v))
    return v is None or (type(v) is int and -256 < v < 256)  # exit code


def _expected(kind: str) -> str:
    if kind == "state":
        return "one of " + ", ".join(STATES)
    if kind == "pid":
        return f"a process id 1..{MAX_PID} or null"
    if kind == "text":
        return "a string"
    if kind == "exit code":
        return "an exit code or null"
    return kind


def _show(v: Any, limit: int = 40) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class RunStatus:
    """The contents of ``status.json``; reads like the dict too (``status["state"]``).

    Values of the wrong type are never trusted: :meth:`from_dict` keeps the
    default for them and says so in ``problems``; :meth:`RunDir.status` then
    fills them from the run's records where it can (``reconstructed``).
    """

    state: str = "pending"
    pid: int | None = None
    host: str = ""
    step: int = 0
    total_steps: int = 0
    tokens: int = 0
    started: float | None = None
    updated: float | None = None
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    last_val_loss: float | None = None
    exit_code: int | None = None
    message: str = ""
    extra: dict = field(default_factory=dict)
    """Keys of status.json this version does not know (kept, not dropped)."""
    problems: list[str] = field(default_factory=list)
    """What could not be read (a missing or broken status.json, values of the wrong type)."""
    reconstructed: bool = False
    """Some values come from metrics.jsonl/events.jsonl because status.json could not say."""

    @classmethod
    def from_dict(cls, d: dict) -> "RunStatus":
        """The status in ``d``; each value of the wrong type stays at its default and is named in ``problems``."""
        known, extra, problems = {}, {}, []
        for k, v in d.items():
            kind = _STATUS_KINDS.get(k)
            if kind is None:
                extra[k] = v
            elif _status_value_ok(kind, v):
                known[k] = v
            else:
                problems.append(f"{k} is {_show(v)}, not {_expected(kind)}")
        return cls(**known, extra=extra, problems=problems)

    def invalid_keys(self) -> set[str]:
        """The status.json keys named in ``problems``."""
        return {p.split(" ", 1)[0] for p in self.problems}

    def to_dict(self) -> dict:
        skip = ("extra", "problems", "reconstructed")
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        d.update(self.extra)
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


# Event kinds that end a process, and the state each leaves the run in.
END_EVENTS = {"finish": "done", "halt": "diverged", "stop": "stopped", "error": "failed"}
_EXIT_OF_STATE = {"done": 0, "failed": 1, "diverged": 4, "stopped": 5}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    try:  # Linux: a killed child not yet reaped by its parent is a zombie, not a live run
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class RunDir:
    """One run directory, read-only: config, status, metrics, events, checkpoints."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def exists(self) -> bool:
        """Whether this looks like a run directory (has a config, a status or an events file)."""
        return self.config_path.is_file() or self.status_path.is_file() or self.events_path.is_file()

    def config(self, overrides: list[str] | tuple[str, ...] = ()):
        """The resolved ExperimentConfig from config.toml (ConfigError if missing or invalid)."""
        if not self.config_path.is_file():
            raise ConfigError([f"{self.path} is not a run directory: it has no {CONFIG_FILE}"],
                              source=str(self.path))
        from lm.config.loader import load_experiment

        return load_experiment(self.config_path, list(overrides))

    def raw_status(self) -> dict:
        """status.json as written, or {} when absent or unreadable (mid-creation)."""
        return self._read_status_file()[0] or {}

    def _read_status_file(self) -> tuple[dict | None, str]:
        """(status.json as a dict, '') or (None, why it cannot be read; '' when it does not exist)."""
        try:
            with open(self.status_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, ""
        except OSError as e:
            return None, f"{STATUS_FILE} cannot be read ({e.strerror or e})"
        try:
            d = json.loads(data)
        except ValueError:
            what = "is empty" if not data.strip() else "is not valid JSON (truncated?)"
            return None, f"{STATUS_FILE} {what}"
        if not isinstance(d, dict):
            return None, f"{STATUS_FILE} holds {type(d).__name__}, not an object"
        return d, ""

    def status(self) -> RunStatus:
        """The run's status; ``running`` with a dead pid on this host reads as ``stopped``.

        A status.json that is missing (while the run has records), broken, or has
        values of the wrong type is never trusted: what it cannot say is
        reconstructed from events.jsonl and metrics.jsonl (``reconstructed``),
        and ``problems`` says what was wrong. A pid that is alive but started after
        the run recorded it (``pid_start``: the pid was reused, say after a reboot)
        is dead too, so nobody is told to stop an unrelated process.
        """
        raw, why = self._read_status_file()
        st = RunStatus.from_dict(raw) if raw is not None else RunStatus()
        if why:
            st.problems.insert(0, why)
        if raw is None or st.problems:
            self._reconstruct(st, whole=raw is None)
        if (st.state == "running" and st.pid and st.host == socket.gethostname()
                and process_state(st.pid, st.host, st.extra.get("pid_start")) in (DEAD, REUSED)):
            st.state = "stopped"
            st.message = st.message or "the training process ended without saying so (killed?)"
        return st

    def _reconstruct(self, st: RunStatus, whole: bool) -> None:
        """Fill ``st`` from the run's records: every value when status.json said nothing (``whole``),
        else only the values it had wrong."""
        events, metrics = self.events(), self.metrics()
        if not events and not metrics:
            return  # a run that has not started yet (or left nothing to go by)
        if whole and not st.problems:
            st.problems.append(f"{STATUS_FILE} is missing")
        bad = set(_STATUS_KINDS) if whole else st.invalid_keys()
        if "pid" in bad and st.state == "running":  # no pid to check: the records say whether it ended
            bad |= {"state", "exit_code", "message"}
        found: dict[str, Any] = {}
        ends = [i for i, e in enumerate(events) if e.get("event") in END_EVENTS]
        starts = [i for i, e in enumerate(events) if e.get("event") in ("start", "resume")]
        end = events[ends[-1]] if ends else None
        if end is not None and ends[-1] > max(starts, default=-1):
            found["state"] = END_EVENTS[end["event"]]
            found["exit_code"] = _EXIT_OF_STATE[found["state"]]
            found["message"] = str(end.get("message") or "")
        else:  # no end after the last start: killed, or alive and about to rewrite its status
            found["state"] = "stopped"
            found["message"] = "the training process left no final status (killed?)"
        train = [r for r in metrics if r.get("type") == "train"]
        evals = [r for r in metrics if r.get("type") == "eval"]
        steps = [r["step"] for r in metrics + events if type(r.get("step")) is int]
        found["step"] = max(steps, default=0)
        if train and type(train[-1].get("tokens")) is int:
            found["tokens"] = train[-1]["tokens"]
        walls = [e["wall"] for e in events if type(e.get("wall")) in (int, float) and math.isfinite(e["wall"])]
        if walls:
            found["started"], found["updated"] = walls[0], walls[-1]
        vals = [r["val_loss"] for r in evals if _finite(r.get("val_loss"))]
        bpbs = [r["val_bpb"] for r in evals if _finite(r.get("val_bpb"))]
        found["best_val_loss"] = min(vals) if vals else None
        found["best_val_bpb"] = min(bpbs) if bpbs else None
        found["last_val_loss"] = vals[-1] if vals else None
        found["total_steps"] = self._configured_steps() or found["step"]
        for key, value in found.items():
            if key in bad:
                setattr(st, key, value)
        st.reconstructed = True

    def _configured_steps(self) -> int:
        """training.steps of config.toml (0 when it cannot be read)."""
        import tomllib

        try:
            steps = tomllib.loads(self.config_path.read_text(encoding="utf-8")).get("training", {}).get("steps")
        except (OSError, ValueError, AttributeError):
            return 0
        return steps if type(steps) is int and steps > 0 else 0

    def metrics(self, kind: str | None = None) -> list[dict]:
        """Every record of metrics.jsonl (only ``kind`` = 'train' or 'eval' if given)."""
        recs = MetricsTail(self.metrics_path).read()
        return recs if kind is None else [r for r in recs if r.get("type") == kind]

    def events(self) -> list[dict]:
        """Every record of events.jsonl."""
        return MetricsTail(self.events_path).read()

    def last_record(self, kind: str) -> dict | None:
        """The last metrics record of this type, reading only the end of the file."""
        for rec in reverse_records(self.metrics_path):
            if rec.get("type") == kind:
                return rec
        return None

    def checkpoints(self) -> list[Path]:
        """Every checkpoint file, step checkpoints first (by step), then latest.pt, best.pt."""
        d = self.checkpoint_dir
        if not d.is_dir():
            return []
        steps = sorted(d.glob("step_*.pt"))
        named = [d / n for n in ("latest.pt", "best.pt") if (d / n).is_file()]
        return steps + named

    def default_checkpoint(self) -> str | None:
        """The checkpoint to talk to when none is named: ``best`` if it exists, else ``latest``, else the
        newest ``step_N`` (None when the run has none yet)."""
        d = self.checkpoint_dir
        for name in ("best", "latest"):
            if (d / f"{name}.pt").is_file():
                return name
        steps = sorted(d.glob("step_*.pt")) if d.is_dir() else []
        return steps[-1].stem if steps else None

    def checkpoint(self, which: str | os.PathLike = "latest") -> Path:
        """Path of checkpoint ``latest``, ``best``, ``step_N`` or a file path; CheckpointError if absent."""
        w = str(which)
        if w in ("latest", "best"):
            path = self.checkpoint_dir / f"{w}.pt"
        elif w.startswith("step_") and "/" not in w:
            path = self.checkpoint_dir / (w if w.endswith(".pt") else f"{w}.pt")
        else:
            path = Path(which)
            if not path.is_absolute() and not path.exists():
                path = self.path / path
        if path.is_file():
            return path
        have = [p.name for p in self.checkpoints()]
        listing = ", ".join(have) if have else "none (the run has not written a checkpoint yet)"
        raise CheckpointError(
            f"checkpoint {w!r} does not exist in {self.path}; checkpoints there: {listing}. "
            "Pass 'latest', 'best' or one of the files listed.")


def _finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


# ----------------------------------------------------------------------------- listing

@dataclass
class RunSummary:
    """One row of ``lab runs``."""

    name: str
    path: Path
    state: str
    step: int
    total_steps: int
    best_val_loss: float | None
    best_val_bpb: float | None
    tokens_per_s: float | None
    started: float | None
    message: str = ""
    problem: str = ""
    """What of the run's files could not be read ('' when everything could)."""
    reconstructed: bool = False
    """The state and numbers come (partly) from the run's records, its status.json could not say."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def summarize_run(path: str | os.PathLike) -> RunSummary:
    """The summary of one run directory from its status and last train record."""
    rd = RunDir(path)
    st = rd.status()
    last = rd.last_record("train")
    speed = (last or {}).get("tokens_per_s")
    return RunSummary(
        name=rd.name, path=rd.path, state=st.state, step=st.step, total_steps=st.total_steps,
        best_val_loss=st.best_val_loss, best_val_bpb=st.best_val_bpb,
        tokens_per_s=speed if _finite(speed) else None, started=st.started, message=st.message,
        problem="; ".join(st.problems), reconstructed=st.reconstructed,
    )


def unreadable_run(path: str | os.PathLike, why: str) -> RunSummary:
    """The row of a run directory that could not be read at all."""
    p = Path(path)
    return RunSummary(name=p.name, path=p, state="unreadable", step=0, total_steps=0, best_val_loss=None,
                      best_val_bpb=None, tokens_per_s=None, started=None, problem=why)


def list_runs(runs_dir: str | os.PathLike = "runs") -> list[RunSummary]:
    """Every run directory directly under ``runs_dir``, newest first ([] if it does not exist)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        if child.is_dir() and RunDir(child).exists():
            try:  # one run's unreadable files must not hide the others
                out.append(summarize_run(child))
            except (OSError, ValueError) as e:
                out.append(unreadable_run(child, f"{type(e).__name__}: {e}"))
    out.sort(key=lambda r: (r.started or 0.0, r.name), reverse=True)
    return out
