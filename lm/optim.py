"""AdamW, the cosine learning-rate schedule with warmup, and gradient clipping."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), with bias correction.

    The CS336 form: eps is added to sqrt(v) before the bias correction is folded into
    the step size, so it agrees with ``torch.optim.AdamW`` to about 1e-7 over
    hundreds of steps (exactly when eps = 0).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, fused: bool | None = None):
        """``fused``: one fused kernel per update (torch's AdamW kernel, with eps rescaled so the
        arithmetic is the CS336 form above); ``None`` uses it for CUDA tensors only."""
        self.fused = fused
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0:
            raise ValueError(f"invalid eps {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._adamw_group(params, group)
        return loss

    def _adamw_group(self, params: list[torch.Tensor], group: dict) -> None:
        """One AdamW step for a group's parameters that have gradients (Muon uses it for its AdamW groups)."""
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        # Params of a group share their step count; bucket by it (and by device/dtype,
        # which the multi-tensor ops need) so one launch updates many tensors.
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            buckets.setdefault((self.state[p]["step"], p.device, p.dtype), []).append(p)
        for (t, _, _), ps in buckets.items():
            self._update(ps, t, group)

    def _update(self, params: list[torch.Tensor], t: int, group: dict) -> None:
        """One AdamW step for tensors at step t: m, v moments, bias correction, decoupled decay."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        fused = self.fused if self.fused is not None else params[0].device.type == "cuda"
        if fused:
            # torch's kernel computes p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps'); with
            # eps' = eps / sqrt(bc2) that is exactly lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps).
            # The step count goes in as a device tensor made by a fill kernel (no host sync).
            steps = [torch.full((), float(t), dtype=torch.float32, device=params[0].device)] * len(params)
            torch._fused_adamw_(params, grads, m, v, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
                                eps=eps / math.sqrt(1 - beta2**t), amsgrad=False, maximize=False)
            return
        torch._foreach_lerp_(m, grads, 1 - beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
        # Decoupled decay: shrink the weights directly, not through the gradient.
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, value=-step_size)


def cosine_lr(it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """CS336 schedule: linear warmup to max_lr, cosine to min_lr at cosine_cycle_iters, then min_lr."""
    if it < warmup_iters:
        return it / warmup_iters * max_lr
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return min_lr


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients so their global L2 norm is at most max_norm; return the pre-clip norm."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(grads)
    # At least fp32 (bf16 norms are coarse), but float64 grads keep a float64 norm.
    norm_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    total = torch.linalg.vector_norm(torch.stack([n.to(norm_dtype) for n in norms]))
    # A tensor scale (no .item()) keeps the GPU free of a host sync every step.
    scale = torch.clamp(max_norm / (total + eps), max=1.0)
    torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return total
