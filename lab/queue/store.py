"""The persistent run queue: ``<runs>/queue.json``, shared safely by several processes.

Every change is a read-modify-write under an exclusive ``fcntl`` lock on
``<runs>/queue.lock`` (a separate file, because ``queue.json`` itself is
replaced on every write), and the new content is written to a temp file,
fsynced and renamed over the old one. So a reader without the lock always sees
a whole file, and two runners can never claim the same entry: the claim (read,
pick a pending entry, mark it running with the runner's pid) happens inside one
locked transaction.

An entry is one run: a base experiment file plus ``--set`` style overrides.
Its ``status`` follows the run-directory states (pending, running, done,
failed, stopped, diverged). An entry marked ``running`` whose runner process is
gone (killed, even with ``kill -9``) is *orphaned*; :meth:`QueueStore.recover`
puts it back to pending with its run directory kept, so the next runner resumes
it from ``checkpoints/latest.pt`` instead of starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lm.atomic import atomic_write
from lm.errors import LabError

STATUSES = ("pending", "running", "done", "failed", "stopped", "diverged")
FINISHED = ("done", "failed", "stopped", "diverged")
QUEUE_FILE = "queue.json"
LOCK_FILE = "queue.lock"
FORMAT_VERSION = 1


class QueueError(LabError):
    """A queue command that cannot be done (unknown id, entry in the wrong state, corrupt file)."""


def this_host() -> str:
    """The host name recorded with pids: a pid means something only on its own host."""
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this host (zombies count as gone)."""
    from lm.runs import pid_alive as alive

    return bool(pid) and alive(int(pid))


@dataclass
class QueueEntry:
    """One queued run: what to run, where it runs, and how it went."""

    id: int
    experiment: str
    """Absolute path of the base experiment TOML."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` strings, passed to ``lab run`` as ``--set``."""
    name: str = ""
    """The resolved experiment name (run directories are ``<name>-<timestamp>``)."""
    cwd: str = ""
    """Directory the entry was added from; the run starts there, as if typed at that prompt."""
    status: str = "pending"
    run_dir: str | None = None
    """The run directory once assigned; kept across interruptions so a restart resumes it."""
    attempts: int = 0
    """How many times a process was started for this entry (first start plus resumes)."""
    runner_pid: int | None = None
    runner_host: str | None = None
    pid: int | None = None
    """Pid of the ``lab run`` process while running."""
    gpu: str | None = None
    """CUDA_VISIBLE_DEVICES given to the run, if any."""
    added: float = 0.0
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    message: str = ""
    sweep: str | None = None
    """Name of the sweep this entry is a trial of (sweep entries are run by ``lab sweep`` only)."""
    trial: int | None = None
    """optuna trial number within the sweep."""
    pruned: bool = False
    """The sweep stopped this trial early (successive halving / Hyperband)."""

    @classmethod
    def from_dict(cls, d: dict) -> "QueueEntry":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cwd_or_here(self) -> str:
        """The directory to start the run in (the adding directory if it still exists)."""
        return self.cwd if self.cwd and Path(self.cwd).is_dir() else os.getcwd()

    def label(self) -> str:
        """Experiment file name plus overrides, as a user would type them."""
        parts = [Path(self.experiment).name] + [f"--set {o}" for o in self.overrides]
        return " ".join(parts)


