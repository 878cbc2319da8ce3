"""Numerics written from scratch: softmax, attention, cross-entropy, SiLU.

Each is checked in the tests against torch's own op on the same inputs.
"""

from __future__ import annotations

import math

import einx
import torch
import torch.nn.functional as F

from lm.chunks import loss_chunk_rows


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax: subtracting the max keeps exp() from overflowing."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v; ``mask`` is boolean, True where attention is allowed.

    q: (..., Tq, d_k), k: (..., Tk, d_k), v: (..., Tk, d_v) -> (..., Tq, d_v).
    """
    scores = einx.dot("... q d, ... k d -> ... q k", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = softmax(scores, dim=-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p, training=True)
    return einx.dot("... q k, ... k d -> ... q d", probs, v)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over all leading dimensions.

    log-sum-exp with the max subtracted, so log and exp cancel instead of
    overflowing on huge logits.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # up to fp32, never down
    m = logits.amax(dim=-1, keepdim=True)
    shifted = logits - m
    log_z = torch.log(torch.exp(shifted).sum(dim=-1))  # (...,)
    target_logit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_z - target_logit).mean()


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean", chunk_rows: int | None = None) -> torch.Tensor:
    """``cross_entropy(h @ weight^T, targets)`` without ever holding the logits of the whole batch.

    h: (..., d), weight: (V, d), targets: (...) -> a scalar (mean or sum over all targets).
    Eagerly, the rows are taken ``chunk_rows`` at a time: each chunk's logits are made, reduced to
    its loss and, when gradients are wanted, turned straight into its share of the
    gradients of ``h`` and ``weight`` (softmax - one-hot is the gradient of the logits),
    then dropped. So the full (N, V) fp32 logits (3.3 GB at 16 x 1024 x 50304) and their
    gradient never exist; the backward only scales the stored gradients. Matmuls run in
    the autocast dtype when autocast is on (else in the inputs' dtype), the softmax in at
    least fp32, the weight gradient accumulates in at least fp32.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    d = h.shape[-1]
    h2 = h.reshape(-1, d)  # (..., d) -> (N, d)
    t = targets.reshape(-1)  # (...) -> (N,)
    if torch.compiler.is_compiling():
        # Inside a compiled region: the plain ops, which Inductor fuses (the upcast and the softmax run
        # in its kernels, so no fp32 copy of the logits is written; the bf16 logits are kept for the
        # backward). The chunked autograd.Function below gave zero gradients once compiled by
        # torch 2.11's Inductor on CUDA (correct on the CPU), so compiled code does not use it.
        logits = h2 @ weight.t()  # (N, V)
        return F.cross_entropy(logits.float(), t, reduction=reduction)
    if chunk_rows is None:
        chunk_rows = loss_chunk_rows(weight.shape[0])
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        compute = torch.get_autocast_dtype(device_type)
    else:
        compute = torch.promote_types(h.dtype, weight.dtype)
    grads = torch.is_grad_enabled()
    return _LinearCrossEntropy.apply(h2, weight, t, int(chunk_rows), compute, reduction == "mean",
                                     grads and h.requires_grad, grads and weight.requires_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """The chunked forward of :func:`linear_cross_entropy`; it computes the gradients as it goes."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk_rows, compute, mean, want_h, want_w):
        n = h.shape[0]
        acc = torch.promote_types(weight.dtype, torch.float32)  # fp32 at least, float64 stays float64
        scale = 1.0 / n if mean else 1.0
        with torch.autocast(device_type=h.device.type, enabled=False):
            w = weight.to(compute)
            loss = torch.zeros((), dtype=acc, device=h.device)
            grad_h = torch.empty_like(h) if want_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
            for start in range(0, n, chunk_rows):
                hc = h[start:start + chunk_rows].to(compute)  # (rows, d)
                tc = targets[start:start + chunk_rows].unsqueeze(-1)  # (rows,) -> (rows, 1)
                logits = (hc @ w.t()).to(acc)  # (rows, V), at least fp32
                target_logit = logits.gather(-1, tc)  # (rows, 1)
                m = logits.amax(dim=-1, keepdim=True)  # (rows, 1)
                p = logits.sub_(m).exp_()  # unnormalised softmax, in place: no second (rows, V) tensor
                del logits
                z = p.sum(dim=-1, keepdim=True)  # (rows, 1)
                loss = loss + (m + z.log() - target_logit).sum()  # log-sum-exp - target logit
                if want_h or want_w:
                    # d loss / d logits = (softmax - one_hot(target)) x the reduction's scale.
                    g = p.mul_(scale / z).scatter_add_(-1, tc, torch.full_like(z, -scale)).to(compute)
                    del p
                    if want_h:
                        grad_h[start:start + chunk_rows] = g @ w
                    if want_w:
                        grad_w += g.t() @ hc  # (not addmm_: FlopCounterMode does not count it)
        ctx.save_for_backward(grad_h if want_h else None, grad_w if want_w else None)
        ctx.dtypes = (h.dtype, weight.dtype)
        return (loss * scale).to(torch.promote_types(h.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_h is not None:
            grad_h = (grad_h * grad_loss).to(ctx.dtypes[0])
        if grad_w is not None:
            grad_w = (grad_w * grad_loss).to(ctx.dtypes[1])
        return grad_h, grad_w, None, None, None, None, None, None
