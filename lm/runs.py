"""Run directories: the files a training process writes and everyone else reads.

The layout and the record formats are the contract in ``docs/run-directory.md``.
The trainer writes through the helpers here (atomic ``status.json``, JSON lines
flushed per line); the queue, the console's monitor, ``lab runs``, ``lab
compare`` and ``lab chat`` read through :class:`RunDir`, :class:`MetricsTail`
and :func:`list_runs`. This module is torch-free so listing runs is instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lm.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.toml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train.log"

STATES = ("pending", "running", "done", "failed", "stopped", "diverged")


# ----------------------------------------------------------------------------- writing

def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON via a temp file and rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(obj), f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a status file is for every reader
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class JsonLinesWriter:
    """Appends one JSON object per line and flushes it, so a tail reader sees whole lines."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append ``record`` (non-finite floats become null) and flush."""
        self._file.write(json.dumps(json_safe(record), separators=(", ", ": ")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def truncate_jsonl_after_step(path: str | os.PathLike, step: int) -> int:
    """Drop records with ``step`` > ``step`` (written after the checkpoint a resume starts from).

    The file is rewritten atomically; a :class:`MetricsTail` on it notices the
    replacement and starts over. Returns how many records were dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                dropped += 1  # a partial line from a killed writer
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                dropped += 1
                continue
            kept.append(line)
    if dropped:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


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

@dataclass
class RunStatus:
    """The contents of ``status.json``; reads like the dict too (``status["state"]``)."""

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

    @classmethod
    def from_dict(cls, d: dict) -> "RunStatus":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


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
        """Whether this looks like a run directory (has a config or a status file)."""
        return self.config_path.is_file() or self.status_path.is_file()

    def config(self, overrides: list[str] | tuple[str, ...] = ()):
        """The resolved ExperimentConfig from config.toml (ConfigError if missing or invalid)."""
        if not self.config_path.is_file():
            raise ConfigError([f"{self.path} is not a run directory: it has no {CONFIG_FILE}"],
                              source=str(self.path))
        from lm.config.loader import load_experiment

        return load_experiment(self.config_path, list(overrides))

    def raw_status(self) -> dict:
        """status.json as written, or {} when absent or unreadable (mid-creation)."""
        try:
            with open(self.status_path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def status(self) -> RunStatus:
        """The run's status; ``running`` with a dead pid on this host reads as ``stopped``."""
        st = RunStatus.from_dict(self.raw_status())
        if (st.state == "running" and st.pid and st.host == socket.gethostname()
                and not pid_alive(int(st.pid))):
            st.state = "stopped"
            st.message = st.message or "the training process ended without saying so (killed?)"
        return st

    def metrics(self, kind: str | None = None) -> list[dict]:
        """Every record of metrics.jsonl (only ``kind`` = 'train' or 'eval' if given)."""
        recs = MetricsTail(self.metrics_path).read()
        return recs if kind is None else [r for r in recs if r.get("type") == kind]

    def events(self) -> list[dict]:
        """Every record of events.jsonl."""
        return MetricsTail(self.events_path).read()

    def last_record(self, kind: str) -> dict | None:
        """The last metrics record of this type, reading only the end of the file."""
        for rec in _reverse_records(self.metrics_path):
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


def _reverse_records(path: Path, chunk: int = 1 << 16) -> Iterator[dict]:
    """Complete JSON records of a JSON-lines file, last first, reading from the end."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        buf = b""
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            lines = buf.split(b"\n")
            buf = lines[0]  # may be the tail of an earlier line: keep for the next chunk
            for line in reversed(lines[1:]):
                rec = _parse_line(line)
                if rec is not None:
                    yield rec
        rec = _parse_line(buf)
        if rec is not None:
            yield rec


def _parse_line(line: bytes) -> dict | None:
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


class MetricsTail:
    """Incremental reader of a JSON-lines file that another process is appending to.

    Each :meth:`read` returns only the complete lines added since the last call
    (a partial last line waits for its newline). If the file is replaced or
    shrinks (a resume dropped records written after its checkpoint), ``reset``
    is set and reading starts over from the beginning, so the caller should
    discard what it had.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self.reset = False
        self._partial = b""
        self._ino: int | None = None

    def read(self) -> list[dict]:
        """New complete records since the last call ([] if the file does not exist yet)."""
        self.reset = False
        try:
            f = open(self.path, "rb")
        except OSError:
            return []
        with f:
            st = os.fstat(f.fileno())
            if self._ino is not None and (st.st_ino != self._ino or st.st_size < self.offset):
                self.offset, self._partial, self.reset = 0, b"", True
            self._ino = st.st_ino
            f.seek(self.offset)
            data = f.read()
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return []
        self._partial = data[end + 1:]
        return _parse_lines(data[:end])


def _parse_lines(block: bytes) -> list[dict]:
    """Parse newline-separated JSON objects; one json.loads over the block when all are valid."""
    lines = [ln for ln in block.split(b"\n") if ln.strip()]
    if not lines:
        return []
    try:  # one C-level parse is several times faster than a loads() per line
        recs = json.loads(b"[" + b",".join(lines) + b"]")
        if all(isinstance(r, dict) for r in recs):
            return recs
    except ValueError:
        pass
    return [r for r in (_parse_line(ln) for ln in lines) if r is not None]


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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def summarize_run(path: str | os.PathLike) -> RunSummary:
    """The summary of one run directory from its status and last train record."""
    rd = RunDir(path)
    st = rd.status()
    last = rd.last_record("train")
    return RunSummary(
        name=rd.name, path=rd.path, state=st.state, step=int(st.step or 0),
        total_steps=int(st.total_steps or 0), best_val_loss=st.best_val_loss, best_val_bpb=st.best_val_bpb,
        tokens_per_s=(last or {}).get("tokens_per_s"), started=st.started, message=st.message or "",
    )


def list_runs(runs_dir: str | os.PathLike = "runs") -> list[RunSummary]:
    """Every run directory directly under ``runs_dir``, newest first ([] if it does not exist)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        if child.is_dir() and RunDir(child).exists():
            out.append(summarize_run(child))
    out.sort(key=lambda r: (r.started or 0.0, r.name), reverse=True)
    return out
