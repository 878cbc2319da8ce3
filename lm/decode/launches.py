"""What the Triton step and sampler share: running (or collecting) a list of kernel launches, block sizes."""

from __future__ import annotations


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): Triton's block shapes."""
    return 1 << max(0, n - 1).bit_length()


def run_launches(launches: list[tuple], collect: list | None) -> None:
    """Launch each (kernel, grid, args, kwargs) in order, or append them to ``collect`` (for precompiling)."""
    if collect is not None:
        collect.extend(launches)
        return
    for kernel, grid, args, kwargs in launches:
        kernel[grid](*args, **kwargs)
