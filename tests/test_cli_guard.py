"""The command guard of lab/cli.py: exit codes, and the compile-worker release after every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lm.compile_workers
from lab import cli
from lm.errors import LabError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def releases(monkeypatch):
    calls = []
    monkeypatch.setattr(lm.compile_workers, "release_compile_workers", lambda: calls.append(1))
    return calls


def _fails_with(exc):
    def fn():
        raise exc
    return fn


@pytest.mark.parametrize("fn, code", [
    (lambda: 3, 3),
    (lambda: None, 0),
    (_fails_with(LabError("bad key")), 2),
    (_fails_with(KeyboardInterrupt()), 130),
])
def test_every_outcome_releases_the_compile_workers_once(releases, fn, code):
    assert cli._guard(fn) == code
    assert releases == [1]


def test_an_unexpected_error_still_releases_and_propagates(releases):
    with pytest.raises(ZeroDivisionError):
        cli._guard(lambda: 1 / 0)
    assert releases == [1]


def test_the_release_module_imports_no_torch():
    """Light commands (`lab runs`, `lab config docs`) go through the guard too and must stay torch-free."""
    code = "import sys, lm.compile_workers; lm.compile_workers.release_compile_workers(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
