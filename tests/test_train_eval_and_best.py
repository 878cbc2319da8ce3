"""Validation runs without dropout, best.pt follows the best validation loss, checkpoints are atomic,
metrics lines are flushed one by one. Each test fails on one deliberate break (issue 17)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from test_train import CPU, VOCAB, make, tiny_cfg, tokens

from lm.checkpoint_file import atomic_torch_save, torch_load
from lm.model import TransformerLM
from lm.runs import RunDir
from lm.train.run_checkpoints import CheckpointDir
from lm.train.evaluate import evaluate
from lm.train.recorder import RunRecorder


def test_evaluate_runs_without_dropout_and_restores_training_mode():
    """With dropout 0.5, evaluation equals the model in eval mode; evaluating twice gives the same loss."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_cfg().model, attn_dropout=0.5, resid_dropout=0.5)
    model = TransformerLM(cfg)
    x = torch.randint(0, VOCAB, (4, 16))
    y = torch.randint(0, VOCAB, (4, 16))
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1)).item()
    model.train()
    first = evaluate(model, [(x, y)], CPU).loss
    second = evaluate(model, [(x, y)], CPU).loss
    assert first == second
    assert math.isclose(first, expected, rel_tol=1e-6)
    assert model.training  # handed back in the mode it came in
    model.eval()
    evaluate(model, [(x, y)], CPU)
    assert not model.training


def test_best_stays_at_the_lowest_validation_loss_when_it_goes_up(tmp_path):
    """Validation text from another pattern than training: the more the model learns, the worse it does on it.

    best.pt must stay at the checkpoint of the lowest validation loss, not follow latest.pt.
    """
    rng = np.random.default_rng(3)
    other = rng.integers(0, VOCAB, 1200).astype(np.uint16)  # no pattern shared with the training tokens
    cfg = tiny_cfg(steps=24)
    cfg.eval = dataclasses.replace(cfg.eval, every=4, batches=2)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every=4, keep_last=1)
    from lm.train import Trainer

    trainer = Trainer(cfg, tmp_path, train_tokens=tokens(6000, 0), val_tokens=other, val_bytes=len(other) * 2,
                      policy=CPU)
    assert trainer.run() == 0
    rd = RunDir(tmp_path)
    evals = rd.metrics("eval")
    losses = [r["val_loss"] for r in evals]
    best_step = evals[losses.index(min(losses))]["step"]
    assert best_step < evals[-1]["step"] and losses[-1] > min(losses)  # it did go up after its best
    assert torch_load(rd.checkpoint("best"))["iteration"] == best_step
    assert torch_load(rd.checkpoint("latest"))["iteration"] == 24
    assert rd.status().best_val_loss == min(losses)
    best_events = [e["step"] for e in rd.events() if e["event"] == "checkpoint" and e.get("best")]
    assert best_events[-1] == best_step


class _FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("serialization failed half way")


def test_a_checkpoint_write_that_fails_half_way_leaves_the_previous_one(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    good = {"iteration": 8, "model": {"w": torch.arange(10_000.0)}}
    ckpts.save(good, 8, keep_step_file=True, best=True)
    # the tensor is written first, then pickling fails: a direct write would leave half a file
    bad = {"iteration": 16, "model": {"w": torch.zeros(100_000)}, "extra": _FailsToPickle()}
    with pytest.raises(RuntimeError, match="half way"):
        ckpts.save(bad, 16, keep_step_file=True, best=True)
    with pytest.raises(RuntimeError, match="half way"):
        ckpts.save(bad, 16, keep_step_file=False, best=False)  # straight over latest.pt
    for name in ("latest.pt", "best.pt", "step_000008.pt"):
        assert torch_load(tmp_path / "checkpoints" / name)["iteration"] == 8
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {n for n in names if n.endswith(".pt")} == {"best.pt", "latest.pt", "step_000008.pt"}
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]  # no temp file left
    target = tmp_path / "plain.pt"
    atomic_torch_save(good, target)
    with pytest.raises(RuntimeError, match="half way"):
        atomic_torch_save(bad, target)
    assert torch.equal(torch_load(target)["model"]["w"], good["model"]["w"])
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["plain.pt"]  # no temp file left


def test_each_metrics_and_events_line_is_on_disk_as_soon_as_it_is_written(tmp_path):
    """A reader (the console, lab runs, the queue) sees every record while the run is still writing."""
    rec = RunRecorder(tmp_path, total_steps=10)
    for step in (1, 2, 3):
        rec.metric({"type": "train", "step": step, "loss": 1.0 / step})
        rec.event("eval", step, 0.1 * step, f"step {step}")
        with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:  # another file object: the bytes on disk
            lines = f.read().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, step + 1))
        with open(tmp_path / "events.jsonl", encoding="utf-8") as f:
            assert json.loads(f.read().splitlines()[-1])["step"] == step
