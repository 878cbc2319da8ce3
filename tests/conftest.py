"""Shared fixtures. Tests never write into the working directory: use tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data holds real corpora on the developers' machines and CI; a user's
# clone has none, so tests that need it skip with a reason.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not available: {SHARED_DATA} does not exist (only on the lab's dev machines)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches and run directories go to a temp dir, never ~/.cache or ./runs."""
    cache = tmp_path_factory.getbasetemp() / "lab-cache"
    monkeypatch.setenv("LAB_CACHE_DIR", str(cache))


def pytest_configure(config):
    # Two cores: keep each test process from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
