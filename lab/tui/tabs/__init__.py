"""The console's tabs: one registry (id, label, pane class), one module per tab, one pane base class.

The app builds its tab bar, number keys, help screen and panes from :data:`TABS`
alone. A pane class is imported the first time its tab is shown (or the help
screen lists its keys), so opening the console costs only the first tab.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Tab:
    """One tab: its id, its label and where its pane class lives (``module:Class``)."""

    id: str
    title: str
    pane: str

    def pane_class(self):
        """The pane class (a :class:`lab.tui.tabs.base.LabPane`), imported on first use."""
        module, name = self.pane.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, app):
        """A new pane for this tab in ``app`` (the pane's own ``for_app`` factory)."""
        return self.pane_class().for_app(app, id=f"{self.id}-pane")


TABS: tuple[Tab, ...] = (
    Tab("config", "Config", "lab.tui.tabs.config:ConfigPane"),
    Tab("monitor", "Monitor", "lab.tui.tabs.monitor:MonitorPane"),
    Tab("calculator", "Calculator", "lab.tui.tabs.calculator:CalculatorPane"),
    Tab("queue", "Queue", "lab.tui.tabs.queue:QueuePane"),
    Tab("chat", "Chat", "lab.tui.tabs.chat:ChatPane"),
)


def tab_label(index: int, tab: Tab) -> str:
    """What the tab bar shows: the number key, then the title ('2 Monitor')."""
    return f"{index + 1} {tab.title}"
