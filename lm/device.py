"""The one place that knows about devices: which one, what it is called, what it can do.

Training (:mod:`lm.train.policy`), inference and the benchmarks all resolve a
device name here, call it by :func:`device_name` (also the key the
calculator's device profiles match), ask :func:`capabilities` what it
supports and set the process-wide backend switches with
:func:`configure_backends`. Nothing here touches ``torch.cuda`` unless CUDA
is asked for or present, so the same code runs on a Mac.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass

import torch

from lm.errors import ConfigError


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device strings that would work on this machine."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if mps_available():
        out.append("mps")
    return out


def resolve_device(requested: str | torch.device = "auto", setting: str = "training.device") -> torch.device:
    """``auto`` -> cuda > mps > cpu; an explicit device must exist.

    A device that is not there is a ConfigError naming ``setting`` (the key or
    flag the name came from) and the devices that do exist, never a silent
    fallback.
    """
    if isinstance(requested, torch.device):
        return requested
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
            raise ConfigError([f"{setting} = 'mps' but Apple MPS is not available here; "
                               f"available: {', '.join(available_devices())}"])
        return torch.device("mps")
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError([f"{setting} = {requested!r} but CUDA is not available here; "
                               f"available: {', '.join(available_devices())}"])
        if req == "cuda":
            return torch.device("cuda")
        index = req.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError([f"{setting} = {requested!r} does not exist; "
                               f"available: {', '.join(available_devices())}"])
        return torch.device("cuda", int(index))
    raise ConfigError([f"{setting} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {requested!r}"])


def device_name(device: torch.device) -> str:
    """What to call the device in logs and when looking up its profile: torch's GPU name, or 'cpu' / 'mps'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def bf16_supported(device: torch.device) -> bool:
    """bf16 tensor-core matmuls: CUDA compute capability 8.0+ (asked only on CUDA); CPU and MPS emulate it."""
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # very old drivers raise instead of answering
        return False


@dataclass(frozen=True)
class Capabilities:
    """What a device supports, as the engine's defaults need to know it."""

    bf16: bool
    """Fast bf16 matmuls (the default training dtype is bf16 autocast where true)."""
    compile_default: bool
    """torch.compile is worth it by default (CUDA; Inductor's MPS backend is experimental and on a CPU
    compiling costs more than it saves for the models a CPU can train)."""
    fused_optimizer: bool
    """torch's fused AdamW kernel exists for this device type."""
    cuda_graphs: bool
    """CUDA graphs can replay a step (removes the host's per-kernel launch cost)."""


def capabilities(device: torch.device) -> Capabilities:
    cuda = device.type == "cuda"
    return Capabilities(bf16=bf16_supported(device), compile_default=cuda,
                        fused_optimizer=device.type in ("cuda", "cpu"), cuda_graphs=cuda)


def cpu_threads(requested: int = 0) -> int:
    """Threads for CPU work: ``requested``, or cores - 1 (at least 1) when 0.

    With every core busy, torch's OpenMP threads spin-wait against the data
    workers, the console and other runs; on a shared 2-core box one thread ran
    the quickstart 4.9x faster than two.
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
"""cuBLAS's workspace setting under which its matmuls repeat bitwise (CUDA's reproducibility notes)."""


def configure_backends(device: torch.device, threads: int | None = 0, *, tf32: bool = True,
                       deterministic: bool = False) -> None:
    """The process-wide switches, set only here: CPU thread count; TF32 for fp32 matmuls on CUDA;
    deterministic algorithms (set both ways, so one run's choice never leaks into the next in a process).

    ``threads=None`` leaves the CPU thread count alone (a benchmark that set it itself).
    """
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(cpu_threads(threads))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        # Read when cuBLAS makes its first handle; a value the user set stays theirs.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False if deterministic else torch.backends.cudnn.benchmark
    if deterministic or "torch._inductor.config" in sys.modules:  # importing Inductor costs seconds
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "deterministic"):  # no autotuning that picks kernels by timing
            inductor_config.deterministic = deterministic


def nondeterministic_op(e: BaseException) -> str | None:
    """The op named by torch's "has no deterministic implementation" error, or None for any other error."""
    text = str(e)
    if not isinstance(e, RuntimeError) or "deterministic implementation" not in text:
        return None
    return text.split(" does not have", 1)[0].strip().splitlines()[0][:120]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queue (timing needs it; training avoids it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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
