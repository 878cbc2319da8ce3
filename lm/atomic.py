"""One atomic file write, used by every writer of run, cache and config files.

:func:`atomic_write` writes into a temp file in the destination's folder,
flushes and fsyncs it, renames it over the destination and fsyncs the folder,
so a reader (or a crash, a kill -9, a full disk) sees either the old file or
the new one, never half of one. On any failure the temp file is removed and
the destination is left as it was.

The data is bytes, text (UTF-8), or a callback that writes into the open
binary file (``torch.save``, a streamed copy, an encoder appending chunks).
Temp files are named ``.<name>.<random>.tmp``: :func:`is_temp_file` tells a
cleanup what this module made, and nothing else.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _rename(src: str, dst: str) -> None:
    """The rename step (one name, so tests can make it fail)."""
    os.replace(src, dst)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename in it survives a power cut (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Writer, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically; return the path.

    ``data`` is bytes, a str (written as UTF-8) or ``callback(binary_file)``.
    The parent folder is created if needed; the file gets permission ``mode``
    (mkstemp would leave it private). Any exception (from the callback, a full
    disk, the rename) removes the temp file and propagates; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, mode)
        except OSError:  # filesystems without Unix permissions (exFAT, some network mounts)
            pass
        _rename(tmp, os.fspath(path))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def atomic_rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` over ``dst`` (both in one folder) and fsync the folder: for a file already complete
    on disk, such as a hard link to a checkpoint or a finished directory."""
    _rename(os.fspath(src), os.fspath(dst))
    fsync_dir(Path(dst).parent)


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what it was raised from, as torch wraps write errors) is a full disk or quota."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def write_error_message(path: str | os.PathLike, e: BaseException) -> str:
    """Why writing ``path`` failed, in words: for a full disk, the path and the free space left."""
    path = Path(path)
    if is_disk_full(e):
        free = _free_bytes(path.parent)
        room = f"{_human(free)} free" if free is not None else "free space unknown"
        return (f"the disk holding {path.parent} is full ({room}), so {path.name} could not be written; "
                "nothing was replaced. Free some space (or point the output somewhere with room) and run the "
                "same command again")
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temp file of :func:`atomic_write` (safe to delete once its writer is gone)."""
    return bool(_TEMP_NAME.match(Path(path).name))


def refuse_overwrite(path: str | os.PathLike, *, force: bool, directory: bool = False,
                     option: str = "--out") -> None:
    """OutputExistsError unless writing ``path`` would lose nothing (or ``force``).

    ``directory=True``: ``path`` is a folder to write into; it may be absent or
    empty. Otherwise ``path`` is a file that must not exist yet. Every command
    that writes user-named outputs calls this first.
    """
    from lm.errors import OutputExistsError

    if force:
        return
    p = Path(path)
    if directory:
        if p.is_dir():
            try:
                names = sorted(q.name for q in p.iterdir())
            except OSError:
                names = []
            if names:
                shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
                raise OutputExistsError(
                    f"{option} {p} is a folder that already holds files ({shown}); writing there would replace "
                    "them. Give an empty or new folder, or add --force to overwrite.")
        elif p.exists():
            raise OutputExistsError(f"{option} {p} is a file; give a folder (new or empty) to write into")
        return
    if p.is_dir():
        raise OutputExistsError(f"{option} {p} is a folder; give the path of a file to write")
    if p.exists():
        raise OutputExistsError(f"{option} {p} already exists; give another path, or add --force to overwrite it")
