"""DistributedDataParallel: every rank holds the whole model, gradients are averaged by all-reduce.

DDP divides the summed gradients by the world size, and each rank's loss is
the mean over its equal slice of the global batch, so the averaged gradient
is exactly the gradient of the global batch's mean loss: the same step a
single process takes. Clipping after the all-reduce therefore already clips
by the global norm. Non-final micro-steps of gradient accumulation run under
``no_sync()`` (gradients accumulate locally; one all-reduce per optimizer step).
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from lm.distributed.parallel import Parallel


class DDPParallel(Parallel):
    mode = "ddp"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        self.model = model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # The only buffers (RoPE tables) are the same on every rank: no need to broadcast them each forward.
        import inspect

        params = inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
            else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(model, device_ids=ids, **no_buffer_sync)
        return self.ddp

    def micro_step(self, last: bool):
        """Gradient sync only on the last micro-step of an optimizer step."""
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def full_state_dict(self) -> dict:
        """The whole model, on every rank (rank 0 writes it)."""
        return self.model.state_dict()
