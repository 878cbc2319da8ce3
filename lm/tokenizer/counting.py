"""Counting pre-tokens of a corpus file in parallel, streaming it chunk by chunk.

Each worker reads its own byte range (cut at a safe position, see
:mod:`lm.tokenizer.chunks`), splits it on special tokens, runs GPT-2's regex
and counts the pre-tokens; the parent adds the per-chunk tables up. Memory is
bounded by the table of unique pre-tokens plus one chunk per worker, not by the
file size.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lm.tokenizer.chunks import (
    MAX_CHUNK_BYTES,
    BoundedMap,
    check_corpus,
    chunk_size_for,
    plan_chunks,
    pool_context,
    read_text_chunk,
    resolve_workers,
    worker_pool,
)
from lm.tokenizer.pretokenize import PRETOKEN_RE, special_splitter

# Below this size, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 1 << 22


@dataclass
class PretokenCounts:
    """Pre-token counts of a corpus."""

    counts: Counter
    """pre-token text -> number of occurrences"""
    num_specials: int
    """occurrences of special tokens"""
    num_bytes: int
    """size of the corpus in bytes"""


def count_text(text: str, special_tokens: Sequence[str], counts: Counter | None = None) -> tuple[Counter, int]:
    """Count the pre-tokens of ``text`` (split on special tokens first) into ``counts``; also return #specials."""
    counts = Counter() if counts is None else counts
    splitter = special_splitter(special_tokens)
    if splitter is None:
        counts.update(PRETOKEN_RE.findall(text))
        return counts, 0
    segments = splitter.split(text)
    findall = PRETOKEN_RE.findall
    for segment in segments[::2]:
        if segment:
            counts.update(findall(segment))  # Counter.update over a list counts in C
    return counts, len(segments) // 2


def _count_chunk(task: tuple[str, int, int, tuple[str, ...]]) -> tuple[Counter, int, int]:
    path, start, end, special_tokens = task
    counts, num_specials = count_text(read_text_chunk(path, start, end), special_tokens)
    return counts, num_specials, end - start


def count_pretokens(input_path: str | os.PathLike, special_tokens: Sequence[str], *,
                    workers: int | None = None,
                    progress: Callable[[int], None] | None = None) -> PretokenCounts:
    """Pre-token counts of a UTF-8 corpus file, using up to ``workers`` processes (default: all cores).

    ``progress(bytes_read)`` is called as chunks finish. DataError for a
    missing, unreadable or non-UTF-8 file.
    """
    path = os.fspath(input_path)
    size = check_corpus(path)
    workers = resolve_workers(workers)
    specials = tuple(special_tokens)
    if size < PARALLEL_MIN_BYTES:
        workers = 1
    chunk_bytes = chunk_size_for(size, workers) if workers > 1 else MAX_CHUNK_BYTES
    chunks = plan_chunks(path, size, specials, chunk_bytes)
    tasks = [(path, start, end, specials) for start, end in chunks]
    total: Counter = Counter()
    num_specials = 0
    done = 0
    if len(tasks) == 1 or workers == 1:
        results = map(_count_chunk, tasks)
        pool = None
    else:
        procs = min(workers, len(tasks))
        pool = BoundedMap(worker_pool(pool_context(), procs), _count_chunk, tasks, 2 * procs, ordered=False)
        results = pool
    try:
        for counts, n_special, n_bytes in results:
            if total:
                total.update(counts)
            else:
                total = counts
            num_specials += n_special
            done += n_bytes
            if progress is not None:
                progress(done)
    finally:
        if pool is not None:
            pool.close()
    return PretokenCounts(total, num_specials, size)
