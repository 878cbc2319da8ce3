"""The console application: five tabs over one runs folder.

1 Config, 2 Monitor, 3 Calculator, 4 Queue, 5 Chat. Keyboard first: number
keys switch tabs (escape leaves a text field first), F1 or ? lists every
binding, ctrl+t switches between the dark and light themes, q quits. Quitting
while runs train asks whether to leave them running (the default) or stop
them. Colors come from the theme's variables and the 16 ANSI colors, so the
console reads the same in a 16-color terminal over SSH.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, TabbedContent, TabPane, Tabs

from lab.supervisor import Supervisor
from lab.tui.tabs.config import ConfigPane
from lab.tui.tabs.monitor import MonitorPane

TABS = (("config", "1 Config"), ("monitor", "2 Monitor"), ("calculator", "3 Calculator"),
        ("queue", "4 Queue"), ("chat", "5 Chat"))
THEMES = ("textual-dark", "textual-light")


class LabApp(App[int]):
    """The lab console."""

    CSS_PATH = "lab.tcss"
    TITLE = "lab"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        *[Binding(str(i + 1), f"show_tab('{tab}')", label, show=False) for i, (tab, label) in enumerate(TABS)],
        # alt+N works from inside text fields too (and is what escape-then-N quickly typed arrives as).
        *[Binding(f"alt+{i + 1}", f"show_tab('{tab}')", label, show=False, priority=True)
          for i, (tab, label) in enumerate(TABS)],
        Binding("f1", "help", "Help", priority=True, tooltip="this list of keys (also ?)"),
        Binding("question_mark", "help", "Help", show=False),
        Binding("ctrl+t", "toggle_theme", "Theme", priority=True,
                tooltip="switch between the dark and the light theme"),
        Binding("escape", "focus_tabs", "Tabs", show=False),
        Binding("q", "quit", "Quit", tooltip="quit; asks whether to leave runs that are still training running"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, runs_dir: str | Path = "runs", *, cwd: str | Path | None = None, experiment: str | None = None,
                 poll_interval: float = 1.0, initial_tab: str | None = None, theme: str = "textual-dark") -> None:
        super().__init__()
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        runs = Path(runs_dir)
        self.supervisor = Supervisor(runs if runs.is_absolute() else self.cwd / runs, self.cwd)
        self.experiment = experiment
        self.poll_interval = poll_interval
        self.initial_tab = initial_tab
        self.theme = theme if theme in THEMES else THEMES[0]

    def compose(self) -> ComposeResult:
        first = self.initial_tab or ("monitor" if self._has_runs() else "config")
        with TabbedContent(initial=first, id="tabs"):
            for tab, label in TABS:
                with TabPane(label, id=tab):
                    # Only the first tab is built before the first frame; each other one when first shown.
                    if tab == first:
                        yield self._new_pane(tab)
        yield Footer(compact=True)

    def _new_pane(self, tab: str):
        from lab.tui.tabs.calculator import CalculatorPane
        from lab.tui.tabs.chat import ChatPane
        from lab.tui.tabs.queue import QueuePane

        if tab == "config":
            return ConfigPane(self.supervisor, self.cwd, self.experiment, id="config-pane")
        if tab == "monitor":
            return MonitorPane(self.supervisor, self.poll_interval, id="monitor-pane")
        if tab == "calculator":
            return CalculatorPane(self.cwd, self.experiment, id="calculator-pane")
        if tab == "queue":
            return QueuePane(self.supervisor, self.cwd, self.poll_interval, id="queue-pane")
        return ChatPane(self.supervisor.runs_dir, self.supervisor.runs_label, id="chat-pane")

    async def ensure_pane(self, tab: str):
        """The content widget of ``tab``, built and mounted on first use."""
        pane = self.query_one("#tabs", TabbedContent).get_pane(tab)
        if not pane.children:
            await pane.mount(self._new_pane(tab))
        return pane.children[0]

    def _has_runs(self) -> bool:
        root = self.supervisor.runs_dir
        try:
            return any((p / "status.json").is_file() or (p / "config.toml").is_file()
                       for p in root.iterdir() if p.is_dir())
        except OSError:
            return False

    def on_mount(self) -> None:
        self.set_interval(max(self.poll_interval, 1.0), self.supervisor.reap)
        self.call_after_refresh(self._focus_active)

    # ---- tabs ----------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    def _focus_active(self) -> None:
        """Put the focus inside the active tab: its pane's ``initial_focus`` widget, else the first focusable."""
        tabs = self.query_one("#tabs", TabbedContent)
        pane = tabs.get_pane(tabs.active)
        content = pane.children[0] if pane.children else None
        target = getattr(content, "initial_focus", None)
        if target:
            matches = pane.query(target)
            if matches:
                matches.first().focus()
                return
        for widget in pane.query("*"):
            if widget.focusable and widget.display and widget.visible:
                widget.focus()
                return

    async def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        built = bool(event.pane.children)
        content = await self.ensure_pane(event.pane.id or "")
        if built and hasattr(content, "on_shown"):
            await content.on_shown()
        self.call_after_refresh(self._focus_active)

    def action_focus_tabs(self) -> None:
        self.query_one("#tabs", TabbedContent).query_one(Tabs).focus()

    async def show_run(self, run_dir: Path) -> None:
        """Switch to the Monitor with ``run_dir`` selected (a run just launched or resumed)."""
        monitor = await self.ensure_pane("monitor")
        monitor.select(Path(run_dir))
        self.query_one("#tabs", TabbedContent).active = "monitor"

    # ---- help, theme, quit ---------------------------------------------------

    def binding_groups(self) -> list[tuple[str, list]]:
        """(title, bindings) of the app and of each tab, for the help screen."""
        from lab.tui.tabs.calculator import CalculatorPane
        from lab.tui.tabs.chat import ChatPane
        from lab.tui.tabs.queue import QueuePane

        tab_keys = [Binding(",".join(str(i + 1) for i in range(len(TABS))), "", "switch tab: "
                            + ", ".join(label for _, label in TABS))]
        general = tab_keys + [b for b in self.BINDINGS if isinstance(b, Binding) and b.show or b.key == "escape"]
        general = [b if b.key != "escape" else Binding("escape", "", "leave a text field (then 1-5 work)")
                   for b in general]
        panes = [("Config", ConfigPane), ("Monitor", MonitorPane), ("Calculator", CalculatorPane),
                 ("Queue", QueuePane), ("Chat", ChatPane)]
        return [("Everywhere", general)] + [(title, list(cls.BINDINGS)) for title, cls in panes]

    def action_help(self) -> None:
        from lab.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.binding_groups()))

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]

    async def action_quit(self) -> None:
        from lab.tui.screens.quit import QuitScreen

        if isinstance(self.screen, QuitScreen):
            return
        live = self.supervisor.live_runs()
        if not live:
            self.exit(0)
            return

        def answered(choice: str | None) -> None:
            if choice is None:
                return
            if choice == "stop":
                problems = self.supervisor.stop_all(live)
                for p in problems:
                    self.log.warning(p)
            self.exit(0)

        self.push_screen(QuitScreen(live), answered)
