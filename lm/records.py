"""JSON-lines record files (a run's ``metrics.jsonl`` and ``events.jsonl``): append, cut back, read.

One writer appends and flushes whole lines; any number of readers follow the
file from other processes (:class:`MetricsTail`: only complete lines, and a
restart when the file is replaced), or read it backwards for the last records
(:func:`reverse_records`). Every record read passes :func:`clean_record`, so a
hand-edited or truncated file never puts a string where a number belongs.
The record formats are the contract in ``docs/run-directory.md``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from lm.atomic import atomic_write


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None, so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
        atomic_write(path, b"".join(kept))
    return dropped


def reverse_records(path: Path, chunk: int = 1 << 16) -> Iterator[dict]:
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
    return clean_record(rec) if isinstance(rec, dict) else None


# Record fields that hold numbers: a value of another type ("fast") is read as missing (null).
NUMERIC_FIELDS = frozenset(("tokens", "time", "wall", "loss", "ppl", "lr", "grad_norm", "tokens_per_s", "mfu",
                            "peak_mem", "val_loss", "val_ppl", "val_bpb"))
_NUMBER_TYPES = (int, float, type(None))


def clean_record(rec: dict) -> dict | None:
    """A metrics/events record with values of the wrong type set to None, or None for a record that
    cannot be placed at all (a ``step`` that is not a whole number >= 0, a ``type`` that is not a string).

    Non-finite floats (``NaN``, ``Infinity``) are numbers and are kept: readers draw them as marks.
    """
    step = rec.get("step", 0)
    if type(step) is not int or step < 0 or not isinstance(rec.get("type", ""), str):
        return None
    for key in NUMERIC_FIELDS.intersection(rec):
        if type(rec[key]) not in _NUMBER_TYPES:
            rec[key] = None
    return rec


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
            return [r for r in map(clean_record, recs) if r is not None]
    except ValueError:
        pass
    return [r for r in (_parse_line(ln) for ln in lines) if r is not None]
