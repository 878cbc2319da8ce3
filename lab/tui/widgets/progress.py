"""A progress bar whose fill follows its width."""

from __future__ import annotations

from textual import events
from textual.widgets import ProgressBar
from textual.widgets._progress_bar import Bar


class RunProgress(ProgressBar):
    """Textual's ProgressBar, re-drawn when it is resized.

    Textual's inner bar rounds the percentage down to its half-cells when the
    percentage is set, at the width it has then, and keeps that value: a bar set
    before layout settles, or before the terminal is resized, stays short (at 7%
    of 600 steps set at 40 columns and shown at 120, 5.7% instead of 6.5%) until
    the progress next moves by a half-cell. Setting it again after a resize
    rounds it at the new width.
    """

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self._fill_to_width)

    def _fill_to_width(self) -> None:
        for bar in self.query(Bar):
            bar.percentage = self.percentage
