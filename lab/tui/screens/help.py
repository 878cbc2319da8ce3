"""The help screen (F1 or ?): every binding of the console, tab by tab."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = ("The console drives the same engine and run directories as the lab commands: runs are "
         "separate `lab run` processes, so they keep training when the console closes, and runs started "
         "elsewhere (over SSH, by the queue) show up in the Monitor.")


def key_label(app, key: str) -> str:
    """A key as the footer shows it ('ctrl+s' -> '^s')."""
    return app.get_key_display(Binding(key, "", ""))


def binding_table(app, groups: list[tuple[str, list]]) -> Table:
    """A two-column table: keys and what they do, one block per group."""
    table = Table(box=None, show_header=False, pad_edge=False, expand=True)
    table.add_column("key", style="bold", no_wrap=True, min_width=12)
    table.add_column("action")
    for title, bindings in groups:
        table.add_row(Text(title, style="bold underline"), "")
        for b in bindings:
            keys = " / ".join(key_label(app, k.strip()) for k in b.key.split(","))
            table.add_row(keys, b.tooltip or b.description or b.action)
        table.add_row("", "")
    return table


class HelpScreen(ModalScreen[None]):
    """Lists the bindings of the whole console; any of escape, q, F1 or ? closes it."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close", show=True)]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, groups: list[tuple[str, list]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("lab console — keys", style="bold"))
            yield Static(INTRO, classes="dim")
            yield Static(binding_table(self.app, self.groups))

    def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
