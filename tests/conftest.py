"""Shared fixtures. Tests never write into the working directory: use tmp_path."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from project_data import PROJECT_TEXTS  # noqa: F401  (texts written for the tests: see project_data.py)

# ../shared/data holds real corpora on the developers' machines and CI; a user's
# clone has none, so tests that need it skip with a reason. LAB_TEST_SHARED_DATA
# points elsewhere (a missing folder: run the suite as a fresh clone would).
SHARED_DATA = Path(os.environ.get("LAB_TEST_SHARED_DATA")
                   or Path(__file__).resolve().parent.parent.parent / "shared" / "data")

# GPT-2's files as tiktoken caches them (tiktoken_ext.openai_public.gpt2): name -> (URL, sha256).
_TIKTOKEN_GPT2 = {
    "vocab": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
              "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
               "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not available: {SHARED_DATA} does not exist (only on the lab's dev machines)")
    return SHARED_DATA


def tiktoken_cache_dir() -> Path:
    """Where tiktoken keeps the files it downloaded (its own rule in tiktoken.load.read_file_cached)."""
    return Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                or Path(tempfile.gettempdir()) / "data-gym-cache")


def _tiktoken_cached_gpt2() -> tuple[Path, Path] | None:
    paths = {}
    for name, (url, sha256) in _TIKTOKEN_GPT2.items():
        path = tiktoken_cache_dir() / hashlib.sha1(url.encode()).hexdigest()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            return None
        paths[name] = path
    return paths["vocab"], paths["merges"]


@pytest.fixture(scope="session")
def gpt2_files() -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of GPT-2: from ../shared/data, else from tiktoken's download cache.

    tiktoken ships no ranks in its package: it downloads them on first use, and
    tests never reach the internet, so without either source the test skips."""
    vocab, merges = SHARED_DATA / "gpt2_vocab.json", SHARED_DATA / "gpt2_merges.txt"
    if vocab.is_file() and merges.is_file():
        return vocab, merges
    cached = _tiktoken_cached_gpt2()
    if cached is None:
        pytest.skip(f"GPT-2's ranks are not available offline: neither {SHARED_DATA} nor tiktoken's cache "
                    f"({tiktoken_cache_dir()}) holds them; tiktoken would download them "
                    "(python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" fills the cache)")
    return cached


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches and run directories go to a temp dir, never ~/.cache or ./runs."""
    cache = tmp_path_factory.getbasetemp() / "lab-cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))


def pytest_configure(config):
    # pytest-textual-snapshot writes its failure report into the working directory unless told
    # otherwise (its default is a relative "snapshot_report.html"): send it to the temp dir. It prints
    # the report's path when a snapshot differs.
    if getattr(config.option, "snapshot_report", None) == "snapshot_report.html":
        config.option.snapshot_report = str(Path(tempfile.gettempdir()) / "lab-snapshot-report.html")
    # Two cores: keep each test process from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
