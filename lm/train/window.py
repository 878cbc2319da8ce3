"""Per-step loss and gradient norm kept on the device between log steps.

Reading a loss with ``.item()`` every step would stall the GPU queue once per
step. Instead each step writes its loss and pre-clip gradient norm into a
small device buffer; the host reads the whole buffer once per log step (or
before an eval or a checkpoint), which is also when non-finite values are
caught, naming the exact step where they first appeared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WindowStats:
    steps: list[int]
    losses: list[float]
    grad_norms: list[float]
    lrs: list[float]

    def first_non_finite(self) -> int | None:
        """Index of the first step whose loss or gradient norm is NaN/inf, or None."""
        for i, (loss, gn) in enumerate(zip(self.losses, self.grad_norms)):
            if not (math.isfinite(loss) and math.isfinite(gn)):
                return i
        return None

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses)

    def mean_grad_norm(self) -> float:
        return sum(self.grad_norms) / len(self.grad_norms)


class StepWindow:
    """A device-side buffer of (loss, grad norm) for the steps since the last read."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = max(1, int(capacity))
        self.values = torch.zeros(self.capacity, 2, dtype=torch.float32, device=device)
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Record a step without synchronizing (the copies are queued on the device)."""
        if len(self.steps) == self.capacity:  # a reader fell behind: grow rather than lose steps
            self.values = torch.cat([self.values, torch.zeros_like(self.values)])
            self.capacity *= 2
        i = len(self.steps)
        self.values[i, 0] = loss.detach().float()
        self.values[i, 1] = grad_norm.detach().float()
        self.steps.append(step)
        self.lrs.append(lr)

    def peek(self) -> WindowStats:
        """Copy the buffered steps to the host (one sync) without clearing them."""
        n = len(self.steps)
        host = self.values[:n].cpu().tolist() if n else []
        return WindowStats(list(self.steps), [r[0] for r in host], [r[1] for r in host], list(self.lrs))

    def clear(self) -> None:
        self.steps.clear()
        self.lrs.clear()
