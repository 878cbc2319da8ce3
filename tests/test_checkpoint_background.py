"""Checkpoints written in the background: one write at a time, its failure reaches the training thread,
and the snapshot is a copy that later training cannot change."""

import threading

import numpy as np
import pytest
import torch

from lm.errors import CheckpointError
from lm.train.run_checkpoints import BackgroundWrite, cpu_snapshot, tensor_bytes


def test_a_second_write_waits_for_the_first_and_results_come_back_in_order():
    w = BackgroundWrite()
    gate = threading.Event()
    order = []

    def first():
        gate.wait(5)
        order.append(1)
        return "one"

    assert w.submit(first, tag="a") is None
    assert not w.done()
    gate.set()
    finished = w.submit(lambda: order.append(2) or "two", tag="b")  # settles the first before starting
    assert finished == ("one", "a")
    assert w.settle() == ("two", "b")
    assert order == [1, 2] and w.done() and w.settle() is None


def test_a_failed_write_raises_on_the_thread_that_settles_it():
    w = BackgroundWrite()

    def fail():
        raise CheckpointError("cannot write checkpoint x: the disk is full")

    w.submit(fail)
    with pytest.raises(CheckpointError, match="disk is full"):
        w.settle()
    assert w.settle() is None  # reported once


def test_snapshot_is_a_copy():
    p = torch.ones(3)
    obj = {"model": {"w": p}, "rng": {"numpy": np.arange(3)}, "opt": [(p, 2)], "step": 7}
    snap = cpu_snapshot(obj)
    p.add_(1)
    obj["rng"]["numpy"][0] = 99
    assert torch.equal(snap["model"]["w"], torch.ones(3)) and snap["opt"][0][0].sum() == 3
    assert snap["rng"]["numpy"][0] == 0 and snap["step"] == 7
    assert tensor_bytes(obj) == 2 * 3 * 4


def test_a_new_step_file_never_makes_more_than_keep_last_even_mid_write(tmp_path, monkeypatch):
    # A kill -9 while a step file is being written (background writes make that window wide) must not
    # leave keep_last + 1 step files: room is made first; latest.pt and best.pt are links of their own.
    import lm.train.run_checkpoints as rc

    ckpts = rc.CheckpointDir(tmp_path, keep_last=2)
    for step in (1, 2):
        ckpts.save({"iteration": step, "model": {"w": torch.zeros(1)}}, step, keep_step_file=True, best=step == 1)
    seen = []
    real = rc.atomic_torch_save

    def watching(obj, path):
        seen.append(len(ckpts.step_files()))
        return real(obj, path)

    monkeypatch.setattr(rc, "atomic_torch_save", watching)
    ckpts.save({"iteration": 3, "model": {"w": torch.ones(1)}}, 3, keep_step_file=True, best=False)
    assert seen == [1] and [s for s, _ in ckpts.step_files()] == [2, 3]
    assert rc.torch_load(ckpts.best)["iteration"] == 1  # step 1's file is gone, best.pt still holds it
    assert rc.torch_load(ckpts.latest)["iteration"] == 3