@dataclass
class RunnerRecord:
    """A live ``lab queue run`` / ``lab sweep`` process, so ``lab queue stop`` can reach it."""

    pid: int
    host: str
    started: float
    workers: int
    sweep: str | None = None
    stop: str | None = None
    """None, 'now' (checkpoint the runs and exit) or 'drain' (finish the current runs, take no new ones)."""

    @classmethod
    def from_dict(cls, d: dict) -> "RunnerRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class QueueState:
    """The whole content of queue.json; mutate it inside :meth:`QueueStore.transaction`."""

    entries: list[QueueEntry] = field(default_factory=list)
    runners: list[RunnerRecord] = field(default_factory=list)
    next_id: int = 1

    def get(self, entry_id: int) -> QueueEntry:
        for e in self.entries:
            if e.id == entry_id:
                return e
        known = ", ".join(str(e.id) for e in self.entries) or "none (the queue is empty)"
        raise QueueError(f"no queue entry with id {entry_id}; ids in the queue: {known}")

    def append(self, experiment: str | os.PathLike, overrides: list[str], *, name: str = "",
               sweep: str | None = None, trial: int | None = None) -> QueueEntry:
        """Add a pending entry at the end (inside a transaction); returns it with its new id."""
        entry = QueueEntry(id=self.next_id, experiment=str(Path(experiment).absolute()), overrides=list(overrides),
                           name=name, cwd=os.getcwd(), added=time.time(), sweep=sweep, trial=trial)
        self.next_id += 1
        self.entries.append(entry)
        return entry

    def runner(self, pid: int, host: str) -> RunnerRecord | None:
        for r in self.runners:
            if r.pid == pid and r.host == host:
                return r
        return None


