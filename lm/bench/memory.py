"""Peak memory of a callable: the CUDA allocator's counter, or the profiler's trace on CPU.

On CUDA, ``torch.cuda.max_memory_allocated`` after a reset is exact. On CPU
there is no such counter (RSS includes the allocator's caches and the whole
process), so :func:`cpu_peak_bytes` replays the profiler's allocation and free
events (``profile_memory=True``) and takes the running maximum: exact, but
slow, so only for small models. Tensors allocated before the profiler starts
and freed inside it are invisible to it: free what you can first (the
gradients, with ``zero_grad``) and add what stays alive yourself.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str = "cuda") -> int:
    """Allocator peak while ``fn`` runs (absolute: includes what was allocated before)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Largest net allocation (bytes above the level at the start) while ``fn`` runs on CPU.

    The garbage collector is run first and paused meanwhile: otherwise it may free, inside the
    window, tensors of objects that died earlier (reference cycles), which would show as frees.
    """
    from torch.profiler import ProfilerActivity

    from lm.bench.profiling import quiet_profile

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with quiet_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        if was_enabled:
            gc.enable()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return int(peak)


def live_tensor_bytes(*modules_or_optimizers) -> int:
    """Bytes of the parameters, buffers, gradients and optimizer state held by these objects (unique storages)."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for obj in modules_or_optimizers:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                add(p)
                if p.grad is not None:
                    add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    add(v)
    return sum(seen.values())
