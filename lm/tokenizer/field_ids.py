"""Assembling a text's ids from its distinct fields with numpy (the first-pass path of encoding).

A text cut at safe cuts (:func:`lm.tokenizer.pretokenize.cut_fields`) is a
sequence of fields, far fewer of them distinct than in all (TinyShakespeare:
28K distinct of 203K). The distinct fields are joined and pre-tokenized once;
here their pre-tokens' ids become one flat array with each field's span, and
the text's ids are gathered from it in a few whole-array operations, without
building a Python list per field. For an ASCII text the distinct fields and
each field's index among them are found without cutting the text into strings
at all (:func:`ascii_distinct_fields`).
"""

from __future__ import annotations

from itertools import chain, count

import numpy as np


def field_spans(fields: list[str], pieces: list[str], piece_ids: list[tuple[int, ...]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat, starts, lengths)``: ``flat[starts[i]:starts[i] + lengths[i]]`` are the ids of ``fields[i]``.

    ``pieces`` are the pre-tokens of ``"".join(fields)``, in which every field
    starts a pre-token, and ``piece_ids`` their ids.
    """
    flat = np.fromiter(chain.from_iterable(piece_ids), dtype=np.int64)
    piece_offsets = _offsets(np.fromiter(map(len, piece_ids), dtype=np.int64, count=len(piece_ids)))
    piece_chars = _offsets(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
    field_chars = _offsets(np.fromiter(map(len, fields), dtype=np.int64, count=len(fields)))
    # each field's first character starts a pre-token: its index among the pre-tokens
    first_piece = np.searchsorted(piece_chars, field_chars)
    bounds = piece_offsets[first_piece]
    return flat, bounds[:-1], np.diff(bounds)


def gather_spans(which: np.ndarray, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of the spans ``which[0], which[1], ...`` of ``flat`` (see :func:`field_spans`)."""
    sizes = lengths[which]
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    # position k of the output reads flat[start of its span + (k - where its span begins in the output)]
    shift = np.repeat(starts[which] - (ends - sizes), sizes)
    return flat[np.arange(total, dtype=np.int64) + shift]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """``[0, l0, l0 + l1, ...]``: where each item begins, and the total at the end."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def distinct_fields(fields: list[str]) -> tuple[list[str], np.ndarray]:
    """``(distinct, which)``: the distinct fields in first-seen order, and each field's index among them."""
    first_at: dict[str, int] = {}  # one C-level pass: each field -> the position where it first occurs
    where = np.fromiter(map(first_at.setdefault, fields, count()), dtype=np.int64, count=len(fields))
    distinct = list(first_at)
    slot = np.empty(len(fields), dtype=np.int64)
    slot[np.fromiter(first_at.values(), dtype=np.int64, count=len(distinct))] = np.arange(len(distinct))
    return distinct, slot[where]


# Safe cuts of an ASCII text without a Python string per field: the ASCII characters in
# lm.tokenizer.pretokenize.WHITESPACE, and a polynomial hash (mod 2**64) of each field.
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 32]] = True
_HASH_BASE = 0x100000001B3
_HASH_BASE_INV = pow(_HASH_BASE, -1, 1 << 64)  # the base is odd, so invertible mod 2**64
_HASH_LENGTH = np.uint64(0x9E3779B97F4A7C15)


def ascii_distinct_fields(text: str, min_fields: int) -> tuple[list[str], np.ndarray] | None:
    """:func:`distinct_fields` of ``cut_fields(text)`` for an ASCII ``text``, in whole-array operations.

    Fields are grouped by a hash, then every field is checked byte for byte
    against the first one of its group, so the result is exact; on a hash
    collision (or with fewer than ``min_fields`` fields) returns None, and the
    caller cuts the text the usual way. Skips making 200K field strings and
    hashing them in a dict, most of the cost of cutting a first text.
    """
    data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    n = len(data)
    if n < 2:
        return None
    space = _ASCII_SPACE[data]
    cut = space[:-1] & ~space[1:]  # whitespace then non-whitespace: a cut before position i
    cut[0] = True  # the first field starts the text
    starts = np.flatnonzero(cut)
    if len(starts) < min_fields:
        return None
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = n
    # key of text[s:e] = sum((data[j] + 1) * B**(j - s)), from prefix sums, plus its length
    powers = np.full(n, np.uint64(_HASH_BASE))
    powers[0] = 1
    np.cumprod(powers, out=powers)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((data + np.uint64(1)) * powers, out=prefix[1:])
    del powers
    inverse_powers = np.full(n, np.uint64(_HASH_BASE_INV))
    inverse_powers[0] = 1
    np.cumprod(inverse_powers, out=inverse_powers)
    sizes = ends - starts
    key = (prefix[ends] - prefix[starts]) * inverse_powers[starts] + sizes.astype(np.uint64) * _HASH_LENGTH
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)  # groups in first-seen order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    which = rank[group.ravel()]
    firsts = first[order]
    # exactness: each field equals the first field of its group, byte for byte
    rep = firsts[which]
    if not np.array_equal(sizes[rep], sizes):
        return None
    source = np.repeat(starts[rep] - starts, sizes)
    source += np.arange(n, dtype=source.dtype)
    if not np.array_equal(data.take(source), data):
        return None
    distinct = list(map(text.__getitem__, map(slice, starts[firsts].tolist(), ends[firsts].tolist())))
    return distinct, which
