"""Assembling a text's ids from its distinct fields with numpy (the first-pass path of encoding).

A text cut at safe cuts (:func:`lm.tokenizer.pretokenize.cut_fields`) is a
sequence of fields, far fewer of them distinct than in all (TinyShakespeare:
28K distinct of 203K). The distinct fields are joined and pre-tokenized once;
here their pre-tokens' ids become one flat array with each field's span, and
the text's ids are gathered from it in a few whole-array operations, without
building a Python list per field.
"""

from __future__ import annotations

from itertools import chain

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
