"""The base class of every tab's pane: how it is built, which widget has the focus when it is shown."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.containers import Vertical


class LabPane(Vertical):
    """A tab's content. Subclasses declare ``INITIAL_FOCUS`` (a selector) and build themselves in ``for_app``.

    Each time the tab is shown (Textual's ``Show`` event, also on first display)
    :meth:`shown` runs and, unless the focus is already inside the pane, the
    ``INITIAL_FOCUS`` widget (else the first focusable one) gets it.
    """

    INITIAL_FOCUS: ClassVar[str | None] = None
    """The widget focused when the tab is opened."""

    @classmethod
    def for_app(cls, app, **kwargs) -> "LabPane":
        """A pane for ``app`` (its supervisor, working directory, options)."""
        raise NotImplementedError

    async def shown(self) -> None:
        """The tab became visible: refresh what may have changed meanwhile (override)."""

    async def on_show(self, event: events.Show) -> None:
        await self.shown()
        self.call_after_refresh(self.focus_initial)

    def focus_initial(self) -> None:
        """Put the focus inside this pane: ``INITIAL_FOCUS`` if it can take it, else the first focusable."""
        focused = self.app.focused
        if focused is not None and self in focused.ancestors:
            return
        if not self.display or self.app.screen is not self.screen:
            return
        if self.INITIAL_FOCUS:
            matches = self.query(self.INITIAL_FOCUS)
            if matches and matches.first().focusable:
                matches.first().focus()
                return
        for widget in self.query("*"):
            if widget.focusable and widget.display and widget.visible:
                widget.focus()
                return
