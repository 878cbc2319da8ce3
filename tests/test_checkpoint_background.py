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
