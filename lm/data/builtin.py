"""The built-in corpus: English prose from the Python standard library, offline.

Every machine that runs ``lab`` has a Python installation, and its standard
library holds several megabytes of human-written English: docstrings, prose
comments and the language reference that ``pydoc`` ships
(``pydoc_data/topics.py``). This module extracts that text deterministically,
so ``data.source = "builtin"`` trains a real model with no download:

* source files are *parsed* with :mod:`ast`, never imported (importing
  arbitrary stdlib modules has side effects: ``antigravity`` opens a browser);
* the standard library directory, the ``.py`` members of the wheels that
  ``ensurepip`` bundles (pip, setuptools) and the ``.txt``/``.rst`` documents
  are visited in sorted order of their relative paths;
* docstrings and whole-line comment blocks are split into paragraphs, each
  reflowed to one line, kept only if it looks like English prose (mostly
  words, few code characters, some common function words) and not seen before;
* each source file with surviving paragraphs becomes one document; documents
  are separated by ``<|endoftext|>``.

The result is cached under ``<cache>/builtin/`` keyed by the Python
implementation and version, a hash of the stdlib path and
:data:`EXTRACTOR_VERSION`: the same Python produces byte-identical text.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import platform
import re
import sys
import sysconfig
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lm.atomic import atomic_write
from lm.data.paths import cache_root

# Bump whenever the extraction changes its output, so caches are rebuilt.
EXTRACTOR_VERSION = 1
SEPARATOR = "<|endoftext|>"

Progress = Callable[[str, int, int], None]

# Characters that mark code rather than prose; a paragraph with many is dropped.
_CODE_CHARS = "()[]{}=_<>\\|#@$%^`~+"
# A word: optional opening quote/bracket, letters (an inner apostrophe or hyphen), closing punctuation.
_WORD = re.compile(r"""[("'*]*[A-Za-z][a-z]*(?:['-][A-Za-z][a-z]*)*[)"'*]*[.,;:!?]*[)"']*\Z""")
# Words nearly every English sentence has; identifier lists and code have none.
_FUNCTION_WORDS = frozenset(
    "the a an is are was be been of to and or in on for with as by at from that this it its "
    "not if when which can may will should must".split()
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_dir() -> Path:
    """The directory of this interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_key(root: Path | None = None) -> str:
    """The cache key of the corpus this interpreter extracts (implementation, version, stdlib, extractor)."""
    root = root or stdlib_dir()
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return f"{sys.implementation.name}-{platform.python_version()}-{where}-x{EXTRACTOR_VERSION}"


def builtin_corpus_path(cache_dir: str | os.PathLike | None = None, *, progress: Progress | None = None,
                        rebuild: bool = False) -> Path:
    """Path of the cached built-in corpus, extracting it first if it is not cached yet.

    A sidecar ``.json`` next to it records its size, document count and
    extraction time (``lab data list`` shows them).
    """
    directory = cache_root(cache_dir) / "builtin"
    path = directory / f"stdlib-prose-{corpus_key()}.txt"
    if path.is_file() and not rebuild:
        return path
    start = time.perf_counter()
    text, stats = extract_corpus(progress=progress)
    data = text.encode("utf-8")
    stats.update(bytes=len(data), seconds=round(time.perf_counter() - start, 2), key=corpus_key(),
                 python=sys.version.split()[0], stdlib=str(stdlib_dir()))
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps(stats, indent=1) + "\n").encode())
    return path


def builtin_corpus_info(cache_dir: str | os.PathLike | None = None) -> dict | None:
    """The sidecar statistics of the cached corpus, or None if it has not been extracted yet."""
    sidecar = cache_root(cache_dir) / "builtin" / f"stdlib-prose-{corpus_key()}.json"
    try:
        return json.loads(sidecar.read_text()) | {"path": str(sidecar.with_suffix(".txt"))}
    except (OSError, ValueError):
        return None


def extract_corpus(root: Path | None = None, *, include: Callable[[str], bool] | None = None,
                   progress: Progress | None = None) -> tuple[str, dict]:
    """Extract the corpus text from the standard library at ``root``.

    ``include`` filters the relative (POSIX) paths visited, so tests can
    extract a small part. Returns the text and statistics
    (``documents``, ``paragraphs``, ``files``).
    """
    root = root or stdlib_dir()
    units = [u for u in _units(root) if include is None or include(u)]
    seen: set[bytes] = set()
    documents: list[str] = []
    reader = _UnitReader(root)
    try:
        for i, rel in enumerate(units):
            _add_documents(reader, rel, seen, documents)
            if progress is not None and (i % 25 == 0 or i == len(units) - 1):
                progress("extracting built-in corpus", i + 1, len(units))
    finally:
        reader.close()
    paragraphs = sum(doc.count("\n\n") + 1 for doc in documents)
    stats = {"documents": len(documents), "paragraphs": paragraphs, "files": len(units)}
    return SEPARATOR.join(documents), stats


