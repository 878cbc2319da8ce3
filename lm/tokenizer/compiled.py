"""The optional compiled fast path of encoding (``lm/tokenizer/_encode_c.c``).

``pip install -e .`` builds the C extension when a C compiler is present
(setup.py marks it optional); without one, lm installs anyway and encodes
with the pure-Python path of :mod:`lm.tokenizer.tokenizer`, which stays the
reference: the tests check that both give the same ids on every text.

The C code pre-tokenizes with GPT-2's pattern written out by hand and applies
the merges from a rank table, caching each distinct pre-token's ids. It takes
the character classes the pattern uses (``\\s``, ``\\p{L}``, ``\\p{N}``) from
the ``regex`` module at run time, so both paths agree whatever Unicode
version each was built with; pre-tokens longer than ``LONG_PIECE`` bytes are
merged by the pure-Python heap (a quadratic loop would crawl on them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import regex

try:
    from lm.tokenizer import _encode_c
except ImportError:  # not built (no C compiler at install time): the pure-Python path is used
    _encode_c = None

AVAILABLE = _encode_c is not None
"""Whether the extension was built and imports."""

_SPACE, _LETTER, _NUMBER = 1, 2, 3
_CLASSES = ((_SPACE, regex.compile(r"\s+")), (_LETTER, regex.compile(r"\p{L}+")), (_NUMBER, regex.compile(r"\p{N}+")))


@functools.lru_cache(maxsize=1)
def bmp_classes() -> bytes:
    """The class of each code point below U+10000: 0 other, 1 ``\\s``, 2 ``\\p{L}``, 3 ``\\p{N}`` (per ``regex``)."""
    text = "".join(map(chr, range(0x10000)))
    table = bytearray(0x10000)
    for cls, pattern in _CLASSES:
        for m in pattern.finditer(text):
            table[m.start():m.end()] = bytes([cls]) * (m.end() - m.start())
    return bytes(table)


def classify(code_point: int) -> int:
    """The class of one code point (the C code asks for those above the BMP, once each)."""
    char = chr(code_point)
    for cls, pattern in _CLASSES:
        if pattern.fullmatch(char):
            return cls
    return 0


def make_encoder(byte_ids: Sequence[int], merge_pairs: Sequence[tuple[int, int]], merge_result: Sequence[int],
                 long_bpe: Callable[[str], Sequence[int]], max_entries: int):
    """A C ``Encoder`` for these merges (see the module docstring), or None when the extension is not built."""
    if _encode_c is None:
        return None
    return _encode_c.Encoder(list(byte_ids), merge_pairs, merge_result, bmp_classes(), classify, long_bpe,
                             max_entries)
