"""lm.functional against torch's own ops on the same inputs (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lm import functional as LF

D = torch.float64


def test_silu_matches_torch():
    x = torch.linspace(-30, 30, 601, dtype=D)
    torch.testing.assert_close(LF.silu(x), F.silu(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_matches_torch(dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=g, dtype=D) * 4
    torch.testing.assert_close(LF.softmax(x, dim=dim), torch.softmax(x, dim=dim), rtol=1e-12, atol=1e-12)


def test_softmax_huge_values_do_not_overflow():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [1e30, 0.0, 0.0]], dtype=torch.float32)
    out = LF.softmax(x, dim=-1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.softmax(x, dim=-1))


def _random_mask(shape, generator) -> torch.Tensor:
    mask = torch.rand(shape, generator=generator) > 0.4
    mask[..., 0] = True  # every query sees at least one key, else both sides are NaN
    return mask


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2-D", "3-D", "4-D"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_scaled_dot_product_attention_matches_torch(lead, masked):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(*lead, 5, 8, generator=g, dtype=D)
    k = torch.randn(*lead, 6, 8, generator=g, dtype=D)
    v = torch.randn(*lead, 6, 4, generator=g, dtype=D)  # d_v differs from d_k
    mask = _random_mask((*lead, 5, 6), g) if masked else None
    ours = LF.scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.shape == (*lead, 5, 4)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_scaled_dot_product_attention_broadcast_causal_mask():
    """A (T, T) causal mask broadcasts over batch and heads, like torch's is_causal."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g, dtype=D) for _ in range(3))
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(LF.scaled_dot_product_attention(q, k, v, causal), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["unit", "huge-1e4"])
@pytest.mark.parametrize("lead", [(6,), (2, 3), (2, 2, 3)], ids=["1-lead", "2-lead", "3-lead"])
def test_cross_entropy_matches_torch(scale, lead):
    g = torch.Generator().manual_seed(3)
    vocab = 11
    logits = torch.randn(*lead, vocab, generator=g, dtype=D) * scale
    targets = torch.randint(0, vocab, lead, generator=g)
    ours = LF.cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    assert ours.shape == ()
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_cross_entropy_float32_huge_logits_finite():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype=torch.float32)
    targets = torch.tensor([2, 0])
    ours = LF.cross_entropy(logits, targets)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets))
    # Target logit 2e4 below the max in row 0, 1e4 below (with two maxima) in row 1.
    assert ours.item() == pytest.approx((2e4 + (1e4 + math.log(2))) / 2, rel=1e-6)


def test_cross_entropy_keeps_float64_and_upcasts_bf16():
    logits = torch.randn(4, 9, dtype=D)
    targets = torch.randint(0, 9, (4,))
    assert LF.cross_entropy(logits, targets).dtype == torch.float64
    assert LF.cross_entropy(logits.bfloat16(), targets).dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**16))
def test_cross_entropy_invariant_to_shifting_logits(shift, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 7, generator=g, dtype=D)
    targets = torch.randint(0, 7, (5,), generator=g)
    torch.testing.assert_close(LF.cross_entropy(logits + shift, targets), LF.cross_entropy(logits, targets),
                               rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_softmax_is_a_distribution(seed, scale):
    g = torch.Generator().manual_seed(seed)
    p = LF.softmax(torch.randn(4, 9, generator=g, dtype=D) * scale, dim=-1)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=D))
