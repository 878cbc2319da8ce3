"""Nested config tables as dotted keys: ``{"model": {"norm": "pre"}}`` <-> ``{"model.norm": "pre"}``.

The form ``--set`` overrides, sweep ``[set]`` tables and config diffs (``lab compare``) all speak.
"""

from __future__ import annotations

from collections.abc import Mapping


def flatten(table: Mapping, prefix: str = "") -> dict:
    """``{"model": {"norm": "pre"}}`` -> ``{"model.norm": "pre"}`` (tables at any depth; other values as is)."""
    out = {}
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