class QueueStore:
    """queue.json in a runs folder, with locked transactions and atomic writes."""

    def __init__(self, runs_dir: str | os.PathLike):
        self.runs_dir = Path(runs_dir).absolute()
        self.path = self.runs_dir / QUEUE_FILE
        self.lock_path = self.runs_dir / LOCK_FILE

    # ---- reading and writing -------------------------------------------------

    def read(self) -> QueueState:
        """A consistent snapshot without taking the lock (writes are atomic renames).

        The file is checked before it is trusted: a wrong type, a duplicate id or
        an unknown format version is a :class:`QueueError` naming the entry.
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return QueueState()
        except (OSError, UnicodeDecodeError) as e:
            raise QueueError(f"cannot read the queue file {self.path} ({e})") from None
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise QueueError(
                f"{self.path} is not a valid queue file ({e}); move it aside to start an empty queue"
            ) from None
        problems = queue_file_problems(raw)
        if problems:
            raise QueueError(f"{self.path} is not a valid queue file: {'; '.join(problems)}. Fix it by hand, or "
                             "move it aside to start an empty queue")
        entries = [QueueEntry.from_dict(e) for e in raw.get("entries", [])]
        return QueueState(entries=entries, runners=[RunnerRecord.from_dict(r) for r in raw.get("runners", [])],
                          next_id=max([raw.get("next_id", 1)] + [e.id + 1 for e in entries]))

    def _write(self, state: QueueState) -> None:
        payload = {
            "version": FORMAT_VERSION,
            "next_id": state.next_id,
            "entries": [e.to_dict() for e in state.entries],
            "runners": [dataclasses.asdict(r) for r in state.runners],
        }
        atomic_write(self.path, json.dumps(payload, indent=1) + "\n")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[QueueState]:
        """Hold the queue lock, yield the current state, write it back if the block succeeds."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                state = self.read()
                yield state
                self._write(state)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # ---- editing -------------------------------------------------------------

    def add(self, experiment: str | os.PathLike, overrides: list[str], *, name: str = "",
            sweep: str | None = None, trial: int | None = None) -> QueueEntry:
        """Append a pending entry; returns it with its new id.

        The caller validates the experiment first (:func:`lab.queue.validate.resolve_entry`).
        """
        with self.transaction() as state:
            return state.append(experiment, overrides, name=name, sweep=sweep, trial=trial)

    def remove(self, ids: list[int]) -> list[QueueEntry]:
        """Delete entries (never a running one: stop it first)."""
        with self.transaction() as state:
            removed = []
            for entry_id in ids:
                entry = state.get(entry_id)
                if entry.status == "running" and not is_orphan(entry):
                    raise QueueError(
                        f"entry {entry_id} is running ({entry.run_dir}); stop it first with `lab queue stop {entry_id}`"
                    )
                removed.append(entry)
            state.entries = [e for e in state.entries if e not in removed]
        return removed

    def move(self, entry_id: int, position: str) -> int:
        """Move an entry to ``top``, ``bottom``, ``up``, ``down`` or a 1-based position; returns the new position."""
        with self.transaction() as state:
            entry = state.get(entry_id)
            index = state.entries.index(entry)
            count = len(state.entries)
            targets = {"top": 0, "bottom": count - 1, "up": max(index - 1, 0), "down": min(index + 1, count - 1)}
            if position in targets:
                new = targets[position]
            else:
                try:
                    new = int(position) - 1
                except ValueError:
                    raise QueueError(
                        f"cannot move entry {entry_id} to {position!r}: use top, bottom, up, down or a position 1..{count}"
                    ) from None
                if not 0 <= new < count:
                    raise QueueError(f"position {position} is out of range: the queue has {count} entries (1..{count})")
            state.entries.remove(entry)
            state.entries.insert(new, entry)
        return new + 1

    def retry(self, ids: list[int], *, fresh: bool = False) -> list[QueueEntry]:
        """Put finished entries back to pending.

        A stopped or failed run with a resumable checkpoint keeps its run
        directory (the retry resumes it) unless ``fresh``; a done or diverged run,
        where resuming would only end the same way, starts over in a new one.
        """
        with self.transaction() as state:
            out = []
            for entry_id in ids:
                entry = state.get(entry_id)
                if entry.status in ("pending", "running"):
                    raise QueueError(f"entry {entry_id} is {entry.status}; only finished entries can be retried")
                if fresh or entry.status in ("done", "diverged") or not has_checkpoint(entry.run_dir):
                    entry.run_dir = None
                entry.status = "pending"
                entry.exit_code = None
                entry.message = ""
                entry.finished = None
                entry.pruned = False
                out.append(entry)
        return out

    # ---- runners -------------------------------------------------------------

    def register_runner(self, workers: int, sweep: str | None = None) -> RunnerRecord:
        """Record this process as a live runner (and forget runners that died)."""
        record = RunnerRecord(pid=os.getpid(), host=this_host(), started=time.time(), workers=workers, sweep=sweep)
        with self.transaction() as state:
            state.runners = [r for r in state.runners if not _runner_dead(r)]
            state.runners.append(record)
        return record

    def unregister_runner(self) -> None:
        with self.transaction() as state:
            me = state.runner(os.getpid(), this_host())
            if me is not None:
                state.runners.remove(me)

    def request_stop(self, mode: str) -> list[RunnerRecord]:
        """Ask every live runner to stop (``now``) or to drain (``drain``); returns them."""
        with self.transaction() as state:
            state.runners = [r for r in state.runners if not _runner_dead(r)]
            for r in state.runners:
                r.stop = mode
            return list(state.runners)

    def recover(self, state: QueueState) -> list[QueueEntry]:
        """Within a transaction: turn orphaned running entries on this host back into pending ones.

        Only entries whose runner was on this host are touched (a pid on another
        host cannot be checked). The run directory is kept so the next start
        resumes from its checkpoint. Returns the recovered entries; their
        ``pid`` still names the old run process, which the caller must make sure
        has exited before resuming (see :func:`lab.queue.runner.reap_orphan`).
        """
        out = []
        for e in state.entries:
            if is_orphan(e):
                e.status = "pending"
                e.runner_pid = None
                e.message = "interrupted (its runner died); will resume from its last checkpoint"
                out.append(e)
        return out


# ---- checking a queue file ---------------------------------------------------

_TEXT, _OPT_TEXT, _INT, _OPT_INT, _NUM, _OPT_NUM, _BOOL, _TEXTS = (
    "a string", "a string or null", "a whole number", "a whole number or null", "a number",
    "a number or null", "true or false", "a list of strings")
ENTRY_FIELDS = {"id": _INT, "experiment": _TEXT, "overrides": _TEXTS, "name": _TEXT, "cwd": _TEXT,
                "status": "status", "run_dir": _OPT_TEXT, "attempts": _INT, "runner_pid": "pid",
                "runner_host": _OPT_TEXT, "pid": "pid", "gpu": _OPT_TEXT, "added": _NUM, "started": _OPT_NUM,
                "finished": _OPT_NUM, "exit_code": _OPT_INT, "message": _TEXT, "sweep": _OPT_TEXT,
                "trial": _OPT_INT, "pruned": _BOOL}
