"""Muon on several processes (gloo on the CPU): DDP and FSDP2 match one process.

Under DDP every rank holds the same all-reduced gradient before ``optimizer.step()``,
so every rank computes the same Newton-Schulz update: nothing Muon-specific is
needed, and this checks it with real workers (``lab run --gpus 2 --device cpu``).
"""

from __future__ import annotations

import pytest

from test_distributed import _copy_run_at, assert_close_runs, launch, train_losses
from test_train_cli import experiment, run_in_process

MUON = {"name": "muon", "muon_lr": 0.02, "embed_lr": 0.05, "head_lr": 0.004, "scalar_lr": 0.01, "grad_clip": 0.5}


def muon_run_on_one_process(tmp_path):
    """The tiny Muon experiment (no dropout, so ranks cannot differ) and its one-process run, the reference."""
    exp = experiment(tmp_path, training={"steps": 20, "batch_size": 6, "log_every": 1},
                     model={"attn_dropout": 0.0, "resid_dropout": 0.0}, eval={"every": 10, "batches": 2},
                     checkpoint={"every": 10, "keep_last": 2}, optimizer=MUON)
    one = tmp_path / "one"
    assert run_in_process(exp, one, "training.device=\"cpu\"") == 0
    return exp, one


@pytest.mark.slow
def test_muon_under_ddp_on_2_processes_matches_one_process(tmp_path):
    exp, one = muon_run_on_one_process(tmp_path)
    two = tmp_path / "ddp2"
    res = launch(exp, two, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_close_runs(one, two)


@pytest.mark.slow
def test_muon_under_fsdp2_on_2_processes_matches_one_process(tmp_path):
    # FSDP2 shards every matrix; Muon all-gathers the update direction, orthogonalises the whole matrix
    # on each rank and keeps the rank's shard, so the run is the one-process run.
    exp, one = muon_run_on_one_process(tmp_path)
    fsdp = tmp_path / "fsdp2"
    res = launch(exp, fsdp, 2, "--set", 'training.parallel="fsdp"')
    assert res.returncode == 0, res.stderr[-3000:]
    assert_close_runs(one, fsdp)
    # Its sharded momentum is in the DCP checkpoint: step 10 resumed on ONE process continues the run.
    cont = tmp_path / "fsdp-on-1"
    _copy_run_at(fsdp, cont, 10)
    assert run_in_process(exp, cont, "training.device=\"cpu\"") == 0
    l1, lc = train_losses(one), train_losses(cont)
    assert max(abs(l1[s] - lc[s]) for s in range(11, 21)) <= 1e-5
