"""GPT-2's reversible mapping between bytes and printable unicode characters.

GPT-2 stores byte-level tokens in vocab.json and merges.txt as text: each of
the 256 byte values is shown as one printable character (printable Latin-1
bytes stand for themselves, the rest, including space and control bytes, are
shifted to U+0100 and up, so a leading space shows as ``Ġ``). Files written in
this encoding are readable, diffable and loadable by other GPT-2 tooling.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte value -> printable character table used by GPT-2's vocab and merges files."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1))
        + list(range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1))
    )
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@functools.lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse of :func:`byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


def bytes_to_printable(token: bytes) -> str:
    """``b" the"`` -> ``"Ġthe"``: a token's bytes in GPT-2's file encoding."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@functools.lru_cache(maxsize=1)
def _decode_table() -> dict[int, int | None]:
    # printable character -> its byte (as a Latin-1 character); other Latin-1
    # characters are deleted, so a changed length reveals them.
    table: dict[int, int | None] = {c: None for c in range(256)}
    table.update({ord(c): b for b, c in byte_to_unicode().items()})
    return table


def printable_to_bytes(text: str) -> bytes | None:
    """``"Ġthe"`` -> ``b" the"``; None when ``text`` has a character outside the 256-character alphabet."""
    latin = text.translate(_decode_table())
    if len(latin) != len(text):
        return None
    try:
        return latin.encode("latin-1")
    except UnicodeEncodeError:
        return None