RUNNER_FIELDS = {"pid": "pid", "host": _TEXT, "started": _NUM, "workers": _INT, "sweep": _OPT_TEXT,
                 "stop": "stop"}
_REQUIRED_ENTRY = ("id", "experiment")
_REQUIRED_RUNNER = ("pid", "host", "started", "workers")


def _value_ok(kind: str, v) -> bool:
    from lm.runs import MAX_PID

    is_int = type(v) is int
    is_num = type(v) in (int, float) and v == v and abs(v) != float("inf")
    return {
        _TEXT: isinstance(v, str), _OPT_TEXT: v is None or isinstance(v, str),
        _INT: is_int and v >= 0, _OPT_INT: v is None or is_int,
        _NUM: is_num, _OPT_NUM: v is None or is_num, _BOOL: type(v) is bool,
        _TEXTS: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "status": v in STATUSES, "pid": v is None or (is_int and 0 < v <= MAX_PID),
        "stop": v in (None, "now", "drain"),
    }[kind]


def _expected(kind: str) -> str:
    if kind == "status":
        return "one of " + ", ".join(STATUSES)
    if kind == "pid":
        return "a process id or null"
    if kind == "stop":
        return 'null, "now" or "drain"'
    return kind


def _record_problems(what: str, rec, fields: dict, required: tuple) -> list[str]:
    if not isinstance(rec, dict):
        return [f"{what} is {type(rec).__name__}, not an object"]
    out = [f"{what} has no {k!r}" for k in required if k not in rec]
    for key, value in rec.items():
        kind = fields.get(key)
        if kind is not None and not _value_ok(kind, value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            out.append(f"{what}: {key} is {shown}, not {_expected(kind)}")
    return out


def queue_file_problems(raw) -> list[str]:
    """Everything wrong with the parsed content of a queue.json (empty when it can be trusted)."""
    if not isinstance(raw, dict):
        return [f"it holds {type(raw).__name__}, not an object"]
    problems = []
    version = raw.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        problems.append(f"format version {json.dumps(version)} is not one this lab reads (version "
                        f"{FORMAT_VERSION}); it was written by another version of lab")
    if "next_id" in raw and not _value_ok(_INT, raw["next_id"]):
        problems.append(f"next_id is {json.dumps(raw['next_id'])}, not a whole number")
    entries, runners = raw.get("entries", []), raw.get("runners", [])
    for key, value in (("entries", entries), ("runners", runners)):
        if not isinstance(value, list):
            problems.append(f"{key} is {type(value).__name__}, not a list")
    if not isinstance(entries, list):
        entries = []
    seen: dict[int, int] = {}
    for i, e in enumerate(entries):
        entry_id = e.get("id") if isinstance(e, dict) else None
        what = f"entry {entry_id}" if type(entry_id) is int else f"entry #{i + 1}"
        problems += _record_problems(what, e, ENTRY_FIELDS, _REQUIRED_ENTRY)
        if type(entry_id) is int:
            if entry_id in seen:
                problems.append(f"entry id {entry_id} is used twice (entries #{seen[entry_id]} and #{i + 1}); "
                                "ids must be unique")
            seen.setdefault(entry_id, i + 1)
    for i, r in enumerate(runners if isinstance(runners, list) else []):
        problems += _record_problems(f"runner #{i + 1}", r, RUNNER_FIELDS, _REQUIRED_RUNNER)
    return problems


def is_orphan(entry: QueueEntry) -> bool:
    """An entry marked running whose runner, on this host, no longer exists."""
    return entry.status == "running" and entry.runner_host == this_host() and not pid_alive(entry.runner_pid)


def _runner_dead(r: RunnerRecord) -> bool:
    return r.host == this_host() and not pid_alive(r.pid)


def has_checkpoint(run_dir: str | None) -> bool:
    """Whether a run directory holds a resumable ``checkpoints/latest.pt``."""
    return bool(run_dir) and (Path(run_dir) / "checkpoints" / "latest.pt").is_file()
