"""Numerics written from scratch: softmax, attention, cross-entropy, SiLU.

Each is checked in the tests against torch's own op on the same inputs.
"""

from __future__ import annotations

import math

import einx
import torch
import torch.nn.functional as F


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