def _add_documents(reader: "_UnitReader", rel: str, seen: set[bytes], documents: list[str]) -> None:
    """Append the unit's documents, dropping paragraphs already seen anywhere before."""
    for doc in _documents_of(reader, rel):
        kept = []
        for par in doc:
            digest = hashlib.blake2b(par.encode(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                kept.append(par)
        if kept:
            documents.append("\n\n".join(kept) + "\n")


def is_prose(text: str) -> bool:
    """Whether a one-line paragraph looks like English prose rather than code, tables or data."""
    words = text.split()
    if len(words) < 4 or len(text) < 25 or ">>>" in text:
        return False
    if not text.isascii() and sum(ord(c) < 128 for c in text) < 0.97 * len(text):
        return False  # other scripts and mojibake: the corpus is English
    if sum(text.count(c) for c in _CODE_CHARS) > 0.05 * len(text):
        return False
    wordlike = sum(bool(_WORD.match(w)) for w in words)
    if wordlike < 0.7 * len(words):
        return False
    return any(w.lower().strip("\"'(),.;:") in _FUNCTION_WORDS for w in words)


def prose_paragraphs(text: str) -> list[str]:
    """Split text at blank lines, reflow each paragraph to one line, keep the prose ones."""
    out = []
    for par in _PARAGRAPH_BREAK.split(text):
        line = " ".join(par.split())
        if is_prose(line):
            out.append(line)
    return out


# --- what gets visited ------------------------------------------------------------------------


def _units(root: Path) -> list[str]:
    """Relative paths of everything to extract: .py/.txt/.rst files and ``wheel.whl/member.py``."""
    units = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if name.endswith((".py", ".txt", ".rst")):
                units.append(rel)
            elif name.endswith(".whl") and rel.startswith("ensurepip/"):
                units.extend(f"{rel}/{member}" for member in _wheel_members(root / rel))
    units.sort()
    return units


def _wheel_members(wheel: Path) -> list[str]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return sorted(n for n in zf.namelist() if n.endswith(".py"))
    except (OSError, zipfile.BadZipFile):
        return []


class _UnitReader:
    """Reads units by relative path, keeping each bundled wheel open (reopening one per member is slow)."""

    def __init__(self, root: Path):
        self.root = root
        self._wheels: dict[str, zipfile.ZipFile] = {}

    def read(self, rel: str) -> bytes:
        if ".whl/" in rel:
            wheel, member = rel.split(".whl/", 1)
            if wheel not in self._wheels:
                self._wheels[wheel] = zipfile.ZipFile(self.root / f"{wheel}.whl")
            return self._wheels[wheel].read(member)
        return (self.root / rel).read_bytes()

    def close(self) -> None:
        for zf in self._wheels.values():
            zf.close()
        self._wheels.clear()


def _documents_of(reader: _UnitReader, rel: str) -> Iterator[list[str]]:
    """The documents (lists of prose paragraphs) one unit contributes."""
    try:
        source = reader.read(rel)
    except (OSError, KeyError, zipfile.BadZipFile):
        return
    if not rel.endswith(".py"):
        yield prose_paragraphs(source.decode("utf-8", errors="replace"))
        return
    try:
        with warnings.catch_warnings():  # old code has invalid escapes etc.: not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return  # the test suite holds deliberately broken files
    if rel == "pydoc_data/topics.py":
        yield from _pydoc_topics(tree)
        return
    statements = list(_statements(tree.body))
    items = _docstring_items(tree, statements) + _comment_items(source, statements)
    items.sort(key=lambda item: item[0])  # stable: paragraphs of one docstring keep their order
    yield [par for _, par in items]


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones included, without visiting expressions (a full ast.walk is 4x slower)."""
    for stmt in body:
        yield stmt
        for name in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, name, None)
            if inner:
                yield from _statements(inner)
        for handler in getattr(stmt, "handlers", ()):
            yield from _statements(handler.body)
        for case in getattr(stmt, "cases", ()):
            yield from _statements(case.body)


def _docstring_items(tree: ast.Module, statements: list[ast.stmt]) -> list[tuple[int, str]]:
    items = []
    for node in [tree, *statements]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                line = node.body[0].lineno
                items.extend((line, par) for par in prose_paragraphs(doc))
    return items


def _comment_items(source: bytes, statements: list[ast.stmt]) -> list[tuple[int, str]]:
    """Prose paragraphs of whole-line comment blocks, with the line each block starts on.

    A '#' line strictly inside a simple statement is skipped: it is either in a
    multi-line string (not a comment at all) or a remark inside a bracketed
    expression, which is rarely prose.
    """
    inside: set[int] = set()
    for stmt in statements:
        if not hasattr(stmt, "body") and stmt.end_lineno and stmt.end_lineno > stmt.lineno:
            inside.update(range(stmt.lineno + 1, stmt.end_lineno + 1))
    text = source.decode("utf-8", errors="replace")
    items: list[tuple[int, str]] = []
    block: list[str] = []
    start = 0
    for number, line in enumerate(io.StringIO(text), 1):
        stripped = line.strip()
        if stripped.startswith("#") and number not in inside and not stripped.startswith(("#!", "# -*-")):
            if not block:
                start = number
            block.append(stripped.lstrip("#: \t"))
            continue
        if block:
            items.extend((start, par) for par in prose_paragraphs("\n".join(block)))
            block = []
    if block:
        items.extend((start, par) for par in prose_paragraphs("\n".join(block)))
    return items


def _pydoc_topics(tree: ast.AST) -> Iterator[list[str]]:
    """One document per topic of the language reference stored in ``pydoc_data.topics``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield prose_paragraphs(value.value)
            return


