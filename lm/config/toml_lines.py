"""Where each key of a TOML text is: {key path: line}, for error messages.

tomllib gives values but no positions. This is a small scanner, not a parser
(the text has already parsed when it runs): it tracks ``[table]`` headers and
``key =`` lines and skips the insides of multi-line strings and arrays.
"""

from __future__ import annotations

import re
import tomllib

KeyPath = tuple[str, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"\s*\[\[?\s*({_DOTTED})\s*\]\]?")
_KEYVAL_RE = re.compile(rf"\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY)


def _split_key(dotted: str) -> KeyPath:
    parts = []
    for m in _PART_RE.finditer(dotted):
        p = m.group(0)
        parts.append(tomllib.loads(f"k = {p}")["k"] if p[0] in "\"'" else p)
    return tuple(parts)


def key_lines(text: str) -> dict[KeyPath, int]:
    """{key path: 1-based line} for every table header and key in TOML text.

    Each prefix of a dotted key maps to the first line that mentions it; keys
    inside inline tables are not listed (look up their table's path instead).
    """
    lines: dict[KeyPath, int] = {}

    def record(path: KeyPath, num: int) -> None:
        for i in range(1, len(path) + 1):
            lines.setdefault(path[:i], num)

    table: KeyPath = ()
    delim, depth = None, 0
    for num, line in enumerate(text.splitlines(), 1):
        start = 0
        if delim is None and depth == 0:
            if line.lstrip().startswith("["):
                m = _HEADER_RE.match(line)
                if m:
                    table = _split_key(m[1])
                    record(table, num)
                continue
            m = _KEYVAL_RE.match(line)
            if not m:
                continue
            record(table + _split_key(m[1]), num)
            start = m.end()
        delim, depth = _scan_value(line, start, delim, depth)
        if delim in ('"', "'"):  # one-line strings end with their line
            delim = None
    return lines


def _scan_value(s: str, i: int, delim: str | None, depth: int) -> tuple[str | None, int]:
    """Continue scanning a value: (open string delimiter or None, bracket depth) at line end."""
    n = len(s)
    while i < n:
        if delim:
            if s[i] == "\\" and delim[0] == '"':
                i += 2
            elif s.startswith(delim, i):
                i += len(delim)
                delim = None
            else:
                i += 1
            continue
        c = s[i]
        if c == "#":
            break
        if s.startswith('"""', i) or s.startswith("'''", i):
            delim, i = s[i: i + 3], i + 3
            continue
        if c in "\"'":
            delim = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return delim, depth
