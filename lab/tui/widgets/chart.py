"""The chart widget: shows a chart rendered elsewhere (:func:`lab.views.charts.render_chart`, in a worker)."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import Static


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
