"""The output folder of an export or an import: refused when it holds something, written file by file atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lm.atomic import atomic_write
from lm.errors import ExportError


def prepare_out_dir(out: str | os.PathLike, force: bool, what: str) -> Path:
    """Create ``out`` (or accept an empty one); ExportError for a file or a non-empty folder unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder; name a new or empty folder for the {what}")
    if out.is_dir() and any(out.iterdir()) and not force:
        have = sorted(p.name for p in out.iterdir())
        shown = ", ".join(have[:8]) + (f" and {len(have) - 8} more" if len(have) > 8 else "")
        raise ExportError(f"--out {out} is not empty (it holds {shown}); name a new or empty folder for the "
                          f"{what}, or pass --force to write into it (files of the same name are replaced)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create --out {out} ({e.strerror or e})") from None
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` atomically (:func:`lm.atomic.atomic_write`)."""
    return atomic_write(path, data)


def write_json(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON (UTF-8, non-ASCII kept), atomically."""
    return atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
