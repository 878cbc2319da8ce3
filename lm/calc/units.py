"""Human-readable numbers for reports (torch-free, no rich): bytes, FLOPs, seconds, rates."""

from __future__ import annotations

GIB = 2**30


def fmt_bytes(n: float) -> str:
    """Binary units: 1.5 GiB, 312 MiB, 12 KiB."""
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            v = n / size
            return f"{sign}{v:.3g} {unit}" if v < 100 else f"{sign}{v:.0f} {unit}"
    return f"{sign}{n:.0f} B"


def fmt_count(n: float) -> str:
    """1.2B, 124M, 45.1K: parameter and token counts."""
    n = float(n)
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def fmt_flops(n: float, per: str = "") -> str:
    """FLOPs with SI prefixes: 3.2 TFLOP, 805 TFLOP/s."""
    n = float(n)
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.3g} {unit}FLOP{per}" if abs(v) < 100 else f"{v:.0f} {unit}FLOP{per}"
    return f"{n:.0f} FLOP{per}"


def fmt_seconds(s: float) -> str:
    """2.3 h, 4.1 min, 312 ms, 45 us."""
    s = float(s)
    if s >= 3600:
        return f"{s / 3600:.3g} h"
    if s >= 60:
        return f"{s / 60:.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def fmt_rate(tokens_per_s: float) -> str:
    """45.1K tok/s."""
    return f"{fmt_count(tokens_per_s)} tok/s"
