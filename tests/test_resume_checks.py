"""What resuming checks before it loads: that the checkpoint fits the model, and which RNG state continues."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm.errors import CheckpointError
from lm.train.run_checkpoints import check_resumable_model, rng_to_continue


def _model(width: int, layers: int) -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def test_a_fitting_state_dict_passes():
    model = _model(4, 2)
    check_resumable_model(model, _model(4, 2).state_dict(), Path("ckpt.pt"))


def test_a_mismatch_names_the_first_three_differences_and_counts_the_rest():
    model = _model(4, 5)
    with pytest.raises(CheckpointError) as err:
        check_resumable_model(model, _model(6, 5).state_dict(), Path("/runs/a/latest.pt"))
    message = str(err.value)
    assert message.startswith("cannot resume from /runs/a/latest.pt: it was written for a different model")
    # 5 layers x (weight, bias) = 10 shape mismatches: three shown, "7 more" for the rest.
    assert "0.weight" in message and "and 7 more" in message
    assert "4.bias" not in message
    assert "config.toml" in message


def test_each_rank_continues_from_its_own_rng_when_the_world_size_is_unchanged():
    ckpt = {"rng": "rank0-or-single", "rng_ranks": ["r0", "r1", "r2"]}
    assert rng_to_continue(ckpt, rank=2, world_size=3, parallel=True) == "r2"
    # Another world size (or a single-process resume) cannot map ranks: everyone takes the saved one.
    assert rng_to_continue(ckpt, rank=1, world_size=2, parallel=True) == "rank0-or-single"
    assert rng_to_continue(ckpt, rank=0, world_size=1, parallel=False) == "rank0-or-single"
    assert rng_to_continue({}, rank=0, world_size=1, parallel=False) is None
