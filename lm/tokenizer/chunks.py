"""Cutting a corpus file into chunks that can be pre-tokenized independently, and the worker pool.

A cut is safe when the text on each side pre-tokenizes exactly as it does in
the whole file. Two kinds of position are safe (unless a special token
occurrence straddles them):

* the start of a special token: text is split on special tokens anyway;
* a whitespace character followed by a non-whitespace one (``x| y``,
  ``x|\\ny``): see :data:`lm.tokenizer.pretokenize.SAFE_CUT` for why.

Chunks are planned by byte offset, so workers read their own slice of the file
and the parent never holds the corpus in memory.
"""

from __future__ import annotations

import codecs
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lm.errors import DataError
from lm.tokenizer.pretokenize import SAFE_CUT, cut_keeps_specials, straddled

_SEARCH_WINDOWS = (1 << 16, 1 << 20, 1 << 23)  # bytes read around a target before giving the cut up
# A worker holds its chunk's text and pre-token list (about 15x the chunk's bytes):
# 4 MiB keeps that near 60 MB per worker whatever the file size.
MAX_CHUNK_BYTES = 1 << 22


def check_corpus(path: str | os.PathLike) -> int:
    """Size in bytes of a corpus file; DataError when it is missing, a directory or unreadable."""
    p = Path(path)
    try:
        if p.is_dir():
            raise DataError(f"corpus {p} is a directory; give the path of a UTF-8 text file")
        size = p.stat().st_size
        with open(p, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise DataError(f"corpus {p} does not exist; give the path of a UTF-8 text file") from None
    except PermissionError:
        raise DataError(f"corpus {p} cannot be read (permission denied)") from None
    except OSError as e:
        raise DataError(f"corpus {p} cannot be read ({e.strerror or e})") from None
    return size


def read_text_chunk(path: str | os.PathLike, start: int, end: int) -> str:
    """Bytes ``[start, end)`` of a corpus as text; DataError naming the file and offset when not UTF-8."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except OSError as e:
        raise DataError(f"corpus {path} cannot be read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"corpus {path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset "
            f"{start + e.start}; convert it to UTF-8 (for example with iconv) first"
        ) from None


def _first_safe_cut(text: str, begin: int, special_tokens: Sequence[str]) -> int | None:
    """The first safe cut at or after ``begin`` in a decoded window, leaving room to check specials."""
    longest = max((len(t) for t in special_tokens), default=1)
    limit = len(text) - longest  # a special token past the window end could straddle later positions
    best = None
    for m in SAFE_CUT.finditer(text, begin):
        if m.start() > limit:
            break
        if cut_keeps_specials(text, m.start(), special_tokens):
            best = m.start()
            break
    for tok in special_tokens:
        i = text.find(tok, begin)
        while i != -1 and i <= limit and (best is None or i < best):
            if not straddled(text, i, special_tokens):
                best = i
                break
            i = text.find(tok, i + 1)
    return best


def find_safe_cut(f, target: int, file_size: int, special_tokens: Sequence[str]) -> int | None:
    """Byte offset of the first safe cut at or after ``target`` in an open binary file, or None."""
    longest = max((len(t.encode("utf-8")) for t in special_tokens), default=1)
    back = min(target, 4 * longest)  # look behind the target too, for specials straddling it
    for window in _SEARCH_WINDOWS:
        f.seek(target - back)
        data = f.read(back + window)
        # Undecodable bytes become lone surrogates, one per byte, so offsets stay exact;
        # the worker that reads that chunk reports the bad byte.
        skip = 0
        while skip < min(4, len(data)) and 0x80 <= data[skip] < 0xC0:
            skip += 1
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        text = decoder.decode(data[skip:], final=target - back + len(data) >= file_size)
        begin = len(data[skip:back].decode("utf-8", "surrogateescape")) if back > skip else 0
        cut = _first_safe_cut(text, begin, special_tokens)
        if cut is not None:
            return target - back + skip + len(text[:cut].encode("utf-8", "surrogateescape"))
        if target - back + len(data) >= file_size:
            return None
    return None


def plan_chunks(path: str | os.PathLike, file_size: int, special_tokens: Sequence[str],
                chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` covering the file, about ``chunk_bytes`` long, cut at safe positions."""
    if file_size <= chunk_bytes:
        return [(0, file_size)]
    cuts = [0]
    with open(path, "rb") as f:
        target = chunk_bytes
        while target < file_size:
            cut = find_safe_cut(f, target, file_size, special_tokens)
            if cut is None or cut >= file_size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
            target = max(cut, target) + chunk_bytes
    cuts.append(file_size)
    return list(zip(cuts, cuts[1:]))


def chunk_size_for(file_size: int, workers: int) -> int:
    """Chunk length: a few chunks per worker for balance, small enough to bound each worker's memory."""
    return max(1 << 18, min(MAX_CHUNK_BYTES, file_size // (4 * workers) + 1))


def resolve_workers(workers: int | None) -> int:
    """``None`` -> every core this process may use."""
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # macOS
            return max(1, os.cpu_count() or 1)
    if workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    return workers


_WORKER_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _reset_worker_signals(initializer, initargs) -> None:
    """In a fresh worker: default SIGTERM (so ``Pool.terminate`` ends it), ignored SIGINT (a Ctrl-C on
    the terminal goes to the parent, which stops the pool, instead of a traceback from every worker)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(context, processes: int, initializer=None, initargs=()):
    """A ``multiprocessing.Pool`` whose workers do not run the parent's signal handlers.

    A forked worker inherits handlers such as ``lab run``'s SIGTERM-means-checkpoint,
    and a worker that only sets a flag on SIGTERM never ends: ``Pool.terminate()``
    then waits for ever. SIGINT and SIGTERM stay blocked while the workers are
    started (a signal arriving then is delivered to the parent once they are) and
    each worker resets both before running ``initializer``.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
    try:
        return context.Pool(processes, initializer=_reset_worker_signals, initargs=(initializer, initargs))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def pool_context():
    """fork on Linux when no other thread could hold a lock the child inherits; spawn otherwise."""
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class BoundedMap:
    """``pool.imap`` (``ordered``) or ``imap_unordered`` with at most ``window`` tasks handed to the pool.

    Why not ``imap`` + ``Pool.terminate()`` on an error: with results still on their way, CPython's
    result handler stops reading, a worker blocks writing a large result while holding the queue's
    lock, and ``terminate()`` waits for that lock for ever (seen: a disk-full error while encoding
    hung in 3 of 8 tries). Here nothing beyond the window is queued, so :meth:`close` first lets the
    tasks in flight finish (at most ``window`` chunks), then closes the pool cleanly.
    """

    def __init__(self, pool, fn, tasks, window: int, ordered: bool = True):
        self.pool, self.fn, self.ordered = pool, fn, ordered
        self._tasks = iter(tasks)
        self._pending: list = []
        for _ in range(max(1, window)):
            if not self._submit():
                break

    def _submit(self) -> bool:
        task = next(self._tasks, _DONE)
        if task is _DONE:
            return False
        self._pending.append(self.pool.apply_async(self.fn, (task,)))
        return True

    def __iter__(self):
        while self._pending:
            if self.ordered:
                result = self._pending.pop(0)
            else:  # the first that is ready
                while not any(r.ready() for r in self._pending):
                    self._pending[0].wait(0.05)
                result = self._pending.pop(next(i for i, r in enumerate(self._pending) if r.ready()))
            value = result.get()  # re-raises a worker's exception here
            self._submit()
            yield value

    def close(self) -> None:
        """Let the tasks in flight finish (their results are dropped), then close and join the pool."""
        self._tasks = iter(())
        for r in self._pending:
            r.wait()
        self._pending = []
        self.pool.close()
        self.pool.join()


_DONE = object()
