"""AdamW against torch.optim.AdamW, the cosine schedule at its boundaries, clipping against torch."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.optim import AdamW, clip_grad_norm, cosine_lr

D = torch.float64


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 3, 4)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=D)) for s in shapes]


def _run(opt_cls, steps: int, **kw) -> list[torch.Tensor]:
    """Take ``steps`` steps on fixed parameters with a fixed gradient sequence; return the weights."""
    params = _params(0)
    opt = opt_cls(params, **kw)
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in params:
            # Gradients of varying scale, so the second moment matters.
            p.grad = torch.randn(p.shape, generator=g, dtype=D) * (1 + step % 7)
        if step == steps // 2:
            for group in opt.param_groups:  # a schedule changes lr mid-run
                group["lr"] *= 0.5
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_adamw_matches_torch_over_many_steps(eps):
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=eps, weight_decay=0.1)
    ours = _run(AdamW, 300, **kw)
    ref = _run(torch.optim.AdamW, 300, **kw)
    # With eps=0 the formulas are identical; with eps>0 CS336 adds eps to sqrt(v) before the bias
    # correction where torch adds it after, a difference of order eps per step.
    tol = 1e-12 if eps == 0 else 1e-7
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    start = _params(0)
    assert all((a - s).abs().max() > 0.1 for a, s in zip(ours, start))  # it really moved


def test_adamw_skips_params_without_grad_and_groups_have_own_lr():
    a, b = torch.nn.Parameter(torch.ones(3, dtype=D)), torch.nn.Parameter(torch.ones(3, dtype=D))
    opt = AdamW([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.0}], weight_decay=0.0)
    a.grad = torch.ones(3, dtype=D)
    opt.step()
    # First Adam step moves by lr * sign(grad) (m/sqrt(v) = 1 after bias correction).
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9, dtype=D), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.detach(), torch.ones(3, dtype=D))
    assert b not in opt.state or not opt.state[b]


def test_adamw_rejects_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for kw in (dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1.0)):
        with pytest.raises(ValueError):
            AdamW(p, **kw)


def _cosine_by_hand(it, hi, lo, warm, cycle):
    if it < warm:
        return hi * it / warm
    if it > cycle:
        return lo
    return lo + (hi - lo) * (1 + math.cos(math.pi * (it - warm) / (cycle - warm))) / 2


def test_cosine_schedule_boundaries():
    hi, lo, warm, cycle = 1.0, 0.1, 7, 21
    assert cosine_lr(0, hi, lo, warm, cycle) == 0.0
    assert cosine_lr(3, hi, lo, warm, cycle) == pytest.approx(3 / 7)
    assert cosine_lr(warm, hi, lo, warm, cycle) == pytest.approx(hi)  # end of warmup: the peak
    assert cosine_lr(14, hi, lo, warm, cycle) == pytest.approx((hi + lo) / 2)  # half way down
    assert cosine_lr(cycle, hi, lo, warm, cycle) == pytest.approx(lo)  # end of cycle: the floor
    assert cosine_lr(cycle + 1, hi, lo, warm, cycle) == lo
    assert cosine_lr(10 * cycle, hi, lo, warm, cycle) == lo
    for it in range(25):
        assert cosine_lr(it, hi, lo, warm, cycle) == pytest.approx(_cosine_by_hand(it, hi, lo, warm, cycle))


def test_cosine_schedule_without_warmup_and_degenerate_cycle():
    assert cosine_lr(0, 2.0, 0.2, 0, 10) == pytest.approx(2.0)
    assert cosine_lr(5, 2.0, 0.2, 5, 5) == pytest.approx(2.0)  # cycle == warmup: peak, then floor
    assert cosine_lr(6, 2.0, 0.2, 5, 5) == 0.2


@settings(max_examples=50, deadline=None)
@given(it=st.integers(0, 500), warm=st.integers(1, 50), extra=st.integers(1, 300))
def test_cosine_schedule_stays_between_zero_and_peak(it, warm, extra):
    lr = cosine_lr(it, 1e-3, 1e-4, warm, warm + extra)
    assert 0.0 <= lr <= 1e-3 + 1e-15
    if it >= warm:
        assert lr >= 1e-4 - 1e-15


def _grads(seed: int, scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=D)) for s in [(4, 5), (3,), (2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=D) * scale
    return params


@pytest.mark.parametrize("scale", [10.0, 1e-3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(scale):
    ours, ref = _grads(0, scale), _grads(0, scale)
    frozen = torch.nn.Parameter(torch.zeros(2, dtype=D))  # no grad: ignored
    total = clip_grad_norm(ours + [frozen], max_norm=1.0)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, max_norm=1.0)
    torch.testing.assert_close(total, ref_total, rtol=1e-12, atol=1e-12)  # the pre-clip norm
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]))
    assert after <= 1.0 + 1e-9
    if scale < 1:
        torch.testing.assert_close(after, total)  # below the limit nothing changes


def test_clip_grad_norm_with_no_grads_returns_zero():
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0
