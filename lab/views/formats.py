"""Numbers as people read them: ``2.3M`` tokens/s, ``1.2e+16`` perplexity, ``inf`` marked, never ``2.33e+16G``.

Shared by the console, ``lab runs`` and ``lab compare``, so a value reads the same everywhere.
"""

from __future__ import annotations

import math

UNITS = (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3))


def is_number(v) -> bool:
    """An int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v) -> bool:
    """A finite int or float (not a bool)."""
    return is_number(v) and math.isfinite(v)


def format_number(v, spec: str = ".4g") -> str:
    """A metric value compactly: '-' when missing, 'inf'/'-inf'/'nan' when not finite, ``K``/``M``/``G``/``T``
    from 10,000 up to 10**15, scientific beyond (a perplexity of 2.3e16 is ``2.33e+16``, not ``2.33e+16G``)."""
    if v is None or isinstance(v, bool):
        return "-"
    if not is_number(v):
        return str(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a >= 1e15:
        return f"{v:.3g}"
    if a >= 1e4:
        unit, size = next((u, s) for u, s in UNITS if a >= s)
        return f"{v / size:.3g}{unit}"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return f"{v:.4g}"


def format_duration(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12s' ('-' when unknown)."""
    if not is_finite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def format_value(value, spec: str) -> str:
    """``value`` formatted with ``spec``, '-' when missing, 'inf'/'nan' when not finite, as is when it
    does not take the format."""
    if value is None or isinstance(value, bool):
        return "-"
    if is_number(value) and not math.isfinite(value):
        return format_number(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten);
    with ``integer`` only whole numbers (a step axis has no step 12.5)."""
    if not (is_finite(lo) and is_finite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [round(lo) if integer else lo]
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))

    def ticks_for(step: float) -> list[float]:
        out, k = [], math.ceil(lo / step - 1e-9)
        while k * step <= hi + step * 1e-9:
            out.append(float(round(k * step)) if integer else round(k * step, 12))
            k += 1
        return out

    steps = [m * mag for m in (0.5, 1, 2, 2.5, 5, 10, 20)]
    if integer:
        steps = sorted({max(1, round(st)) for st in steps if st >= 0.5})
    # The round step whose tick count is closest to ``count`` (the larger step on a tie: fewer labels).
    best = min(steps, key=lambda st: (abs(len(ticks_for(st)) - count), -st))
    return ticks_for(best)


def tick_label(v: float, integer: bool = False) -> str:
    """A tick value as a short label: ``500``, ``12K``, ``1.5M``, ``0.25``, ``3e-04``."""
    if integer or (is_finite(v) and float(v).is_integer() and abs(v) >= 1):
        if abs(v) >= 1e4:
            return format_number(v)
        return str(int(v))
    if v == 0:
        return "0"
    a = abs(v)
    if a < 1e-3 or a >= 1e15:
        return f"{v:.0e}" if f"{v:.1e}".split("e")[0].endswith(".0") else f"{v:.1e}"
    if a >= 1e4:
        return format_number(v)
    return f"{v:.3g}"
