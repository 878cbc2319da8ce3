"""What the trainer asks of a parallel mode; the single-process behaviour is the default.

A mode (:mod:`~lm.distributed.ddp`, :mod:`~lm.distributed.fsdp`) wraps the
model for training, decides when gradients are synchronized, computes the
global gradient norm, averages host-visible numbers over ranks and says how
a checkpoint's model state is gathered. The trainer calls these hooks only
when the world has more than one process. Nothing here assumes a particular
optimizer: the optimizer is built by the trainer over whatever parameters the
wrapped model exposes (sharded DTensors under FSDP2).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from lm.distributed.env import DistEnv


class Parallel:
    """Base: plain data parallelism hooks shared by DDP and FSDP2."""

    mode = "none"
    shards_state = False
    """Whether parameters/optimizer state are sharded (checkpoints then go through DCP)."""
    compiles_model = False
    """Whether the mode compiles the model itself (then the trainer does not compile the whole of it)."""

    def __init__(self, env: DistEnv, device: torch.device, policy=None):
        self.env = env
        self.device = device
        self.policy = policy
        self.model: torch.nn.Module | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        self.model = model
        return model

    def autocast(self, policy):
        """The forward's precision context (FSDP2's mixed-precision policy replaces autocast)."""
        return policy.autocast()

    def micro_step(self, last: bool):
        return contextlib.nullcontext()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over ranks, on the device, without a host sync."""
        if self.env.world_size <= 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.env.world_size

    def sum_host(self, values: list[float]) -> list[float]:
        """A few host numbers summed over ranks (eval sums), on the control group."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.env.control is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.env.control)
        return t.tolist()

    def max_host(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        if self.env.control is not None:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.env.control)
        return float(t.item())

    def clip_grad_norm(self, params, max_norm: float) -> torch.Tensor:
        """Clip by the global norm and return it (gradients are already reduced: the local norm is global)."""
        from lm.optim import clip_grad_norm

        return clip_grad_norm(params, max_norm)

    def grad_norm(self, params) -> torch.Tensor:
        from lm.train.optimization import grad_norm

        return grad_norm(params)

    def full_state_dict(self) -> dict:
        return self.model.state_dict()
