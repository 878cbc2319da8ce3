"""A yes/no question before something is lost (unsaved edits): d or enter discards, escape keeps."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ConfirmScreen(ModalScreen[bool]):
    """Returns True to go ahead (discard), False to keep what there is."""

    BINDINGS = [Binding("d", "answer(True)", "Discard"), Binding("escape,k", "answer(False)", "Keep")]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 72; max-width: 95%; height: auto;
        border: round $warning; background: $surface; padding: 1 2;
    }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 1; width: auto; min-width: 16; }
    """

    def __init__(self, question: str, yes: str = "Discard (d)", no: str = "Keep editing (esc)") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, markup=False)
            with Horizontal():
                yield Button(self.no, id="keep", variant="primary")
                yield Button(self.yes, id="discard", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()  # the safe answer is the default

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "discard")

    def action_answer(self, go: bool) -> None:
        self.dismiss(go)
