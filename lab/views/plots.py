"""Terminal plots for the headless commands (``lab compare --plot``, ``lab sweep report``), drawn with
plotext (version 6 API: ``plotext.figure``) as text, so they work over SSH, in pipes and in tests.

A value that was not finite is never plotted as a number: its curve breaks there and a ``×`` at the top
of the plot marks where.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from lab.views.charts import PALETTE, human_ticks, segments
from lm.errors import LabError

PLAIN_MARKERS = ("*", "+", "o", "x", "#", "=", "%", "@")


@dataclass
class Curve:
    """One line (or set of markers) of a plot."""

    label: str
    xs: list[float]
    ys: list[float]
    marker: str | None = None
    lines: bool = True
    marks: list[float] = field(default_factory=list)
    """x of values that were not finite: the line breaks there and a mark is drawn at the top."""


def render_plot(curves: list[Curve], *, title: str = "", xlabel: str = "", ylabel: str = "",
                xlog: bool = False, width: int | None = None, height: int | None = None,
                color: bool = True, legend: str = "top-right") -> str:
    """The curves overlaid in one terminal plot, as a string.

    ``legend`` is where the legend goes (``top-right``, ``bottom-left``, ``top-center`` ...):
    the place the curves are least likely to cross.
    """
    import plotext as plt

    if not hasattr(plt, "figure") or not hasattr(plt.figure, "signal"):
        raise LabError(f"plots need plotext 6 or newer (found {getattr(plt, '__version__', 'an older one')}); "
                       "upgrade it with: pip install -U plotext")
    drawable = [c for c in curves if c.xs]
    if not drawable:
        return "(nothing to plot: no finite points)"
    size = os.get_terminal_size(1) if os.isatty(1) else os.terminal_size((100, 30))
    fig = plt.figure
    plt.terminal.limit(False, False)  # the size is chosen here (from the terminal when there is one)
    fig.clear()
    fig_width = width or min(size.columns, 140)
    fig.plot_size(fig_width, height or max(12, min(size.lines - 6, 30)))
    fig.theme("default" if color else "clear")
    # Without colors the curves must differ by their marker (a line is drawn with its marker).
    plain = iter(PLAIN_MARKERS * (len(drawable) // len(PLAIN_MARKERS) + 1))
    ys = [y for c in drawable for y in c.ys]
    marks = [m for c in curves for m in c.marks if math.isfinite(m) and (m > 0 or not xlog)]
    gapped = any(c.marks for c in drawable)
    for i, c in enumerate(drawable):
        marker = c.marker or (None if color else next(plain))
        if color and gapped:  # one curve is several signals: give them one explicit color
            marker = plt.marker(marker or "hd", pixel=PALETTE[i % len(PALETTE)][0])
        parts = segments(list(zip(c.xs, c.ys)), c.marks) if c.lines else [list(zip(c.xs, c.ys))]
        for k, seg in enumerate(parts):
            sx, sy = [p[0] for p in seg], [p[1] for p in seg]
            sig = fig.signal(sx, sy, marker=marker) if marker else fig.signal(sx, sy)
            if k == 0:
                sig.label(c.label)
            if c.lines and len(sx) > 1:
                sig.lines()
            fig.draw(sig)
    if marks:
        sig = fig.signal(marks, [max(ys)] * len(marks), marker=plt.marker("×", pixel=9) if color else "×")
        sig.label(f"non-finite ({len(marks)})")
        fig.draw(sig)
    xs = [x for c in drawable for x in c.xs] + marks
    if xlog:
        fig.ruler("x").scale("log")
    else:  # steps and tokens: whole-number ticks with short labels (12K), not 12.5
        human_ticks(fig, "x", min(xs), max(xs), max(2, min(7, fig_width // 14)), all(float(x).is_integer() for x in xs))
    vertical, horizontal = legend.split("-")
    # Legend coordinates are in axis units; on a log axis that unit is log10.
    lo, hi = (math.log10(min(xs)), math.log10(max(xs))) if xlog else (min(xs), max(xs))
    lx = {"left": lo, "right": hi, "center": (lo + hi) / 2}[horizontal]
    fig.legend(x=lx, y=max(ys) if vertical == "top" else min(ys), ha=horizontal, va=vertical, relative=True)
    if title:
        fig.title(title)
    if xlabel:
        fig.label(xlabel, "x")
    if ylabel:
        fig.label(ylabel, "y")
    return fig.build().string(colorless=not color)
