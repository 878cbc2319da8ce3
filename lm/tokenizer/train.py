"""Byte-level BPE training (CS336 ``train_bpe``) with incremental pair statistics.

The corpus is reduced to a table of unique pre-tokens with their counts
(:mod:`lm.tokenizer.counting`). Each unique pre-token is a "word": a list of
token ids, with a frequency. The trainer keeps

* ``pair_counts``: frequency-weighted count of every adjacent pair;
* ``pair_words``: pair -> ids of the words that contain it (may hold words that
  no longer do; they are skipped when visited);
* a lazy max-heap of ``(count, pair)``: an entry is pushed when a pair is
  created; entries left stale by a count that went down are re-pushed with the
  current count when they reach the top, so the top valid entry is always the
  true maximum.

A merge visits only the words that contain the merged pair and updates the
counts of the pairs around each occurrence, so a merge costs time in proportion
to its number of occurrences, not to the corpus.

Ties in count go to the lexicographically greater pair of byte strings (CS336).
The heap is a min-heap, so each entry carries a string key that orders pairs in
reverse: each byte ``c`` becomes ``chr(255 - c)`` and a token ends with
``chr(256)``, which sorts after every byte, so a token sorts before its own
prefixes exactly as a greater byte string should.

Vocabulary ids follow CS336's reference fixtures: special tokens first, then
the 256 single bytes, then one id per merge in creation order.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from lm.errors import TokenizerError
from lm.tokenizer.counting import count_pretokens
from lm.tokenizer.pretokenize import normalize_special_tokens

_REVERSE_BYTES = {c: 255 - c for c in range(256)}
_TOKEN_END = chr(256)

Progress = Callable[[int, int], None]
"""``progress(bytes_read, merges_done)``: called while counting pre-tokens, then while merging."""


@dataclass
class BpeTrainingResult:
    """A trained tokenizer with figures about the corpus it was trained on."""

    vocab: dict[int, bytes]
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    num_bytes: int
    """corpus size in bytes"""
    num_pretokens: int
    """pre-tokens in the corpus (special tokens not included)"""
    num_unique_pretokens: int
    num_tokens: int
    """tokens the corpus encodes to with the trained tokenizer, special tokens included"""
    seconds_pretokenize: float
    seconds_merge: float

    @property
    def bytes_per_token(self) -> float:
        """Compression of the training corpus."""
        return self.num_bytes / max(1, self.num_tokens)


def _order_key(token: bytes) -> str:
    """A string that sorts in the reverse order of ``token`` among byte strings (see module docstring)."""
    return token.decode("latin-1").translate(_REVERSE_BYTES) + _TOKEN_END


def check_vocab_size(vocab_size: int, special_tokens: list[str]) -> int:
    """Number of merges for a vocab size; TokenizerError when it cannot hold the bytes and specials."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
    floor = 256 + len(special_tokens)
    if vocab_size < floor:
        raise TokenizerError(
            f"vocab size {vocab_size} is too small: a byte-level BPE needs the 256 single bytes plus "
            f"{len(special_tokens)} special token(s), so at least {floor}"
        )
    return vocab_size - floor


