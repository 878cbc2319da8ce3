"""Downloading the named datasets: resumable, verified, with progress.

A file is fetched into ``<name>.part`` next to its destination. When a
``.part`` exists from an interrupted attempt, the request asks for the rest
with an HTTP ``Range`` header and appends; a server that ignores ranges
answers with the whole file, which then replaces the partial one. The
finished download is checked against the registry's size and sha256 where
known, else against the server's Content-Length, and then renamed into place
(gzip files are decompressed first). ``manifest.json`` in the dataset
directory records each file's address, size and sha256.

Only :mod:`urllib` is used, so ``lm`` needs no HTTP dependency.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from lm.atomic import atomic_rename, atomic_write
from lm.data.registry import Dataset, RemoteFile, dataset_dir, get_dataset, human_bytes
from lm.errors import DataError

Progress = Callable[[str, int, int], None]

CHUNK = 1 << 20
TIMEOUT_S = 30.0
USER_AGENT = "lab-lm/0.1 (+urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def download_dataset(dataset: str | Dataset, dest: str | os.PathLike | None = None, *,
                     base_url: str | None = None, force: bool = False,
                     progress: Progress | None = None) -> dict[str, Path]:
    """Download every file of ``dataset`` into ``<dest or data root>/<name>``; return {split: path}.

    Files already present with the size recorded in the manifest are kept
    (``force`` downloads them again). Raises DataError for an unknown name,
    an unreachable server, an HTTP error or a file that fails verification.
    """
    ds = get_dataset(dataset) if isinstance(dataset, str) else dataset
    directory = dataset_dir(ds.name, dest)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    out: dict[str, Path] = {}
    for remote_file in ds.files:
        final = directory / remote_file.local
        if not force and local_file_ok(remote_file, final, manifest):
            out[remote_file.split] = final
            continue
        url = ds.url(remote_file, base_url)
        fetched = directory / remote_file.remote
        size, sha256 = fetch(url, fetched, expected_size=remote_file.size, expected_sha256=remote_file.sha256,
                             label=remote_file.remote, progress=progress,
                             check=lambda part, f=remote_file, u=url: check_content(f, part, u))
        entry = {"url": url, "download_size": size, "download_sha256": sha256, "downloaded": time.time()}
        if remote_file.gzip:
            entry["size"], entry["sha256"] = gunzip(fetched, final, progress=progress)
            fetched.unlink()
        else:
            if fetched != final:
                atomic_rename(fetched, final)
            entry["size"], entry["sha256"] = size, sha256
        manifest[remote_file.local] = entry
        write_manifest(directory, manifest)
        out[remote_file.split] = final
    return out


def fetch(url: str, path: Path, *, expected_size: int | None = None, expected_sha256: str | None = None,
          label: str | None = None, progress: Progress | None = None,
          check: Callable[[Path], None] | None = None) -> tuple[int, str]:
    """Download ``url`` to ``path`` via ``path.part``, resuming a partial file; return (size, sha256).

    Verifies the byte count against ``expected_size`` or the server's length
    and the content against ``expected_sha256``; a mismatching hash deletes
    the download (it cannot be repaired by resuming). ``check(part)`` may
    refuse the content (DataError) before it replaces ``path``: a good file
    already there is never replaced by a worse one.
    """
    label = label or path.name
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have and expected_size is not None and have > expected_size:
        part.unlink()  # longer than the real file: not a prefix of it
        have = 0
    if have and expected_size is not None and have == expected_size:
        total = have  # complete from an earlier attempt that stopped before verifying
    else:
        have, total = _transfer(url, part, have, expected_size, label, progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(
            f"download of {url} stopped after {human_bytes(size)} of {human_bytes(total)}; run the same "
            f"command again to resume (the partial file {part} is kept)"
        )
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DataError(
            f"{url} has {size:,} bytes but {label} should have {expected_size:,}; the server may be serving "
            "a different file. The download was deleted; check the address (or $LAB_DATA_BASE_URL)."
        )
    sha256 = file_sha256(part, progress=progress, label=f"verify {label}")
    if expected_sha256 is not None and sha256 != expected_sha256:
        part.unlink()
        raise DataError(
            f"{label} downloaded from {url} is corrupt: its sha256 is {sha256}, expected {expected_sha256}. "
            "The download was deleted; run the command again to download it afresh."
        )
    if check is not None:
        try:
            check(part)
        except DataError:
            part.unlink(missing_ok=True)
            raise
    atomic_rename(part, path)
    return size, sha256


def _transfer(url: str, part: Path, have: int, expected_size: int | None, label: str,
              progress: Progress | None) -> tuple[int, int | None]:
    """Fetch the missing bytes of ``part`` (all of them if the server ignores Range); return (start, total)."""
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # our partial file does not fit the server's file: start over
            part.unlink()
            return _transfer(url, part, 0, expected_size, label, progress)
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        kept = f" The partial file {part} ({human_bytes(have)}) is kept for resuming." if have else ""
        raise DataError(
            f"cannot reach {url}: {reason}. Check the network connection, or set $LAB_DATA_BASE_URL to a "
            f"mirror that serves the same files.{kept}"
        ) from None
    with response:
        start, total = _response_span(response, have, url)
        length = response.headers.get("Content-Length")
        if total is None and length is not None:
            total = start + int(length)
        mode = "ab" if start else "wb"
        done = start
        shown_total = total or expected_size or 0
        try:
            with open(part, mode) as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(f"download {label}", done, max(shown_total, done))
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            raise DataError(
                f"download of {url} was interrupted after {human_bytes(done)} ({e}); run the same command "
                f"again to resume (the partial file {part} is kept)"
            ) from None
    return start, total


def _response_span(response, have: int, url: str) -> tuple[int, int | None]:
    """(offset the body starts at, total file size or None) from the status and Content-Range."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != have:
            raise DataError(f"{url} answered a resume request with an unexpected range "
                            f"{response.headers.get('Content-Range')!r}; delete the .part file and retry")
        total = match.group(3)
        return have, None if total == "*" else int(total)
    return 0, None  # 200: the whole file, whether or not we asked for a range


