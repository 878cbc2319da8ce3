"""SIGINT/SIGTERM as a request to stop at the next step boundary.

The first signal only sets a flag; the trainer checks it between optimizer
steps, writes a checkpoint and exits with code 5. A second SIGINT (an
impatient Ctrl-C) raises KeyboardInterrupt at once. Handlers can only be
installed from the main thread; elsewhere (a trainer driven from a thread)
this is a plain flag that :meth:`StopRequest.request` sets.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """A stop flag wired to SIGINT and SIGTERM while used as a context manager."""

    def __init__(self):
        self.signal_name: str | None = None
        self.on_signal = None
        """Optional callable(signal name) run after the flag is set; it may raise to leave at once."""
        self.interrupt_on_repeat = True
        """A second SIGINT raises KeyboardInterrupt; off for ranks of a distributed run, whose launcher
        forwards the signal it got, so a single Ctrl-C arrives twice."""
        self._previous: dict[int, object] = {}
        self._depth = 0

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, reason: str = "request") -> None:
        """Ask the trainer to stop at the next step boundary."""
        if self.signal_name is None:
            self.signal_name = reason

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT and self.interrupt_on_repeat:
            raise KeyboardInterrupt
        self.request(name)
        if self.on_signal is not None:
            self.on_signal(name)

    def __enter__(self) -> "StopRequest":
        # Re-entrant: run_experiment holds it around setup and the Trainer again around training.
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()
