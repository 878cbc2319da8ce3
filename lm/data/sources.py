"""Resolving ``data.source``/``data.val_source`` into files, and identifying them for the cache.

A source is one of:

* ``"builtin"``: the standard-library prose corpus (:mod:`lm.data.builtin`);
* a named dataset (``tinystories``, ``owt``, ``tinyshakespeare``): the files
  ``lab data get`` put under the dataset directory; its ``valid`` file, if it
  has one, is the validation text unless ``data.val_source`` is set;
* a text file;
* a directory: its ``*.txt`` files in sorted order, joined by the separator.

A source's *identity* is what the token cache is keyed on: the content hash
of small files, and path + size + modification time of large ones (hashing
gigabytes on every run would defeat the cache).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from lm.data.registry import DATASETS, dataset_files
from lm.errors import DataError

# Files up to this size are identified by content; larger ones by path, size and mtime.
HASH_LIMIT = 64 << 20


@dataclass
class TextSource:
    """A resolved data source: what the text is, and the files it is read from."""

    spec: str
    """The value as written in the config."""
    kind: str
    """'builtin', 'dataset', 'file' or 'directory'."""
    paths: list[Path] = field(default_factory=list)
    """The files joined into the text (empty for 'builtin' until :meth:`files` extracts it)."""
    valid_paths: list[Path] = field(default_factory=list)
    """A named dataset's own validation file, if it has one."""

    @property
    def label(self) -> str:
        """A short description for summaries: ``builtin``, ``tinystories``, ``data/x.txt (3 files)``."""
        if self.kind in ("builtin", "dataset"):
            return self.spec
        if self.kind == "directory":
            return f"{self.spec} ({len(self.paths)} files)"
        return self.spec

    def files(self, cache_dir: str | os.PathLike | None = None, progress=None) -> list[Path]:
        """The files to read (extracting the built-in corpus first if needed)."""
        if self.kind == "builtin":
            from lm.data.builtin import builtin_corpus_path

            return [builtin_corpus_path(cache_dir, progress=progress)]
        return self.paths

    def identity(self) -> dict:
        """What identifies this text for the cache (cheap: no full read of large files)."""
        if self.kind == "builtin":
            from lm.data.builtin import corpus_key

            return {"builtin": corpus_key()}
        return {"kind": self.kind, "files": [file_identity(p) for p in self.paths]}


def resolve_source(spec: str, *, key: str = "data.source", data_dir: str | os.PathLike | None = None) -> TextSource:
    """The :class:`TextSource` that ``spec`` names; DataError (naming ``key``) if it names nothing usable."""
    if not spec or not spec.strip():
        raise DataError(f"{key} is empty: give a text file, a directory of .txt files, 'builtin' or one of "
                        f"{_known()}")
    if spec == "builtin":
        return TextSource(spec, "builtin")
    path = Path(spec).expanduser()
    if path.is_file():
        _check_not_empty(path, key)
        return TextSource(spec, "file", [path])
    if path.is_dir():
        return TextSource(spec, "directory", _directory_files(path, key))
    if spec in DATASETS:
        files = dataset_files(spec, data_dir)
        valid = [files["valid"]] if "valid" in files else []
        for p in [files["train"], *valid]:
            _check_not_empty(p, key)
        return TextSource(spec, "dataset", [files["train"]], valid)
    if path.exists():
        raise DataError(f"{key} = {spec!r} is neither a regular file nor a directory")
    if os.sep in spec or "/" in spec or path.suffix:
        raise DataError(f"{key}: the file {spec!r} does not exist (looked in {path.resolve().parent})")
    raise DataError(f"{key} = {spec!r} is not a file, a directory or a known dataset; use a path to a text "
                    f"file, a directory of .txt files, 'builtin', or one of {_known()}")


def file_identity(path: Path) -> dict:
    """The cache identity of one file: its sha256 if small, else resolved path, size and mtime."""
    st = path.stat()
    if st.st_size <= HASH_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        return {"sha256": digest.hexdigest(), "size": st.st_size}
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _directory_files(path: Path, key: str) -> list[Path]:
    files = sorted(p for p in path.glob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{key}: the directory {path} holds no .txt files (a directory source joins its *.txt "
                        "files in sorted order)")
    nonempty = [p for p in files if p.stat().st_size > 0]
    if not nonempty:
        raise DataError(f"{key}: every .txt file in {path} is empty ({len(files)} files)")
    return nonempty


def _check_not_empty(path: Path, key: str) -> None:
    if path.stat().st_size == 0:
        raise DataError(f"{key}: the file {path} is empty; a corpus needs some text")


def _known() -> str:
    return ", ".join(repr(n) for n in DATASETS)
