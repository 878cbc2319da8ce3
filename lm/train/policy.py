"""Which device, precision and compilation a run uses.

The rules (``training.device``, ``training.dtype``, ``training.compile``):

- device ``auto`` picks CUDA, then Apple MPS, then the CPU. Naming a device
  that is not there is a config error, not a silent fallback.
- dtype ``auto`` is bf16 autocast on CUDA devices that support bf16 (Ampere
  and newer) and fp32 everywhere else: MPS and CPU train in fp32 unless bf16
  is asked for. Weights, gradients and AdamW state stay fp32 either way;
  autocast only runs the matmuls in bf16.
- compile ``auto`` is on for CUDA and off for MPS and CPU (Inductor's MPS
  backend is experimental, and on CPU compilation costs more than it saves
  for the models a CPU can train).

Nothing here touches ``torch.cuda`` unless CUDA is the chosen device, so the
same code runs on a Mac.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lm.device import (available_devices, bf16_supported, capabilities, cpu_threads, device_name, mps_available,  # noqa: F401
                       peak_memory, reset_peak_memory, resolve_device)
from lm.device import configure_backends as _configure_backends
from lm.errors import ConfigError


@dataclass(frozen=True)
class DevicePolicy:
    """The resolved device, precision and compilation of a run."""

    device: torch.device
    dtype: str
    """'fp32' or 'bf16' (bf16 means autocast; parameters stay fp32)."""
    compile: bool
    device_name: str
    """Human-readable device, e.g. 'NVIDIA H100 80GB HBM3', 'mps', 'cpu' (also the key for peak FLOP/s)."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.dtype == "bf16" else None

    def autocast(self):
        """The autocast context for forward passes (a no-op context in fp32).

        fp32 gets a null context rather than a disabled autocast: older torch
        builds reject ``torch.autocast(device_type="mps")`` even when disabled.
        """
        if self.dtype != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` -> cuda > mps > cpu; an explicit device must exist (ConfigError otherwise)."""
    return resolve_device(requested, "training.device")


def select_dtype(device: torch.device, requested: str = "auto") -> str:
    """``auto`` -> bf16 on bf16-capable CUDA, fp32 otherwise; explicit bf16 needs support on CUDA."""
    if requested == "fp32":
        return "fp32"
    if requested == "bf16":
        if device.type == "cuda" and not bf16_supported(device):
            raise ConfigError(["training.dtype = 'bf16' but this GPU does not support bfloat16 "
                               "(needs compute capability 8.0+); use 'fp32' or 'auto'"])
        return "bf16"
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    raise ConfigError([f"training.dtype must be 'auto', 'fp32' or 'bf16', got {requested!r}"])


def select_compile(device: torch.device, requested: str = "auto") -> bool:
    """``auto`` -> on for CUDA only; ``on``/``off`` are obeyed."""
    if requested == "on":
        return True
    if requested == "off":
        return False
    if requested == "auto":
        return capabilities(device).compile_default
    raise ConfigError([f"training.compile must be 'auto', 'on' or 'off', got {requested!r}"])


def resolve_policy(training_cfg, device_override: str | None = None) -> DevicePolicy:
    """The DevicePolicy for a ``[training]`` section (``device_override`` beats training.device)."""
    device = select_device(device_override or training_cfg.device)
    return DevicePolicy(device=device, dtype=select_dtype(device, training_cfg.dtype),
                        compile=select_compile(device, training_cfg.compile), device_name=device_name(device))


def configure_backends(policy: DevicePolicy, threads: int = 0, deterministic: bool = False) -> None:
    """The run's backend switches (lm.device.configure_backends: threads on CPU, TF32 on CUDA,
    ``training.deterministic``)."""
    _configure_backends(policy.device, threads, deterministic=deterministic)
