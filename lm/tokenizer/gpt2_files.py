"""Reading and writing a tokenizer as GPT-2-format files.

A tokenizer directory holds

* ``vocab.json``: ``{token: id}`` with each token's bytes in GPT-2's
  byte-to-unicode encoding (``"Ġthe"`` is ``b" the"``); special tokens appear
  as themselves, as in GPT-2's own file;
* ``merges.txt``: an optional ``#version`` line, then one merge per line, the
  two tokens in the same encoding separated by one space, in rank order;
* ``special_tokens.json``: a JSON list of the special tokens (lm's addition;
  GPT-2 has only ``<|endoftext|>``).

Every reader error is a TokenizerError naming the file (and the line, for
merges) and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from lm.atomic import atomic_write, write_error_message
from lm.errors import TokenizerError
from lm.tokenizer.byte_unicode import bytes_to_printable, printable_to_bytes

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_FILE = "special_tokens.json"


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TokenizerError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise TokenizerError(f"{what} {path} cannot be read ({e.strerror or e})") from None


def _read_json(path: Path, what: str):
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def read_special_tokens(path: str | os.PathLike) -> list[str]:
    """The special tokens listed in a special_tokens.json file."""
    path = Path(path)
    data = _read_json(path, "special tokens file")
    if not isinstance(data, list) or not all(isinstance(t, str) and t for t in data):
        raise TokenizerError(
            f"special tokens file {path} must hold a JSON list of non-empty strings, such as [\"<|endoftext|>\"]"
        )
    return data


def read_vocab(path: str | os.PathLike, special_tokens: Collection[str] = ()) -> dict[int, bytes]:
    """id -> token bytes from a GPT-2 vocab.json; tokens in ``special_tokens`` are read as themselves."""
    path = Path(path)
    data = _read_json(path, "vocab file")
    if not isinstance(data, dict) or not data:
        raise TokenizerError(f"vocab file {path} must hold a non-empty JSON object mapping tokens to ids")
    vocab: dict[int, bytes] = {}
    owner: dict[int, str] = {}
    for token, idx in data.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise TokenizerError(f"vocab file {path}: token {token!r} has id {idx!r}; ids must be integers >= 0")
        if idx in vocab:
            raise TokenizerError(f"vocab file {path}: id {idx} is used by both {owner[idx]!r} and {token!r}")
        if token in special_tokens:
            raw = token.encode("utf-8")
        else:
            raw = printable_to_bytes(token)
            if raw is None:
                raise TokenizerError(
                    f"vocab file {path}: token {token!r} (id {idx}) has characters outside GPT-2's byte-to-unicode "
                    "alphabet; if it is a special token, list it as one (special_tokens.json or special_tokens=)"
                )
        vocab[idx] = raw
        owner[idx] = token
    return vocab


def read_merges_with_lines(path: str | os.PathLike) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Merges from a GPT-2 merges.txt in rank order, with the line number of each."""
    path = Path(path)
    text = _read_text(path, "merges file")
    merges: list[tuple[bytes, bytes]] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerError(
                f"merges file {path}, line {lineno}: {line!r} is not two tokens separated by one space "
                "(expected lines like 'Ġ t')"
            )
        a, b = printable_to_bytes(parts[0]), printable_to_bytes(parts[1])
        if a is None or b is None:
            bad = parts[0] if a is None else parts[1]
            raise TokenizerError(
                f"merges file {path}, line {lineno}: token {bad!r} has characters outside GPT-2's "
                "byte-to-unicode alphabet"
            )
        merges.append((a, b))
        lines.append(lineno)
    return merges, lines


def write_tokenizer_files(directory: str | os.PathLike, vocab: Mapping[int, bytes],
                          merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str]) -> Path:
    """Write vocab.json, merges.txt and special_tokens.json into ``directory`` (created if needed)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        specials = {t.encode("utf-8"): t for t in special_tokens}
        entries: dict[str, int] = {}
        for idx in sorted(vocab):
            raw = vocab[idx]
            token = specials[raw] if raw in specials else bytes_to_printable(raw)
            if token in entries:
                raise TokenizerError(
                    f"cannot save the tokenizer in GPT-2 format: ids {entries[token]} and {idx} would both be "
                    f"written as {token!r} in {VOCAB_FILE}; a special token that looks like a GPT-2-encoded "
                    "token (such as 'Ġ') cannot be told apart. Use special tokens like '<|name|>'"
                )
            entries[token] = idx
        atomic_write(directory / VOCAB_FILE, json.dumps(entries, ensure_ascii=False, indent=0) + "\n")
        lines = ["#version: 0.2"] + [f"{bytes_to_printable(a)} {bytes_to_printable(b)}" for a, b in merges]
        atomic_write(directory / MERGES_FILE, "\n".join(lines) + "\n")
        atomic_write(directory / SPECIAL_TOKENS_FILE, json.dumps(list(special_tokens), ensure_ascii=False) + "\n")
    except OSError as e:
        raise TokenizerError(f"cannot write tokenizer files into {directory}: "
                             f"{write_error_message(directory / VOCAB_FILE, e)}") from None
    return directory
