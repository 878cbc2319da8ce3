"""lm: a from-scratch transformer language model library (CS336 assignment 1).

``lm`` never imports textual, rich or plotext; the ``lab`` app builds on it.
Attributes are imported lazily so that light users (``lab --help``, the
config loader) do not pay for importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "LabError": "lm.errors",
    "ConfigError": "lm.errors",
    "ModelConfig": "lm.model",
    "TransformerLM": "lm.model",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm' has no attribute {name!r}")
