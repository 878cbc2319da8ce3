"""Batch sampling: random training windows with resumable state, fixed validation windows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.data.batches import BatchSampler, eval_batches, eval_positions, get_batch
from lm.errors import DataError


def _tokens(n: int, dtype=np.uint16) -> np.ndarray:
    return (np.arange(n) % 50_000).astype(dtype)


def test_windows_are_shifted_slices_at_reference_positions():
    tokens = _tokens(1000)
    sampler = BatchSampler(tokens, batch_size=8, context_length=16, seed=123)
    x, y = sampler.next_batch("cpu")
    # Independent reference: the same PCG64 stream, the same uniform draw over valid starts.
    starts = np.random.Generator(np.random.PCG64(123)).integers(0, 1000 - 16, size=8)
    for row, s in enumerate(starts):
        assert x[row].tolist() == tokens[s:s + 16].tolist()
        assert y[row].tolist() == tokens[s + 1:s + 17].tolist()
    assert x.dtype == y.dtype == torch.int64 and x.shape == (8, 16)
    assert x.is_contiguous() and y.is_contiguous()


@settings(max_examples=30, deadline=None)
@given(n_extra=st.integers(0, 5), batch=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_every_start_leaves_room_for_the_target(n_extra, batch, seed):
    T = 7
    tokens = np.arange(T + 1 + n_extra, dtype=np.int64)
    sampler = BatchSampler(tokens, batch, T, seed)
    for _ in range(5):
        x, y = sampler.next_numpy()
        assert x[:, 0].min() >= 0 and y[:, -1].max() <= len(tokens) - 1
        assert (y - x == 1).all()


def test_same_seed_same_batches_other_seed_other_batches():
    tokens = _tokens(5000)
    a, b, c = (BatchSampler(tokens, 4, 32, seed) for seed in (1, 1, 2))
    xa, xb, xc = a.next_batch()[0], b.next_batch()[0], c.next_batch()[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)


@pytest.mark.parametrize("roundtrip", ["none", "torch", "json"])
def test_state_dict_resumes_the_exact_batch_sequence(roundtrip):
    tokens = _tokens(10_000)
    uninterrupted = BatchSampler(tokens, 4, 32, seed=7)
    expected = [uninterrupted.next_batch()[0] for _ in range(10)]

    first = BatchSampler(tokens, 4, 32, seed=7)
    for _ in range(4):
        first.next_batch()
    state = first.state_dict()
    if roundtrip == "torch":  # the form a checkpoint stores it in
        buf = io.BytesIO()
        torch.save({"sampler": state}, buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=False)["sampler"]
    elif roundtrip == "json":
        state = json.loads(json.dumps(state))
    resumed = BatchSampler(tokens, 4, 32, seed=999)  # the seed is restored from the state
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 4
    for want in expected[4:]:
        assert torch.equal(resumed.next_batch()[0], want)


def test_sampler_reads_a_memmap(tmp_path):
    path = tmp_path / "tokens.bin"
    _tokens(4096).tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = BatchSampler(mm, 3, 10, seed=0).next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_too_few_tokens_is_a_data_error():
    with pytest.raises(DataError, match="training data has 16 tokens, fewer than context_length"):
        BatchSampler(_tokens(16), 2, 16, 0)
    with pytest.raises(DataError, match="validation data"):
        eval_batches(_tokens(10), 2, 16, 1)


def test_eval_windows_are_fixed_and_evenly_spread():
    N, T, B, K = 10_001, 100, 4, 5
    tokens = _tokens(N)
    first, second = eval_batches(tokens, B, T, K), eval_batches(tokens, B, T, K)
    assert len(first) == K
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    starts = [int(x[i, 0]) for x, _ in first for i in range(B)]
    assert starts[0] == 0 and starts[-1] == N - T - 1  # from the very start to the very end
    gaps = np.diff(starts)
    assert gaps.min() >= 0 and gaps.max() - gaps.min() <= 1  # even spacing (up to rounding)
    x, y = first[0]
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_eval_positions_overlap_when_the_set_is_small():
    pos = eval_positions(num_tokens=50, batch_size=4, context_length=10, num_batches=3)
    assert pos.shape == (3, 4) and pos.min() == 0 and pos.max() == 39


def test_cs336_get_batch_shapes_and_shift():
    np.random.seed(0)
    x, y = get_batch(np.arange(100), batch_size=5, context_length=8, device="cpu")
    assert x.shape == y.shape == (5, 8) and torch.equal(x + 1, y)
