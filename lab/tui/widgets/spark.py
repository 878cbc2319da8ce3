"""A sparkline widget that survives ``inf`` and ``NaN``: it draws :func:`lab.views.spark.spark_text`."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from lab.views.monitor import SparkData
from lab.views.spark import spark_text


class Spark(Widget):
    """One line of blocks over the widget's width; non-finite values show as a red mark."""

    DEFAULT_CSS = """
    Spark { height: 1; color: $accent; }
    """

    def __init__(self, data: SparkData | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._data = data or SparkData([], [])

    @property
    def data(self) -> SparkData:
        return self._data

    @data.setter
    def data(self, value: SparkData | None) -> None:
        self._data = value or SparkData([], [])
        self.refresh()

    def render(self) -> Text:
        d = self._data
        return spark_text(d.xs, d.ys, d.marks, self.content_region.width or self.size.width)
