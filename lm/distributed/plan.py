"""Which parallel mode a run uses (``training.parallel``) and building it.

- ``none``: one process (more than one is a config error: they would train
  the same thing N times).
- ``ddp``: every rank holds the whole model (:mod:`lm.distributed.ddp`).
- ``fsdp``: parameters, gradients and optimizer state sharded (:mod:`lm.distributed.fsdp`).
- ``auto``: DDP when the model, its gradients and its optimizer state fit one
  device by the calculator's memory model (with the activations of the
  per-rank batch), FSDP2 otherwise; ``none`` in a world of one.
"""

from __future__ import annotations

import torch

from lm.distributed.env import DistEnv
from lm.errors import ConfigError


def ddp_fits(cfg, device_name: str, world_size: int) -> tuple[bool, str]:
    """Whether the calculator says a DDP replica (weights, grads + buckets, optimizer, activations) fits one device."""
    from lm.calc.devices import device_for_torch_name
    from lm.calc.distributed import estimate_distributed

    dev, _ = device_for_torch_name(device_name)
    est = estimate_distributed(cfg, dev, world_size, "ddp")
    gib = 2 ** 30
    why = f"a full replica needs {est.total_bytes / gib:.1f} GiB of {est.capacity_bytes / gib:.1f} GiB on {dev.title}"
    return est.fits, why


def choose_mode(cfg, env: DistEnv, device_name: str) -> tuple[str, str]:
    """(mode, reason) for ``training.parallel`` in this world."""
    want = cfg.training.parallel
    if env.world_size <= 1:
        if want in ("ddp", "fsdp") and env.backend:
            return want, f"training.parallel = '{want}' (one process)"
        return "none", "one process"
    if want == "none":
        raise ConfigError([f"training.parallel = 'none' but {env.world_size} processes were started; "
                           "use 'auto', 'ddp' or 'fsdp', or run one process"])
    if want in ("ddp", "fsdp"):
        return want, f"training.parallel = '{want}'"
    fits, why = ddp_fits(cfg, device_name, env.world_size)
    return ("ddp", f"auto: {why}, so DDP") if fits else ("fsdp", f"auto: {why}, so FSDP2 shards it")


def build_parallel(mode: str, env: DistEnv, device: torch.device, policy):
    if mode == "ddp":
        from lm.distributed.ddp import DDPParallel

        return DDPParallel(env, device, policy)
    if mode == "fsdp":
        from lm.distributed.fsdp import FSDPParallel

        return FSDPParallel(env, device, policy)
    return None
