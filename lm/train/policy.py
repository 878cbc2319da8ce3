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
import os
import resource
import sys
from dataclasses import dataclass

import torch

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


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` -> cuda > mps > cpu; an explicit device must exist (ConfigError otherwise)."""
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if req == "cpu":
        return torch.device("cpu")
    if req == "mps":
        if not mps_available():
            raise ConfigError([f"training.device = 'mps' but Apple MPS is not available here; "
                               f"available: {', '.join(available_devices())}"])
        return torch.device("mps")
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError([f"training.device = {requested!r} but CUDA is not available here; "
                               f"available: {', '.join(available_devices())}"])
        if req == "cuda":
            return torch.device("cuda")
        index = req.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError([f"training.device = {requested!r} does not exist; "
                               f"available: {', '.join(available_devices())}"])
        return torch.device("cuda", int(index))
    raise ConfigError([f"training.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {requested!r}"])


def available_devices() -> list[str]:
    """Device strings that would work on this machine."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if mps_available():
        out.append("mps")
    return out


def cuda_bf16_supported(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # very old drivers raise instead of answering
        return False


def select_dtype(device: torch.device, requested: str = "auto") -> str:
    """``auto`` -> bf16 on bf16-capable CUDA, fp32 otherwise; explicit bf16 needs support on CUDA."""
    if requested == "fp32":
        return "fp32"
    if requested == "bf16":
        if device.type == "cuda" and not cuda_bf16_supported(device):
            raise ConfigError(["training.dtype = 'bf16' but this GPU does not support bfloat16 "
                               "(needs compute capability 8.0+); use 'fp32' or 'auto'"])
        return "bf16"
    if requested == "auto":
        return "bf16" if device.type == "cuda" and cuda_bf16_supported(device) else "fp32"
    raise ConfigError([f"training.dtype must be 'auto', 'fp32' or 'bf16', got {requested!r}"])


def select_compile(device: torch.device, requested: str = "auto") -> bool:
    """``auto`` -> on for CUDA only; ``on``/``off`` are obeyed."""
    if requested == "on":
        return True
    if requested == "off":
        return False
    if requested == "auto":
        return device.type == "cuda"
    raise ConfigError([f"training.compile must be 'auto', 'on' or 'off', got {requested!r}"])


def device_name(device: torch.device) -> str:
    """What to call the device in logs and when looking up its peak FLOP/s."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def resolve_policy(training_cfg, device_override: str | None = None) -> DevicePolicy:
    """The DevicePolicy for a ``[training]`` section (``device_override`` beats training.device)."""
    device = select_device(device_override or training_cfg.device)
    return DevicePolicy(device=device, dtype=select_dtype(device, training_cfg.dtype),
                        compile=select_compile(device, training_cfg.compile), device_name=device_name(device))


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU training: ``requested``, or cores - 1 (at least 1) when 0.

    With every core busy, torch's OpenMP threads spin-wait against the data
    workers, the console and other runs; on a shared 2-core box one thread ran
    the quickstart 4.9x faster than two.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def configure_backends(policy: DevicePolicy, threads: int = 0) -> None:
    """Per-device speed switches: CPU thread count; TF32 matmuls for fp32 work on CUDA."""
    if policy.device.type == "cpu":
        torch.set_num_threads(cpu_threads(threads))
    if policy.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocator peak on CUDA, driver-allocated on MPS, peak RSS of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        mps = getattr(torch, "mps", None)
        fn = getattr(mps, "driver_allocated_memory", None)
        return int(fn()) if fn is not None else 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux KiB
