"""GPT-2 pre-tokenization and special-token splitting.

Text is first split on the special tokens (longest first, so with both
``<|endoftext|>`` and ``<|endoftext|><|endoftext|>`` special the doubled one
wins), then each stretch of ordinary text is cut into pre-tokens by GPT-2's
regex. BPE merges never cross a pre-token, so no merge crosses a document
boundary and no special token is ever merged into.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import regex

from lm.errors import TokenizerError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenizer: contractions, letter runs, digit runs, other runs (each may take one leading
space), and whitespace runs that leave their last space to the following word."""

# The same matches as GPT2_PATTERN (tests check this on random text): each run
# alternative ends the whole match, so nothing ever backtracks into a run and
# possessive runs only spare the engine from recording backtrack states.
PRETOKEN_RE = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s+(?!\S)|\s+""")

# A pre-token match ending at e reads at most the character at e (or two past
# its start, for contractions); one ending this far before the end of a buffer
# is the same match it would be in the whole text.
STREAM_HOLDBACK_CHARS = 4


def normalize_special_tokens(special_tokens: Iterable[str] | None) -> list[str]:
    """Special tokens de-duplicated in first-seen order; empty or non-string tokens are a TokenizerError."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str):
        special_tokens = [special_tokens]
    seen: dict[str, None] = {}
    for tok in special_tokens:
        if not isinstance(tok, str) or not tok:
            raise TokenizerError(
                f"special token {tok!r} is not valid: special tokens must be non-empty strings such as '<|endoftext|>'"
            )
        seen.setdefault(tok, None)
    return list(seen)


def special_splitter(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A pattern whose ``split`` alternates text and special tokens (odd indices are specials).

    Alternatives are tried longest first, so at any position the longest special
    token that matches wins.
    """
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return regex.compile("(" + "|".join(regex.escape(s) for s in ordered) + ")")


def straddled(text: str, pos: int, special_tokens: Sequence[str]) -> bool:
    """Whether an occurrence of a special token covers both ``text[pos-1]`` and ``text[pos]``."""
    for tok in special_tokens:
        lo = max(0, pos - len(tok) + 1)
        i = text.find(tok, lo, pos + len(tok) - 1)
        while i != -1 and i < pos:
            if i + len(tok) > pos:
                return True
            i = text.find(tok, i + 1, pos + len(tok) - 1)
    return False


def cut_keeps_specials(text: str, pos: int, special_tokens: Sequence[str]) -> bool:
    """Whether a safe cut at ``pos`` (see SAFE_CUT) stays safe with special tokens in the text.

    No special token may straddle it, and the non-whitespace character after
    it must not begin one: then the whitespace ends its text segment instead of
    preceding a word, and a whitespace run there is matched whole.
    """
    return not straddled(text, pos, special_tokens) and not any(
        text.startswith(tok, pos + 1) for tok in special_tokens)


# ----- Cutting text without running the regex
#
# Safe cut: a position i where text[i] is whitespace and text[i+1] is not.
# Then pretokens(text) == pretokens(text[:i]) + pretokens(text[i:]):
#
# * no pre-token crosses i. Only whitespace runs and ` ?X` hold whitespace. A
#   whitespace run reaching text[i] is followed by non-whitespace, so
#   `\s+(?!\S)` gives back its last character and ends at i (a run of one
#   character starting at i does not cross). ` ?X` holds a space only as its
#   first character, followed by non-whitespace, and text[i] is whitespace.
# * text[:i] alone gives the same pre-tokens: a whitespace run ending at i-1 is
#   matched whole at the end of the text as it is before text[i]; any other
#   run ends at i both ways, and no alternative that fails before i could match
#   by reading on (contractions need letters, not whitespace or the end).
# * text[i:] alone gives the same pre-tokens: the regex has no lookbehind and
#   the whole text has a pre-token boundary at i.
#
# So text cut at safe cuts pre-tokenizes piece by piece exactly as it does
# whole, and a piece ("field": a word with its leading whitespace and trailing
# punctuation, or a run of lines' ends) can be cached as one unit. The stdlib
# `re` finds the cuts about three times faster than `regex` runs GPT-2's pattern.

WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
"""The characters the ``regex`` module's ``\\s`` matches, as a character-class body (tests check it)."""

_CUT_SPLIT = re.compile(f"(?=[{WHITESPACE}][^{WHITESPACE}])")
SAFE_CUT = re.compile(f"[{WHITESPACE}][^{WHITESPACE}]")
"""Matches at every safe cut (the match starts at the cut)."""


def cut_fields(text: str) -> list[str]:
    """``text`` split at every safe cut; every field but maybe the first starts with whitespace."""
    fields = _CUT_SPLIT.split(text)
    if not fields[0]:
        del fields[0]
    return fields


def partial_special_start(text: str, special_tokens: Sequence[str]) -> int:
    """Where a special token that the next chunk of a stream could complete may begin in ``text``.

    Returns the smallest ``i`` such that ``text[i:]`` is a proper prefix of some
    special token (this covers a complete special token at the end that a longer
    one could extend), or ``len(text)`` when there is none.
    """
    cut = len(text)
    for tok in special_tokens:
        for k in range(min(len(tok) - 1, len(text)), 0, -1):
            if len(text) - k >= cut:
                break
            if text.endswith(tok[:k]):
                cut = len(text) - k
                break
    return cut


def stream_cut(text: str, special_tokens: Sequence[str], search_chars: int = 1 << 14) -> int:
    """A safe cut near the end of a stream buffer before which the text is final, or 0 if none is found.

    The cut is one that no special token straddles and that lies before any
    special token the next chunk could complete.
    """
    limit = partial_special_start(text, special_tokens) if special_tokens else len(text)
    window = 256
    while True:
        floor = max(0, limit - window)
        cuts = [m.start() for m in SAFE_CUT.finditer(text, floor, limit)]
        for i in reversed(cuts):
            if i > 0 and cut_keeps_specials(text, i, special_tokens):
                return i
        if floor == 0 or window >= search_chars:
            return 0
        window *= 8


def split_stream_buffer(text: str, splitter: regex.Pattern | None,
                        special_tokens: Sequence[str]) -> tuple[list[tuple[bool, str | list[str]]], str]:
    """Split a buffer of a text stream into parts that are final and a tail to carry over.

    Returns ``(parts, tail)``: each part is ``(True, special_token)`` or
    ``(False, pre_tokens)``, exactly what the whole stream would give for this
    stretch; ``tail`` is the end of the buffer whose pre-tokens or special
    tokens the next chunk could still change, to be prepended to it.
    """
    cut = partial_special_start(text, special_tokens) if special_tokens else len(text)
    head, tail = text[:cut], text[cut:]
    pieces = splitter.split(head) if splitter is not None else [head]
    parts: list[tuple[bool, str | list[str]]] = []
    for i, piece in enumerate(pieces[:-1]):
        if i % 2:
            parts.append((True, piece))
        elif piece:
            parts.append((False, PRETOKEN_RE.findall(piece)))
    last = pieces[-1]  # text after the last special token: the next chunk may continue it
    if last:
        tokens = PRETOKEN_RE.findall(last)
        held = 0
        keep = len(tokens)
        while keep > 0 and (held < STREAM_HOLDBACK_CHARS or keep == len(tokens)):
            keep -= 1
            held += len(tokens[keep])
        if keep:
            parts.append((False, tokens[:keep]))
        tail = "".join(tokens[keep:]) + tail
    return parts, tail
