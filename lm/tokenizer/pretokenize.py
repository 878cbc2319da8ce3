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


def pretokenize(text: str) -> list[str]:
    """GPT-2 pre-tokens of a text that holds no special tokens."""
    return PRETOKEN_RE.findall(text)


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


# ----- Cutting text without running the regex
#
# A position just before a space that is followed by a non-whitespace character
# is a pre-token boundary whatever surrounds it: no pre-token can run from
# before it into the space (only ` ?X` and whitespace runs hold a space, and a
# whitespace run ending in a space followed by non-whitespace leaves that space
# to ` ?X`), and from the space the regex matches the same ` ?X` token whether
# or not the text before is there. So text cut there pre-tokenizes piece by
# piece exactly as it does whole; str.split(" ") finds such cuts at C speed,
# provided that the spaces that are NOT such cuts (a space followed by
# whitespace or ending the text) are first hidden behind a placeholder.

SPACE_GLUE = "\uffff"
"""Stands in for a space that must stay in its field (a Unicode noncharacter; texts holding it take the slow path)."""

# The stdlib's \s covers every character the regex module's \s does (tests check
# this), so every space that is not a safe cut is hidden; hiding a few more is harmless.
_UNSAFE_SPACE = re.compile(r" (?=\s|\Z)")


def space_fields(text: str) -> list[str] | None:
    """``text`` split at safe spaces: field ``k > 0`` stands for ``" " + field`` with SPACE_GLUE meaning a space.

    Pre-tokenizing ``fields[0]`` and each ``" " + fields[k]`` on its own gives
    the pre-tokens of ``text`` (special tokens excluded). None when ``text``
    holds SPACE_GLUE itself.
    """
    if SPACE_GLUE in text:
        return None
    if _UNSAFE_SPACE.search(text):
        text = _UNSAFE_SPACE.sub(SPACE_GLUE, text)
    return text.split(" ")


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
    """A position near the end of a stream buffer before which the text is final, or 0 if none is found.

    The cut is a safe space (see :func:`space_fields`) that no special token
    straddles and that lies before any special token the next chunk could complete.
    """
    limit = partial_special_start(text, special_tokens) if special_tokens else len(text)
    floor = max(0, limit - search_chars)
    i = text.rfind(" ", floor, limit - 1)
    while i > 0:
        nxt = text[i + 1]
        if not nxt.isspace() and nxt != SPACE_GLUE and not straddled(text, i, special_tokens):
            return i
        i = text.rfind(" ", floor, i)
    return 0


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
