"""BPE for many pre-tokens at once, with numpy (the cold-cache path of encoding).

Merging one pre-token in Python costs a few microseconds per merge; a text
with tens of thousands of distinct words spends most of its first encoding
there. Here all new pre-tokens advance together in rounds: in each round every
word merges all occurrences of its lowest-ranked pair, left to right without
overlap, as whole-array operations.

That equals merging one lowest-ranked occurrence at a time (the per-piece
algorithm) when merging never creates a pair ranked below the merge that made
it, which holds when each merge's parts were made by earlier merges (or are
single bytes) and no token is made twice. :func:`rounds_are_exact` checks this
for a merges list; GPT-2's and every list ``train_bpe`` makes pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

_INF = np.int64(1 << 62)
_DENSE_SIDE = 512  # a 512 x 512 table of ranks: 2 MB


def rounds_are_exact(merges: Sequence[tuple[int, int]], merge_result: Sequence[int], byte_ids: Sequence[int]) -> bool:
    """Whether round-wise merging equals one-at-a-time merging for these merges (see module docstring)."""
    made_at = {t: -1 for t in byte_ids}
    for rank, ((a, b), t) in enumerate(zip(merges, merge_result)):
        if made_at.get(a, rank) >= rank or made_at.get(b, rank) >= rank or t in made_at:
            return False
        made_at[t] = rank
    return True


class BatchBpe:
    """Applies a merges list that passes :func:`rounds_are_exact` to many byte strings at once."""

    def __init__(self, merges: Sequence[tuple[int, int]], merge_result: Sequence[int],
                 byte_ids: Sequence[int], num_ids: int):
        self._width = np.int64(num_ids)
        pairs = np.fromiter(chain.from_iterable(merges), dtype=np.int64, count=2 * len(merges)).reshape(-1, 2)
        keys = pairs[:, 0] * num_ids + pairs[:, 1]  # distinct: no token is made twice
        order = np.argsort(keys)
        self._keys = keys[order]
        self._ranks = order.astype(np.int64)  # the rank of merge i is i
        self._result = np.asarray(merge_result, dtype=np.int64)
        self._byte_ids = np.asarray(byte_ids, dtype=np.int64)
        # Pairs of small ids (every byte, and the most frequent tokens, which BPE makes
        # first) are looked up in a dense table; binary search is for the rest.
        side = self._dense_side = min(num_ids, _DENSE_SIDE)
        self._dense = np.full((side, side), _INF, dtype=np.int64)
        small = (pairs[:, 0] < side) & (pairs[:, 1] < side)
        self._dense[pairs[small, 0], pairs[small, 1]] = np.flatnonzero(small)

    def _lookup(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Rank of each pair (left[i], right[i]), INF for pairs that are not merges."""
        rank = np.full(len(left), _INF)
        side = self._dense_side
        small = (left < side) & (right < side)
        rank[small] = self._dense[left[small], right[small]]
        large = np.flatnonzero(~small)
        if len(large) and len(self._keys):
            key = left[large] * self._width + right[large]
            at = np.minimum(np.searchsorted(self._keys, key), len(self._keys) - 1)
            rank[large] = np.where(self._keys[at] == key, self._ranks[at], _INF)
        return rank

    def _pair_ranks(self, ids: np.ndarray, word: np.ndarray) -> np.ndarray:
        """Rank of each adjacent pair (ids[i], ids[i+1]), INF across words or for non-merges; length n."""
        rank = np.full(len(ids), _INF)
        rank[:-1] = self._lookup(ids[:-1], ids[1:])
        rank[:-1][word[1:] != word[:-1]] = _INF
        return rank

    def _ranks_at(self, ids: np.ndarray, word: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``_pair_ranks(ids, word)[pos]``, computed for those positions only."""
        out = np.full(len(pos), _INF)
        inside = np.flatnonzero(pos + 1 < len(ids))
        p = pos[inside]
        same = word[p] == word[p + 1]
        p = p[same]
        out[inside[same]] = self._lookup(ids[p], ids[p + 1])
        return out

    def encode(self, words: Sequence[bytes], max_rounds: int | None = None) -> list[tuple[int, ...]]:
        """The token ids of each byte string (each must be non-empty), as tuples.

        With ``max_rounds``, words still merging after that many rounds are
        returned as they stand: a state the one-at-a-time algorithm also passes
        through, from which it can finish them.
        """
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        ids = self._byte_ids[np.frombuffer(b"".join(words), dtype=np.uint8)]
        word = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
        rank = self._pair_ranks(ids, word)
        done_words, done_ids = [], []
        rounds = 0
        while len(ids):
            if max_rounds is not None and rounds == max_rounds:
                done_words.append(word)
                done_ids.append(ids)
                break
            rounds += 1
            starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
            seg_len = np.diff(np.r_[starts, len(ids)])
            lowest = np.repeat(np.minimum.reduceat(rank, starts), seg_len)
            finished = lowest == _INF
            chosen = np.flatnonzero((rank == lowest) & ~finished)
            if len(chosen) > 1 and (chosen[1:] == chosen[:-1] + 1).any():
                chosen = self._without_overlaps(chosen, len(ids))
            done_words.append(word[finished])
            done_ids.append(ids[finished])
            ids[chosen] = self._result[rank[chosen]]
            keep = ~finished
            keep[chosen + 1] = False
            new_pos = np.cumsum(keep) - 1
            ids, word, rank = ids[keep], word[keep], rank[keep]
            # only the pairs that end or start at a merged token changed
            merged = new_pos[chosen]
            touched = np.concatenate([merged[merged > 0] - 1, merged])
            rank[touched] = self._ranks_at(ids, word, touched)
        if not done_words:
            return []
        # A word's ids finish in one round, in order: one run in the concatenation.
        all_words = np.concatenate(done_words)
        runs = np.flatnonzero(np.r_[True, all_words[1:] != all_words[:-1]])
        start = np.empty(len(words), dtype=np.int64)
        start[all_words[runs]] = runs
        end = start + np.bincount(all_words, minlength=len(words))
        flat = np.concatenate(done_ids).tolist()
        return list(map(tuple, map(flat.__getitem__, map(slice, start.tolist(), end.tolist()))))

    @staticmethod
    def _without_overlaps(chosen: np.ndarray, n: int) -> np.ndarray:
        """Occurrences of a pair (x, x) in a run "x x x" overlap: keep the 1st, 3rd, ... as left-to-right merging does.

        Consecutive positions in ``chosen`` are always in the same word (a pair's
        rank is INF across words) and hold the same pair (each word's lowest).
        """
        cand = np.zeros(n, dtype=bool)
        cand[chosen] = True
        pos = np.arange(n)
        run_start = np.maximum.accumulate(np.where(cand & ~np.r_[False, cand[:-1]], pos, 0))
        return np.flatnonzero(cand & ((pos - run_start) % 2 == 0))