def gunzip(src: Path, dst: Path, *, progress: Progress | None = None) -> tuple[int, str]:
    """Decompress ``src`` to ``dst`` atomically; return the size and sha256 of the result."""
    digest = hashlib.sha256()
    size = 0
    total = src.stat().st_size

    def copy(out) -> None:
        nonlocal size
        with open(src, "rb") as raw, gzip.GzipFile(fileobj=raw) as zin:
            while chunk := zin.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(f"decompress {src.name}", raw.tell(), total)

    try:
        atomic_write(dst, copy)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        src.unlink(missing_ok=True)
        raise DataError(f"{src} is not a valid gzip file ({e}); it was deleted, run the command again") from None
    except OSError as e:
        raise DataError(f"cannot decompress {src} into {dst} ({e.strerror or e})") from None
    return size, digest.hexdigest()


_SNIFF = 1 << 16


def check_content(remote_file: RemoteFile, part: Path, url: str) -> None:
    """DataError unless ``part`` looks like ``remote_file``: for files without a published hash, the size
    within a factor of two of the expected one, and (text files) UTF-8 prose rather than an HTML error page;
    gzip files must start with gzip's magic bytes. The message says the existing file (if any) was kept."""
    size = part.stat().st_size
    kept = " The download was deleted; a file already there was kept."
    if remote_file.gzip:
        with open(part, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise DataError(f"{url} is not a gzip file (the server sent something else, often an error page)."
                                + kept)
    if remote_file.sha256 is not None or remote_file.size is not None:
        return  # the exact size or hash was already checked
    lo, hi = remote_file.approx_size // 2, remote_file.approx_size * 2
    if not lo <= size <= hi:
        raise DataError(f"{url} sent {human_bytes(size)}, but {remote_file.remote} is about "
                        f"{human_bytes(remote_file.approx_size)}; the server may be serving another file." + kept)
    if remote_file.gzip:
        return
    with open(part, "rb") as f:
        head = f.read(_SNIFF)
    try:
        text = head[: len(head) - 3].decode("utf-8") + head[len(head) - 3:].decode("utf-8", errors="ignore")
    except UnicodeDecodeError:
        raise DataError(f"{url} is not UTF-8 text (its first {human_bytes(len(head))} do not decode)." + kept) from None
    start = text.lstrip()[:200].lower()
    printable = sum(c.isprintable() or c in "\n\r\t" for c in text) / max(1, len(text))
    if start.startswith(("<!doctype html", "<html", "<?xml")) or printable < 0.95:
        raise DataError(f"{url} does not look like {remote_file.remote}: it starts with {text.lstrip()[:40]!r}, "
                        "not plain text (an error or login page?)." + kept)


def file_sha256(path: Path, *, progress: Progress | None = None, label: str | None = None) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 8):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(label or f"hash {path.name}", done, total)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict:
    """The ``manifest.json`` of a dataset directory ({} if absent or unreadable)."""
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically."""
    atomic_write(directory / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def local_file_ok(remote_file: RemoteFile, path: Path, manifest: dict) -> bool:
    """Whether ``path`` is a finished download of ``remote_file`` (its size matches the manifest)."""
    entry = manifest.get(remote_file.local)
    return bool(entry) and path.is_file() and path.stat().st_size == entry.get("size")
