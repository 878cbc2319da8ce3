"""Where datasets, the built-in corpus and token caches live on disk.

Two roots, both overridable so tests and shared machines never touch ``~``:

* the cache (token files, trained tokenizers, the built-in corpus):
  ``data.cache_dir`` if set, else ``$LAB_CACHE_DIR``, else ``~/.cache/lab``;
* the dataset directory (what ``lab data get`` downloads): ``--dest`` if given,
  else ``$LAB_DATA_DIR``, else ``<cache>/datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, ``$LAB_CACHE_DIR`` or ``~/.cache/lab`` (not created)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lab"


def data_root(dest: str | os.PathLike | None = None) -> Path:
    """The dataset directory: ``dest``, ``$LAB_DATA_DIR`` or ``<cache root>/datasets`` (not created)."""
    if dest:
        return Path(dest).expanduser()
    env = os.environ.get("LAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_root() / "datasets"
