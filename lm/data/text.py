"""Byte-level work on corpora that may be far larger than memory.

A corpus is one or more UTF-8 files joined by a separator (the first special
token), seen as one virtual byte string (:class:`JoinedText`). This module
finds split points in it (a document boundary when there is one nearby, else
a UTF-8 character boundary), copies byte ranges of it into a file, and checks
that the bytes are UTF-8, naming the file and byte offset of the first bad one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lm.atomic import atomic_write
from lm.errors import DataError

Progress = Callable[[str, int, int], None]

CHUNK = 1 << 22
# How far from the ideal split point a document boundary may be (the split stays close to the asked fraction).
MAX_BOUNDARY_DISTANCE = 1 << 20


@dataclass(frozen=True)
class JoinedText:
    """Files joined by ``separator``, addressed as one byte string of ``size`` bytes.

    ``limit`` keeps only the first ``limit`` bytes (so a split point found in
    it never lies beyond them).
    """

    paths: tuple[Path, ...]
    separator: bytes
    limit: int | None = None

    @property
    def sizes(self) -> list[int]:
        return [p.stat().st_size for p in self.paths]

    @property
    def size(self) -> int:
        sizes = self.sizes
        total = sum(sizes) + len(self.separator) * max(0, len(sizes) - 1)
        return total if self.limit is None else min(total, self.limit)

    def pieces(self, start: int, end: int) -> Iterator[tuple[Path | None, int, int]]:
        """The (file, start, end) ranges covering [start, end); file None means separator bytes."""
        if self.limit is not None:
            end = min(end, self.limit)
        offset = 0
        for i, (path, size) in enumerate(zip(self.paths, self.sizes)):
            if i:
                sep_end = offset + len(self.separator)
                lo, hi = max(start, offset), min(end, sep_end)
                if lo < hi:
                    yield None, lo - offset, hi - offset
                offset = sep_end
            lo, hi = max(start, offset), min(end, offset + size)
            if lo < hi:
                yield path, lo - offset, hi - offset
            offset += size
            if offset >= end:
                return

    def read(self, start: int, end: int) -> bytes:
        """The bytes [start, end) (meant for small windows)."""
        out = bytearray()
        for path, lo, hi in self.pieces(start, end):
            if path is None:
                out += self.separator[lo:hi]
            else:
                with open(path, "rb") as f:
                    f.seek(lo)
                    out += f.read(hi - lo)
        return bytes(out)

    def single_file(self, start: int, end: int) -> Path | None:
        """The file that is exactly [start, end), if one is (then nothing needs copying)."""
        pieces = list(self.pieces(start, end))
        if len(pieces) == 1 and pieces[0][0] is not None:
            path, lo, hi = pieces[0]
            if lo == 0 and hi == path.stat().st_size:
                return path
        return None


def char_boundary(data: bytes, pos: int) -> int:
    """The largest position <= pos in ``data`` that does not split a UTF-8 character."""
    steps = 0
    while 0 < pos < len(data) and 0x80 <= data[pos] < 0xC0 and steps < 3:
        pos -= 1
        steps += 1
    return pos


def split_point(text: JoinedText, target: int, *, slack: int, backward_only: bool = False) -> tuple[int, int]:
    """Where to cut ``text`` near byte ``target``: (end of the left part, start of the right part).

    Prefers the separator occurrence nearest ``target`` within ``slack`` bytes
    (at most :data:`MAX_BOUNDARY_DISTANCE`), dropping the separator itself;
    ``backward_only`` only takes one that starts at or before ``target`` (for
    "at most N bytes"). Without one, cuts at the UTF-8 character boundary at
    or before ``target``. Both parts are non-empty when a boundary is used.
    """
    total = text.size
    target = max(0, min(target, total))
    slack = max(0, min(slack, MAX_BOUNDARY_DISTANCE))
    sep = text.separator
    lo = max(0, target - slack)
    hi = min(total, target + len(sep) + (0 if backward_only else slack))
    window = text.read(lo, hi)
    best = None
    if sep:
        before = window.rfind(sep, 0, target - lo + len(sep))
        if before >= 0:
            best = lo + before
        after = -1 if backward_only else window.find(sep, target - lo + 1)
        if after >= 0 and (best is None or lo + after - target < target - best):
            best = lo + after
    if best is not None and 0 < best and best + len(sep) < total:
        return best, best + len(sep)
    # No document boundary nearby: back up over UTF-8 continuation bytes to a character start.
    head_start = max(0, target - 3)
    head = text.read(head_start, min(total, target + 1))
    pos = head_start + char_boundary(head, target - head_start)
    return pos, pos


def iter_checked(text: JoinedText, start: int, end: int, *, progress: Progress | None = None,
                 stage: str = "reading text") -> Iterator[bytes]:
    """Yield the bytes [start, end) of ``text`` in chunks, raising DataError at the first non-UTF-8 byte."""
    done = 0
    total = end - start
    for path, lo, hi in text.pieces(start, end):
        if path is None:
            yield text.separator[lo:hi]
            done += hi - lo
            continue
        for chunk in _checked_file_chunks(path, lo, hi):
            yield chunk
            done += len(chunk)
            if progress is not None:
                progress(stage, done, total)


def _checked_file_chunks(path: Path, start: int, end: int) -> Iterator[bytes]:
    pending = b""
    pos = start  # file offset of pending[0]
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            buf = pending + chunk if pending else chunk
            cut = len(buf) - incomplete_tail(buf) if remaining > 0 else len(buf)
            try:
                if not buf.isascii():  # ASCII is valid UTF-8, and isascii() is far faster than decoding
                    buf[:cut].decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8_error(path, pos + e.start, buf[e.start:e.start + 1]) from None
            yield buf[:cut]
            pending = buf[cut:]
            pos += cut


def incomplete_tail(buf: bytes) -> int:
    """How many bytes at the end of ``buf`` start a UTF-8 character that the next chunk completes."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        byte = buf[n - back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: how long is its character?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < need else 0
    return 0


def not_utf8_error(path: Path, offset: int, byte: bytes) -> DataError:
    """The DataError for a file that is not UTF-8, naming the file, byte offset and line."""
    line = _line_of(path, offset)
    shown = f"0x{byte[0]:02x}" if byte else "a truncated character"
    return DataError(
        f"{path} is not UTF-8 text: byte {shown} at byte offset {offset:,} (line {line:,}) cannot be decoded. "
        "Convert the file to UTF-8 first (for example `iconv -f latin1 -t utf-8 in.txt > out.txt`)."
    )


def _line_of(path: Path, offset: int) -> int:
    line = 1
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            line += chunk.count(b"\n")
            remaining -= len(chunk)
    return line


def write_range(text: JoinedText, start: int, end: int, dst: Path, *, progress: Progress | None = None,
                stage: str = "writing text") -> int:
    """Copy bytes [start, end) of ``text`` to ``dst`` (checking UTF-8); return the byte count."""
    written = 0

    def copy(out) -> None:
        nonlocal written
        for chunk in iter_checked(text, start, end, progress=progress, stage=stage):
            out.write(chunk)
            written += len(chunk)

    atomic_write(dst, copy)
    return written


def check_range(text: JoinedText, start: int, end: int, *, progress: Progress | None = None,
                stage: str = "checking text") -> int:
    """Check that bytes [start, end) of ``text`` are UTF-8 without copying them; return the byte count."""
    return sum(len(chunk) for chunk in iter_checked(text, start, end, progress=progress, stage=stage))
