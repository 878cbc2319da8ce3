"""The named datasets ``lab data get`` can download, and where they land on disk.

Each dataset is a few public files under one base URL. ``size`` and ``sha256``
are checked after a download where known; where the publisher does not state
them, the download is checked against the server's Content-Length and its
sha256 is recorded in ``manifest.json`` next to the files, so later changes
on disk are detectable. ``approx_size`` is only for display and progress.

``$LAB_DATA_BASE_URL`` (or ``base_url=``) replaces every dataset's base URL,
for a mirror or for tests against a local server: the file is then fetched
from ``<base>/<remote name>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lm.data.paths import data_root
from lm.errors import DataError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as published, and what it becomes on disk."""

    remote: str
    """File name under the dataset's base URL."""
    local: str
    """File name on disk after download (and decompression)."""
    split: str
    """'train' or 'valid'."""
    approx_size: int
    """Roughly how many bytes are downloaded (display only)."""
    size: int | None = None
    """Exact byte size of the download, where the publisher states it."""
    sha256: str | None = None
    """sha256 of the download, where known."""
    gzip: bool = False
    """Whether the download is gzip-compressed and must be decompressed to ``local``."""


@dataclass(frozen=True)
class Dataset:
    """A named public corpus: a base URL and its files."""

    name: str
    description: str
    base_url: str
    files: tuple[RemoteFile, ...]

    def file(self, split: str) -> RemoteFile | None:
        """The file of a split ('train' or 'valid'), or None if the dataset has no such file."""
        return next((f for f in self.files if f.split == split), None)

    def url(self, remote_file: RemoteFile, base_url: str | None = None) -> str:
        """The address to fetch ``remote_file`` from, honouring ``base_url`` and ``$LAB_DATA_BASE_URL``."""
        base = base_url or os.environ.get("LAB_DATA_BASE_URL") or self.base_url
        return f"{base.rstrip('/')}/{remote_file.remote}"


DATASETS: dict[str, Dataset] = {
    "tinystories": Dataset(
        name="tinystories",
        description="TinyStories V2 (GPT-4 generated children's stories; Eldan & Li 2023), 2.2 GB train + 22 MB valid",
        base_url="https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main",
        files=(
            RemoteFile("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-train.txt", "train", 2_230_000_000),
            RemoteFile("TinyStoriesV2-GPT4-valid.txt", "TinyStoriesV2-GPT4-valid.txt", "valid", 22_500_000),
        ),
    ),
    "owt": Dataset(
        name="owt",
        description="OpenWebText sample used by Stanford CS336 (web text), 4.6 GB + 112 MB gzip, 11 GB + 290 MB text",
        base_url="https://huggingface.co/datasets/stanford-cs336/owt-sample/resolve/main",
        files=(
            RemoteFile("owt_train.txt.gz", "owt_train.txt", "train", 4_590_000_000, gzip=True),
            RemoteFile("owt_valid.txt.gz", "owt_valid.txt", "valid", 112_000_000, gzip=True),
        ),
    ),
    "tinyshakespeare": Dataset(
        name="tinyshakespeare",
        description="Tiny Shakespeare (karpathy/char-rnn), 1.1 MB; no separate valid file (val_fraction applies)",
        base_url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare",
        files=(
            RemoteFile("input.txt", "tinyshakespeare.txt", "train", 1_115_394, size=1_115_394,
                       sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
        ),
    ),
}


def get_dataset(name: str) -> Dataset:
    """The registry entry of ``name``; a DataError lists the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}") from None


def dataset_dir(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Where the files of dataset ``name`` live: ``<data root>/<name>``."""
    return data_root(dest) / name


def dataset_files(name: str, dest: str | os.PathLike | None = None) -> dict[str, Path]:
    """{split: local path} of a downloaded dataset; a DataError says how to download it if absent."""
    ds = get_dataset(name)
    directory = dataset_dir(name, dest)
    paths = {f.split: directory / f.local for f in ds.files}
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"dataset {name!r} is not downloaded: {missing[0]} does not exist. Run `lab data get {name}` "
            f"to download it (about {human_bytes(sum(f.approx_size for f in ds.files))}), or set $LAB_DATA_DIR "
            "to the directory that holds it."
        )
    return paths


def human_bytes(n: float) -> str:
    """A byte count for people: 1.1 MB, 2.2 GB (powers of 1000, like download sites)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
