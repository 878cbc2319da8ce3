"""Messages the console's workers post to the UI thread (``post_message`` is thread-safe).

Workers read files, render charts and run models; widgets only apply what a
message carries, so the UI thread never waits on a disk, plotext or torch.
"""

from __future__ import annotations

from textual.message import Message

from lab.views.monitor import MonitorFrame


def notify(widget, message: str, **kwargs) -> None:
    """A toast with ``message`` shown as plain text: user errors quote TOML like ``[model]``, which
    Textual's default markup would swallow or reject."""
    widget.notify(message, markup=False, **kwargs)


class RunsListed(Message):
    """A fresh listing of the runs folder (``lm.runs.list_runs``)."""

    def __init__(self, runs: list) -> None:
        super().__init__()
        self.runs = runs


class FrameReady(Message):
    """The monitor's worker has a new frame for the selected run."""

    def __init__(self, frame: MonitorFrame) -> None:
        super().__init__()
        self.frame = frame


class CalcDone(Message):
    """Calculator results: one estimate (or an error line) per device."""

    def __init__(self, results: list, error: str = "", token: int = 0) -> None:
        super().__init__()
        self.results = results
        self.error = error
        self.token = token


class QueueRead(Message):
    """A snapshot of the queue: entries with their run status, live runners, comparison."""

    def __init__(self, entries: list, runners: list, comparison: object = None, error: str = "") -> None:
        super().__init__()
        self.entries = entries
        self.runners = runners
        self.comparison = comparison
        self.error = error


class ChatPieces(Message):
    """Generated text pieces (with their probabilities), or the end of a reply."""

    def __init__(self, pieces: list[tuple[str, float | None]], done: bool = False, info: str = "") -> None:
        super().__init__()
        self.pieces = pieces
        self.done = done
        self.info = info
