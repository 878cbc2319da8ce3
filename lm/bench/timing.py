"""Timing a callable the way benchmarks should: warm-up excluded, device synchronised, repeats.

Equivalent to ``torch.utils.benchmark.Timer.blocked_autorange``: calls are
grouped into blocks long enough for the clock to resolve them (short ops run
many times per block), each block is timed between device synchronisations,
and the median over blocks is reported with its spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Measurement:
    """Seconds per call: median over blocks, with the spread."""

    median_s: float
    min_s: float
    max_s: float
    iqr_s: float
    blocks: int
    calls_per_block: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def time_callable(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2, repeats: int = 5,
                  min_block_s: float = 0.02, max_total_s: float = 30.0) -> Measurement:
    """Time ``fn`` after ``warmup`` calls: ``repeats`` blocks of enough calls to last ``min_block_s``.

    ``max_total_s`` caps the measured time (fewer blocks are taken, never fewer than 1).
    """
    for _ in range(max(warmup, 0)):
        fn()
    synchronize(device)
    # One probe call sizes the blocks.
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    probe = max(time.perf_counter() - t0, 1e-9)
    calls = max(1, int(min_block_s / probe))
    times: list[float] = []
    budget_start = time.perf_counter()
    for _ in range(max(repeats, 1)):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) / calls)
        if time.perf_counter() - budget_start > max_total_s:
            break
    times.sort()
    if len(times) >= 4:
        q = statistics.quantiles(times, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = times[-1] - times[0]
    return Measurement(statistics.median(times), times[0], times[-1], iqr, len(times), calls)
