"""Data: sources, the built-in corpus, downloads, cached tokenization and batches.

* :mod:`lm.data.sources`: what ``data.source`` names (file, directory, dataset, 'builtin');
* :mod:`lm.data.builtin`: English prose extracted from the Python standard library;
* :mod:`lm.data.registry`, :mod:`lm.data.download`: ``lab data get`` (resumable, verified);
* :mod:`lm.data.text`: splitting and copying corpora larger than memory;
* :mod:`lm.data.prepare`: :func:`prepare_data`, text to cached token files;
* :mod:`lm.data.batches`: :class:`BatchSampler` and :func:`eval_batches`.

Attributes load lazily so that importing ``lm.data`` does not import torch or numpy.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "PreparedData": "lm.data.prepare",
    "prepare_data": "lm.data.prepare",
    "cached_token_sets": "lm.data.prepare",
    "BatchSampler": "lm.data.batches",
    "eval_batches": "lm.data.batches",
    "get_batch": "lm.data.batches",
    "builtin_corpus_path": "lm.data.builtin",
    "download_dataset": "lm.data.download",
    "DATASETS": "lm.data.registry",
    "resolve_source": "lm.data.sources",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm.data' has no attribute {name!r}")
