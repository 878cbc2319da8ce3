"""Line charts drawn with plotext as text (a :class:`rich.text.Text`), for the console's chart widgets.

Rendering takes tens of milliseconds and plotext's figure is one global
object, so :func:`render_chart` runs in worker threads under a lock and the
widget only displays the finished text. plotext's "simple" theme draws no
background, and every curve gets a color from the 16 ANSI colors, so charts
read the same in 16-color terminals, over SSH, in light and dark themes.
plotext itself is imported on first use (it costs ~0.4 s), never at startup.

Non-finite values (a loss that became ``inf`` or ``NaN``) are never plotted
as numbers: the curve has a gap where they were, and a red ``×`` mark at the
top of the chart says where. Tick labels are round, human numbers (whole
steps, ``12K`` tokens), never ``12.5`` steps or ``2.33e+16G``.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from rich.text import Text

from lab.views.formats import is_finite, nice_ticks, tick_label
from lab.views.series import downsample

# ANSI color numbers plotext draws with, and the same colors' names for Rich (legends).
PALETTE = ((12, "bright_blue"), (9, "bright_red"), (10, "bright_green"), (13, "bright_magenta"),
           (14, "bright_cyan"), (11, "bright_yellow"))
MARK_COLOR = (9, "bold red")
MARK = "×"
_PLOT_LOCK = threading.Lock()
POINTS_PER_COLUMN = 2  # a text plot shows 2 dots per column; more points only cost time


@dataclass
class ChartCurve:
    """One curve: points, a legend label and how to draw it."""

    label: str
    xs: list[float]
    ys: list[float]
    markers: bool = False
    """Draw points only (evaluations), not connected lines."""
    marks: list[float] = field(default_factory=list)
    """x of values that were not finite: the line breaks there and a mark is drawn."""


def segments(pts: list[tuple[float, float]], breaks: list[float]) -> list[list[tuple[float, float]]]:
    """``pts`` (in x order) cut into runs that no break x falls inside: a line never bridges a gap."""
    if not breaks:
        return [pts] if pts else []
    breaks = sorted(breaks)
    out, cur = [], []
    for p in pts:
        if cur and bisect.bisect_right(breaks, cur[-1][0]) != bisect.bisect_left(breaks, p[0]):
            out.append(cur)
            cur = []
        cur.append(p)
    if cur:
        out.append(cur)
    return out


def human_ticks(fig, axis: str, lo: float, hi: float, count: int, integer: bool) -> None:
    """Round tick values with short labels on one axis of a plotext figure (plotext's own are
    evenly spaced fractions: step 12.5). The axis is pinned to [lo, hi]: given ticks, plotext would
    otherwise stretch it to the ticks' own range."""
    if not hi > lo:
        return
    ticks = [t for t in nice_ticks(lo, hi, count, integer=integer) if lo <= t <= hi]
    if len(ticks) >= 2 or (integer and ticks):
        fig.ruler(axis).ticks(ticks, [tick_label(t, integer) for t in ticks])
        fig.ruler(axis).lim(lo, hi)


def render_chart(curves: list[ChartCurve], width: int, height: int, *, log_y: bool = False,
                 xlabel: str = "", empty: str = "no data yet", integer_x: bool = True) -> Text:
    """The curves overlaid in a width x height text plot plus a one-line legend.

    ``integer_x``: the x axis counts whole things (steps, tokens): ticks are whole numbers.
    """
    width, height = max(20, width), max(5, height)
    drawable, marks = [], []
    for i, c in enumerate(curves):
        pts = [(x, y) for x, y in zip(c.xs, c.ys) if is_finite(x) and is_finite(y) and (y > 0 or not log_y)]
        if len(pts) > POINTS_PER_COLUMN * width:
            xs, ys = downsample([p[0] for p in pts], [p[1] for p in pts], POINTS_PER_COLUMN * width)
            pts = list(zip(xs, ys))
        cmarks = [x for x in c.marks if is_finite(x)]
        marks += cmarks
        if pts:
            drawable.append((PALETTE[i % len(PALETTE)], c, pts, cmarks))
    if not drawable:
        if marks:
            return Text(f"{empty if not curves else 'no finite values'}: {len(marks)} non-finite value"
                        f"{'s' if len(marks) != 1 else ''} (inf/nan) {MARK}", style="bold red")
        return Text(empty, style="dim")
    all_x = [p[0] for _, _, pts, _ in drawable for p in pts] + marks
    all_y = [p[1] for _, _, pts, _ in drawable for p in pts]
    import plotext as plt

    with _PLOT_LOCK:
        fig = plt.figure
        fig.clear()
        # The widget, not the terminal, bounds the plot: without this plotext caps the
        # width at its idea of the terminal (80 columns when stdout is not a TTY).
        plt.terminal.limit(False, False)
        fig.plot_size(width, height - 1)
        fig.theme("simple")
        for (ansi, _), c, pts, cmarks in drawable:
            for seg in segments(pts, cmarks) if not c.markers else [pts]:
                xs, ys = [p[0] for p in seg], [p[1] for p in seg]
                marker = plt.marker("dot" if c.markers else "hd", pixel=ansi)
                sig = fig.signal(xs, ys, marker=marker)
                if not c.markers and len(xs) > 1:
                    sig.lines()
                fig.draw(sig)
        if marks:
            top = max(all_y)
            sig = fig.signal(marks, [top] * len(marks), marker=plt.marker(MARK, pixel=MARK_COLOR[0]))
            fig.draw(sig)
        human_ticks(fig, "x", min(all_x), max(all_x), max(2, min(6, width // 12)), integer_x)
        if log_y:
            fig.ruler("y").scale("log")
        else:
            human_ticks(fig, "y", min(all_y), max(all_y), max(2, min(5, height // 3)), False)
        if xlabel:
            fig.label(xlabel, "x")
        out = fig.build().string()
    text = Text.from_ansi(out.rstrip("\n"), no_wrap=True)
    text.append("\n")
    for i, ((_, style), c, _, _) in enumerate(drawable):
        if i:
            text.append("  ")
        text.append("•" if c.markers else "━", style=style)
        text.append(f" {c.label}")
    if marks:
        text.append("  ")
        text.append(MARK, style=MARK_COLOR[1])
        text.append(f" non-finite ({len(marks)})")
    return text
