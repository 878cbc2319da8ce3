"""Line charts drawn with plotext as text, shown in a Static.

Rendering takes tens of milliseconds and plotext's figure is one global
object, so :func:`render_chart` runs in worker threads under a lock and the
widget only displays the finished :class:`rich.text.Text`. plotext's "simple"
theme draws no background, and every curve gets a color from the 16 ANSI
colors, so charts read the same in 16-color terminals, over SSH, in light and
dark themes. plotext itself is imported on first use (it costs ~0.4 s), never
at startup.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import Static

from lab.tui.series import downsample

# ANSI color numbers plotext draws with, and the same colors' names for Rich (legends).
PALETTE = ((12, "bright_blue"), (9, "bright_red"), (10, "bright_green"), (13, "bright_magenta"),
           (14, "bright_cyan"), (11, "bright_yellow"))
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


def render_chart(curves: list[ChartCurve], width: int, height: int, *, log_y: bool = False,
                 xlabel: str = "", empty: str = "no data yet") -> Text:
    """The curves overlaid in a width x height text plot plus a one-line legend."""
    width, height = max(20, width), max(5, height)
    drawable = []
    for i, c in enumerate(curves):
        pts = [(x, y) for x, y in zip(c.xs, c.ys) if _finite(x) and _finite(y) and (y > 0 or not log_y)]
        if len(pts) > POINTS_PER_COLUMN * width:
            xs, ys = downsample([p[0] for p in pts], [p[1] for p in pts], POINTS_PER_COLUMN * width)
            pts = list(zip(xs, ys))
        if pts:
            drawable.append((PALETTE[i % len(PALETTE)], c, pts))
    if not drawable:
        return Text(empty, style="dim")
    import plotext as plt

    with _PLOT_LOCK:
        fig = plt.figure
        fig.clear()
        # The widget, not the terminal, bounds the plot: without this plotext caps the
        # width at its idea of the terminal (80 columns when stdout is not a TTY).
        plt.terminal.limit(False, False)
        fig.plot_size(width, height - 1)
        fig.theme("simple")
        for (ansi, _), c, pts in drawable:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            marker = plt.marker("dot" if c.markers else "hd", pixel=ansi)
            sig = fig.signal(xs, ys, marker=marker)
            if not c.markers and len(xs) > 1:
                sig.lines()
            fig.draw(sig)
        if log_y:
            fig.ruler("y").scale("log")
        if xlabel:
            fig.label(xlabel, "x")
        out = fig.build().string()
    text = Text.from_ansi(out.rstrip("\n"), no_wrap=True)
    text.append("\n")
    for i, ((_, style), c, _) in enumerate(drawable):
        if i:
            text.append("  ")
        text.append("•" if c.markers else "━", style=style)
        text.append(f" {c.label}")
    return text


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class Chart(Static):
    """Shows a chart rendered elsewhere (a worker); knows the size to render at, and says when it changes."""

    DEFAULT_CSS = """
    Chart { height: 1fr; min-height: 6; }
    """

    class Resized(Message):
        """The chart's size changed: whoever renders it should render again at the new size."""

        def __init__(self, chart: "Chart") -> None:
            super().__init__()
            self.chart = chart

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(self.Resized(self))

    def plot_size(self) -> tuple[int, int]:
        """Columns and rows available for the plot (content region, at least 20 x 6)."""
        region = self.content_region
        return max(20, region.width), max(6, region.height)
