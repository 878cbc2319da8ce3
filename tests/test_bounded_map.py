"""lm.tokenizer.chunks.BoundedMap: pool.imap with a bounded window, and an early stop that cannot hang."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from lm.tokenizer.chunks import BoundedMap, pool_context, worker_pool


def _square(x: int) -> int:
    return x * x


def _big(x: int) -> bytes:
    return bytes([x % 256]) * (4 << 20)  # 4 MiB: more than a pipe holds, as a token chunk is


def test_ordered_and_unordered_give_what_map_gives():
    for ordered in (True, False):
        m = BoundedMap(worker_pool(pool_context(), 2), _square, range(20), window=3, ordered=ordered)
        try:
            got = list(m)
        finally:
            m.close()
        assert (got if ordered else sorted(got)) == [x * x for x in range(20)]


def test_stopping_early_with_large_results_in_flight_closes_promptly():
    # imap + Pool.terminate() hung here in 3 of 8 tries (a worker blocked writing a large result
    # while holding the result queue's lock); the bounded map only waits for its window.
    m = BoundedMap(worker_pool(pool_context(), 2), _big, range(64), window=4)
    t = time.perf_counter()
    for chunk in m:
        assert len(chunk) == 4 << 20
        break  # the consumer fails after the first result, as a full disk makes it
    m.close()
    assert time.perf_counter() - t < 30
    assert m._pending == []


@settings(max_examples=12, deadline=None)
@given(n=st.integers(0, 12), window=st.integers(1, 5), ordered=st.booleans())
def test_any_window_gives_every_result_once(n, window, ordered):
    m = BoundedMap(_pool(), _square, range(n), window=window, ordered=ordered)
    try:
        got = list(m)
    finally:
        m.close()
    assert (got if ordered else sorted(got)) == [x * x for x in range(n)]


def _pool():
    return worker_pool(pool_context(), 2)  # close() ends it
