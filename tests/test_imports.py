"""Import hygiene: ``lm`` works without the UI libraries, ``lab --help`` without torch.

Each check runs in a fresh interpreter so that modules the test process has
already imported cannot hide a missing or unwanted import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Blocks the UI libraries (and their submodules) as if they were not installed, records every
# attempt to import them, and imports lm and every module under it.
IMPORT_ALL_LM = """
import importlib, json, pkgutil, sys, traceback

BLOCKED = {"textual", "rich", "plotext"}
attempts = []

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked for this test", name=name)
        return None

sys.meta_path.insert(0, Block())
import lm
failures, names = {}, ["lm"]

def failed(name):
    failures[name] = traceback.format_exc(limit=3)

for info in pkgutil.walk_packages(lm.__path__, prefix="lm.", onerror=failed):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except BaseException:
        failed(info.name)
print(json.dumps({"modules": names, "failures": failures, "attempts": sorted(set(attempts))}))
"""


@pytest.mark.slow
def test_every_lm_module_imports_without_ui_libraries():
    """Also fails if an lm module merely tries to import one (lm never imports them)."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALL_LM], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "lm.model" in result["modules"] and "lm.cs336" in result["modules"]
    assert result["failures"] == {}, "\n".join(f"{k}:\n{v}" for k, v in result["failures"].items())
    assert result["attempts"] == []


WRAPPED_HELP = """
import json, runpy, sys
sys.argv = ["lab", "--help"]
try:
    runpy.run_module("lab", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "numpy", "einx"})}))
"""


def test_lab_help_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", WRAPPED_HELP], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None)
    assert "model" in proc.stdout  # the model command is registered
    assert result["heavy"] == []
