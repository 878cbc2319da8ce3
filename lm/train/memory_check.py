"""Refuse, before anything is allocated, a training step that cannot fit the device; explain an OOM.

A config with ``training.batch_size = 10**7`` or ``model.d_model = 2**20`` used to
die deep inside the allocator with a traceback (or take the machine down
swapping). :func:`check_fits` asks the calculator (:mod:`lm.calc`) what one
training step needs and refuses when that is more than ``REFUSE_FACTOR`` times
what the device holds: the calculator matches autograd's saved tensors closely,
and the margin keeps a config that might fit (a fused kernel saves more than it
models) from ever being refused. :func:`oom_error` turns an out-of-memory error
that happens anyway into the same kind of message.
"""

from __future__ import annotations

import torch

from lm.config.schema import ExperimentConfig
from lm.errors import ConfigError, LabError

REFUSE_FACTOR = 2.0
"""Refuse when the predicted step needs more than this many times the device's memory."""

_KEYS = "training.batch_size, model.context_length, model.d_model, model.num_layers or model.vocab_size"


def device_capacity(device: torch.device) -> float | None:
    """Bytes a process may allocate on ``device`` (None when unknown)."""
    try:
        if device.type == "cuda":
            return float(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
            return float(torch.mps.recommended_max_memory())
    except (RuntimeError, AssertionError):
        return None
    return None


def _fmt(n: float) -> str:
    from lm.calc.units import fmt_bytes

    return fmt_bytes(n)


def predicted_step(cfg: ExperimentConfig, device_name: str, world_size: int = 1):
    """The calculator's estimate of one training step of ``cfg`` on the named device (per process)."""
    from lm.calc import device_for_torch_name, estimate

    profile, _ = device_for_torch_name(device_name)
    batch = max(1, cfg.training.batch_size // max(1, world_size))
    return estimate(cfg, profile, batch_size=batch, distributed=world_size > 1)


def check_fits(cfg: ExperimentConfig, device: torch.device, device_name: str, world_size: int = 1) -> None:
    """ConfigError naming the keys and the prediction when one step clearly cannot fit ``device``."""
    try:
        est = predicted_step(cfg, device_name, world_size)
    except LabError:
        return  # the calculator cannot size it (an unknown setting); training will say what is wrong
    capacity = device_capacity(device) or est.memory.capacity
    need = est.memory.total
    if need <= REFUSE_FACTOR * capacity:
        return
    if world_size > 1 and cfg.training.parallel in ("auto", "fsdp") and _fsdp_fits(cfg, device_name, world_size,
                                                                                REFUSE_FACTOR * capacity):
        return  # sharded over the ranks by FSDP2 it fits (lm.calc.distributed)
    mem = est.memory
    largest = est.verdict.max_batch_size
    fix = (f"the largest training.batch_size that fits is {largest}" if largest >= 1
           else "not even training.batch_size = 1 fits: make the model smaller")
    raise ConfigError([
        f"this config cannot train on {device_name}: the calculator predicts {_fmt(need)} for one training step "
        f"(weights, gradients and optimizer state {_fmt(mem.persistent)}, activations {_fmt(mem.activations)}) but "
        f"the device holds {_fmt(capacity)}. Reduce {_KEYS} ({fix}); `lab calc EXPERIMENT` shows the breakdown"])


def _fsdp_fits(cfg: ExperimentConfig, device_name: str, world_size: int, limit: float) -> bool:
    from lm.calc import device_for_torch_name
    from lm.calc.distributed import estimate_distributed

    try:
        profile, _ = device_for_torch_name(device_name)
        return estimate_distributed(cfg, profile, world_size, "fsdp").total_bytes <= limit
    except LabError:
        return True  # a batch that does not divide: the launcher says so


def is_out_of_memory(e: BaseException) -> bool:
    """An allocator failure: CUDA/MPS out of memory or the CPU allocator refusing."""
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(e, MemoryError))


def oom_error(cfg: ExperimentConfig, device_name: str, e: BaseException, world_size: int = 1) -> LabError:
    """A LabError for an out-of-memory failure: what the calculator predicted, and which keys to change."""
    try:
        est = predicted_step(cfg, device_name, world_size)
        predicted = (f"the calculator predicts {_fmt(est.memory.total)} per step against about "
                     f"{_fmt(est.memory.capacity)} on this device; ")
        largest = est.verdict.max_batch_size
        if largest >= 1:
            predicted += f"the largest training.batch_size that fits is about {largest}; "
    except Exception:  # the estimate is a courtesy: never hide the real error behind another
        predicted = ""
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return LabError(f"out of memory on {device_name} ({first}): {predicted}reduce {_KEYS}, or turn on "
                    "activation checkpointing; `lab calc EXPERIMENT` sizes a config before it runs")
