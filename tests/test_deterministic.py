"""training.deterministic: torch's deterministic algorithms for the run, off again after it, and an
op that has no deterministic implementation stopping the run with a LabError that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lm.config.loader import load_experiment
from lm.errors import LabError
from lm.runs import RunDir
from lm.train import run_experiment
from lm.train.failures import explain
from test_train_cli import experiment, final_weights


@pytest.fixture(autouse=True)
def determinism_restored():
    """A failing test must not leave the process-wide switch on for the tests after it."""
    yield
    torch.use_deterministic_algorithms(False)


def train(exp: Path, run_dir: Path, *overrides: str) -> list[bool]:
    """Run ``exp``; return torch's determinism switch as seen at every train record."""
    seen = []

    def progress(kind, rec):
        if kind == "train":
            seen.append(torch.are_deterministic_algorithms_enabled())

    assert run_experiment(load_experiment(exp, list(overrides)), run_dir=run_dir, progress=progress) == 0
    return seen


def start_event(run_dir: Path) -> dict:
    return next(r for r in RunDir(run_dir).events() if r["event"] == "start")


def test_a_deterministic_run_turns_torch_determinism_on_and_the_next_run_turns_it_off(tmp_path):
    exp = experiment(tmp_path, training={"steps": 12, "batch_size": 4, "log_every": 4}, eval={"every": 0})
    assert set(train(exp, tmp_path / "det", "training.deterministic=true")) == {True}
    start = start_event(tmp_path / "det")
    assert start["deterministic"] is True and "deterministic)" in start["message"]

    assert set(train(exp, tmp_path / "plain")) == {False}  # a process-wide switch must not leak into this run
    assert start_event(tmp_path / "plain")["deterministic"] is False
    assert not torch.are_deterministic_algorithms_enabled()
    # On the CPU both are bitwise repeatable: the switch changes which kernels may run, never the math.
    det, plain = final_weights(tmp_path / "det"), final_weights(tmp_path / "plain")
    assert all(torch.equal(det[k], plain[k]) for k in det)


def test_an_op_without_a_deterministic_implementation_stops_the_run_naming_it(tmp_path, monkeypatch):
    import lm.train.trainer as trainer_module

    from torch._prims_common import alert_not_deterministic

    real_clip = trainer_module.clip_grad_norm

    def clip_then_alert(*args, **kwargs):
        alert_not_deterministic("scatter_fancy_cuda")  # torch's own alert, as its ops raise it
        return real_clip(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "clip_grad_norm", clip_then_alert)
    exp = experiment(tmp_path, training={"steps": 5, "batch_size": 4}, eval={"every": 0})
    cfg = load_experiment(exp, ["training.deterministic=true"])
    run_dir = tmp_path / "run"
    with pytest.raises(LabError) as info:
        run_experiment(cfg, run_dir=run_dir)
    msg = str(info.value)
    assert "scatter_fancy_cuda" in msg and "training.deterministic = false" in msg and "Traceback" not in msg
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 2 and "scatter_fancy_cuda" in status["message"]


def test_other_errors_are_not_mistaken_for_a_determinism_failure(tmp_path):
    cfg = load_experiment(experiment(tmp_path), [])
    assert explain(RuntimeError("shape mismatch in matmul"), cfg, "cpu", tmp_path) is None
    assert explain(ValueError("scatter does not have a deterministic implementation"), cfg, "cpu", tmp_path) is None
