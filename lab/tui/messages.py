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

    def __init__(self, runs: list | None) -> None:
        super().__init__()
        self.runs = runs
        """None when the listing failed (the next poll tries again)."""


class FrameReady(Message):
    """The monitor's worker has a new frame for the selected run."""

    def __init__(self, frame: MonitorFrame | None) -> None:
        super().__init__()
        self.frame = frame
        """None when nothing changed (or the poll failed): the monitor keeps what it shows."""


class ServingRead(Message):
    """The `lab serve` processes serving the selected run (lab.views.serving.Serving records)."""

    def __init__(self, path, servers: list) -> None:
        super().__init__()
        self.path = path
        self.servers = servers


class CalcDone(Message):
    """Calculator results: one estimate (or an error line) per device."""

    def __init__(self, results: list, error: str = "", token: int = 0) -> None:
        super().__init__()
        self.results = results
        self.error = error
        self.token = token


class QueueRead(Message):
    """A snapshot of the queue (:class:`lab.views.queue.QueueSnapshot`): entries with their run status,
    why failed ones failed, live runners, the comparison when it changed."""

    def __init__(self, snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class ChatPieces(Message):
    """Generated text pieces (with their probabilities), or the end of a reply."""

    def __init__(self, pieces: list[tuple[str, float | None]], done: bool = False, info: str = "") -> None:
        super().__init__()
        self.pieces = pieces
        self.done = done
        self.info = info