def merge_words(words: list[list[int]], freqs: list[int], num_merges: int,
                on_merge: Callable[[int], None] | None = None) -> list[tuple[int, int]]:
    """Run up to ``num_merges`` BPE merges over ``words`` (lists of ids 0..255) in place.

    Returns the merged id pairs in creation order; merge ``i`` creates id
    ``256 + i``. Stops early when no adjacent pair is left. ``on_merge(done)``
    is called every 64 merges and at the end.
    """
    tok_bytes = [bytes([i]) for i in range(256)]
    keys = [_order_key(t) for t in tok_bytes]
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wid, w in enumerate(words):
        if len(w) > 1:
            f = freqs[wid]
            for pair in zip(w, w[1:]):
                pair_counts[pair] += f
                pair_words[pair].add(wid)
    heap = [(-c, keys[a] + keys[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    heappop, heappush = heapq.heappop, heapq.heappush

    while len(merges) < num_merges:
        # Pop until the top entry holds its pair's current count.
        while heap:
            negc, key, a, b = heap[0]
            current = pair_counts.get((a, b), 0)
            if current == -negc:
                break
            heappop(heap)
            if 0 < current < -negc:  # the count went down since the push: re-file it
                heappush(heap, (-current, key, a, b))
            elif current == 0:  # gone from every word: forget it
                pair_counts.pop((a, b), None)
                pair_words.pop((a, b), None)
        else:
            break
        heappop(heap)
        pair = (a, b)
        new = len(tok_bytes)
        tok_bytes.append(tok_bytes[a] + tok_bytes[b])
        keys.append(_order_key(tok_bytes[new]))
        merges.append(pair)

        # Counts of pairs that lose an occurrence are updated in place (their heap
        # entries go stale and are re-filed lazily); pairs with the new token are
        # all created by this merge and get one heap entry each, below.
        created: list[tuple[int, int]] = []
        for wid in pair_words.pop(pair):
            w = words[wid]
            if a not in w:
                continue
            n = len(w)
            i = w.index(a)
            f = freqs[wid]
            out = w[:i]
            changed = False
            while i < n:
                if w[i] == a and i + 1 < n and w[i + 1] == b:
                    changed = True
                    if out:
                        prev = out[-1]
                        pair_counts[(prev, a)] -= f
                        p = (prev, new)
                        pair_counts[p] += f
                        holders = pair_words.get(p)
                        if holders is None:
                            pair_words[p] = {wid}
                            created.append(p)
                        else:
                            holders.add(wid)
                    if i + 2 < n:
                        nxt = w[i + 2]
                        pair_counts[(b, nxt)] -= f
                        p = (new, nxt)
                        pair_counts[p] += f
                        holders = pair_words.get(p)
                        if holders is None:
                            pair_words[p] = {wid}
                            created.append(p)
                        else:
                            holders.add(wid)
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if changed:
                words[wid] = out
        # (a, b) itself may have been decremented above when a == b; it is gone either way.
        del pair_counts[pair]
        for p in created:
            c = pair_counts[p]
            if c > 0:
                heappush(heap, (-c, keys[p[0]] + keys[p[1]], p[0], p[1]))
            else:  # e.g. (new, a) in "a b a b": added by one occurrence, taken back by the next
                del pair_counts[p]
                del pair_words[p]
        if on_merge is not None and len(merges) % 64 == 0:
            on_merge(len(merges))
    if on_merge is not None:
        on_merge(len(merges))
    return merges


def build_vocab(merges: list[tuple[int, int]], special_tokens: list[str]) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """CS336 layout from internal merge ids: specials, then the 256 bytes, then merged tokens."""
    tok_bytes = [bytes([i]) for i in range(256)]
    merged: list[tuple[bytes, bytes]] = []
    for a, b in merges:
        merged.append((tok_bytes[a], tok_bytes[b]))
        tok_bytes.append(tok_bytes[a] + tok_bytes[b])
    vocab = {i: tok.encode("utf-8") for i, tok in enumerate(special_tokens)}
    base = len(vocab)
    vocab.update({base + i: t for i, t in enumerate(tok_bytes)})
    return vocab, merged


def train_bpe_from_counts(word_counts: Mapping[bytes, int] | Iterable[tuple[bytes, int]], vocab_size: int,
                          special_tokens: Iterable[str] | None = None, *,
                          on_merge: Callable[[int], None] | None = None):
    """Train on a table of pre-token bytes -> count; returns ``(vocab, merges, tokens_after)``.

    ``tokens_after`` is how many tokens the counted pre-tokens encode to with
    the result (each count times the length of its final segmentation).
    """
    specials = normalize_special_tokens(special_tokens)
    num_merges = check_vocab_size(vocab_size, specials)
    items = word_counts.items() if isinstance(word_counts, Mapping) else word_counts
    words: list[list[int]] = []
    freqs: list[int] = []
    for token, count in items:
        if token and count > 0:
            words.append(list(token))
            freqs.append(count)
    merges = merge_words(words, freqs, num_merges, on_merge)
    tokens_after = sum(len(w) * f for w, f in zip(words, freqs))
    vocab, merged = build_vocab(merges, specials)
    return vocab, merged, tokens_after


def train_bpe_detailed(input_path: str | os.PathLike, vocab_size: int, special_tokens: Iterable[str] | None = None,
                       *, progress: Progress | None = None, workers: int | None = None) -> BpeTrainingResult:
    """:func:`train_bpe` that also reports corpus figures and timings (used by ``lab tokenizer train``)."""
    specials = normalize_special_tokens(special_tokens)
    check_vocab_size(vocab_size, specials)
    t0 = time.perf_counter()
    counted = count_pretokens(
        input_path, specials, workers=workers,
        progress=None if progress is None else (lambda n: progress(n, 0)),
    )
    t1 = time.perf_counter()
    word_counts = ((tok.encode("utf-8"), c) for tok, c in counted.counts.items())
    on_merge = None if progress is None else (lambda m: progress(counted.num_bytes, m))
    vocab, merges, tokens_after = train_bpe_from_counts(word_counts, vocab_size, specials, on_merge=on_merge)
    t2 = time.perf_counter()
    return BpeTrainingResult(
        vocab=vocab,
        merges=merges,
        special_tokens=specials,
        num_bytes=counted.num_bytes,
        num_pretokens=sum(counted.counts.values()),
        num_unique_pretokens=len(counted.counts),
        num_tokens=tokens_after + counted.num_specials,
        seconds_pretokenize=t1 - t0,
        seconds_merge=t2 - t1,
    )


def train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: Iterable[str] | None = None,
              *, progress: Progress | None = None, workers: int | None = None
              ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a UTF-8 text file (CS336 ``train_bpe``).

    Returns ``(vocab, merges)``: ``vocab`` maps ids to token bytes (special
    tokens first, then the 256 single bytes, then one token per merge);
    ``merges`` lists the merged pairs in creation order. Each step merges the
    most frequent adjacent pair within pre-tokens, ties going to the
    lexicographically greater pair. Training stops early if the corpus runs out
    of pairs. ``progress(bytes_read, merges_done)`` reports both phases;
    ``workers`` processes pre-tokenize the file (default: all cores).
    """
    result = train_bpe_detailed(input_path, vocab_size, special_tokens, progress=progress, workers=workers)
    return result.vocab, result.merges
