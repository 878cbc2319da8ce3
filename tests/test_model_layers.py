"""Each layer of lm.model against torch's op or a hand computation, and their initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.model import Embedding, Linear, RMSNorm, RotaryPositionalEmbedding, SiLUMLP, SwiGLU

D = torch.float64


def _truncated_std(sigma: float, cut: float = 3.0) -> float:
    """Standard deviation of N(0, sigma^2) truncated to [-cut sigma, cut sigma]."""
    pdf = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return sigma * math.sqrt(1 - 2 * cut * pdf / mass)


def test_linear_matches_f_linear():
    layer = Linear(7, 5, dtype=D)
    x = torch.randn(2, 3, 7, dtype=D)
    assert layer.weight.shape == (5, 7)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-12, atol=1e-12)


def test_linear_init_is_truncated_normal():
    torch.manual_seed(0)
    d_in, d_out = 300, 200
    w = Linear(d_in, d_out).weight.detach()
    sigma = math.sqrt(2 / (d_in + d_out))
    assert w.abs().max() <= 3 * sigma + 1e-7
    assert w.abs().max() > 2.5 * sigma  # really cut at 3 sigma, not narrower
    assert w.mean().abs() < 0.05 * sigma
    assert w.std().item() == pytest.approx(_truncated_std(sigma), rel=0.02)


def test_embedding_matches_f_embedding_and_init():
    torch.manual_seed(0)
    layer = Embedding(1000, 64)
    w = layer.weight.detach()
    ids = torch.randint(0, 1000, (3, 4))
    torch.testing.assert_close(layer(ids), F.embedding(ids, layer.weight))
    assert w.abs().max() <= 3.0
    assert w.abs().max() > 2.5
    assert w.std().item() == pytest.approx(_truncated_std(1.0), rel=0.02)


def test_rmsnorm_matches_torch_and_hand_float64():
    g = torch.Generator().manual_seed(0)
    layer = RMSNorm(6, eps=1e-5, dtype=D)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=g, dtype=D))
    x = torch.randn(2, 3, 6, generator=g, dtype=D)
    hand = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * layer.weight
    out = layer(x)
    assert out.dtype == D
    torch.testing.assert_close(out, hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, F.rms_norm(x, (6,), layer.weight, eps=1e-5), rtol=1e-12, atol=1e-12)


def test_rmsnorm_bf16_input_computed_in_fp32():
    x = torch.randn(4, 32) * 100
    layer = RMSNorm(32)
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = F.rms_norm(x.bfloat16().float(), (32,), eps=1e-5)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_swiglu_and_silu_mlp_match_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=D)
    sw = SwiGLU(8, 12, dtype=D)
    w1, w2, w3 = sw.w1.weight, sw.w2.weight, sw.w3.weight
    torch.testing.assert_close(sw(x), F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2))
    mlp = SiLUMLP(8, 12, dtype=D)
    assert not hasattr(mlp, "w3")
    torch.testing.assert_close(mlp(x), F.linear(F.silu(F.linear(x, mlp.w1.weight)), mlp.w2.weight))


def test_rope_hand_computed_d4():
    """d=4, theta=10000: pair 0 turns by p radians, pair 1 by p * 10000^(-1/2) = p / 100."""
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=4, max_seq_len=8)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3, dtype=D)  # the same vector at positions 0, 1, 2
    out = rope(x, torch.arange(3))

    def rot(a, b, angle):
        return [a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)]

    expected = torch.tensor([rot(1, 2, p) + rot(3, 4, p / 100) for p in range(3)], dtype=D)
    # Position 0 is the identity.
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    # The model keeps float32 cos/sin tables (MPS has no float64), hence 1e-6.
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert out[1, 0].item() == pytest.approx(math.cos(1) - 2 * math.sin(1), abs=1e-6)  # -1.14264


def test_rope_positions_index_the_table():
    rope = RotaryPositionalEmbedding(theta=100.0, d_k=6, max_seq_len=16)
    x = torch.randn(2, 4, 6, dtype=D)
    pos = torch.tensor([9, 0, 3, 15])
    out = rope(x, pos)
    for t, p in enumerate(pos.tolist()):
        single = rope(x[:, t:t + 1], torch.tensor([p]))
        torch.testing.assert_close(out[:, t:t + 1], single)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 60), n=st.integers(0, 60), shift=st.integers(0, 3), seed=st.integers(0, 1000))
def test_rope_preserves_norms_and_depends_on_relative_position(m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryPositionalEmbedding(theta=10000.0, d_k=8, max_seq_len=64)
    q, k = torch.randn(1, 8, generator=g, dtype=D), torch.randn(1, 8, generator=g, dtype=D)
    qm = rope(q, torch.tensor([m]))
    torch.testing.assert_close(qm.norm(), q.norm(), rtol=1e-6, atol=1e-6)
    a = (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()
    b = (rope(q, torch.tensor([m + shift])) * rope(k, torch.tensor([n + shift]))).sum()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
