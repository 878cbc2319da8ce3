"""The question asked when the console closes while runs are training."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitScreen(ModalScreen[str | None]):
    """'leave' (the default: runs keep training, the console finds them again), 'stop' or None (stay)."""

    BINDINGS = [
        Binding("l", "choose('leave')", "Leave running"),
        Binding("s", "choose('stop')", "Stop them"),
        Binding("escape,c", "choose(None)", "Cancel"),
    ]

    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical {
        width: 72; max-width: 95%; height: auto; max-height: 90%;
        border: round $warning; background: $surface; padding: 1 2;
    }
    QuitScreen #quit-runs { color: $text-muted; margin: 1 0; }
    QuitScreen Horizontal { height: auto; }
    QuitScreen Button { margin-right: 1; width: auto; min-width: 16; }
    """

    def __init__(self, runs: list[Path]) -> None:
        super().__init__()
        self.runs = runs

    def compose(self) -> ComposeResult:
        n = len(self.runs)
        with Vertical():
            yield Static(f"{n} run{'s are' if n != 1 else ' is'} still training.")
            names = "\n".join(f"  {p.name}" for p in self.runs[:8]) + ("\n  ..." if n > 8 else "")
            yield Static(Content(names), id="quit-runs")
            yield Static("Leave them running (reopening the console finds them again), or stop them "
                         "(each writes a checkpoint and can be resumed)?")
            with Horizontal():
                yield Button("Leave running (l)", id="leave", variant="primary")
                yield Button("Stop them (s)", id="stop", variant="warning")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"leave": "leave", "stop": "stop"}.get(event.button.id or ""))

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)
