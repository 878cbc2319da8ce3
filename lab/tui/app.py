"""The console application: the tabs of :data:`lab.tui.tabs.TABS` over one runs folder.

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
from lab.tui.tabs import TABS, tab_label

THEMES = ("textual-dark", "textual-light")


class LabApp(App[int]):
    """The lab console."""

    CSS_PATH = "lab.tcss"
    TITLE = "lab"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        *[Binding(str(i + 1), f"show_tab('{tab.id}')", tab_label(i, tab), show=False) for i, tab in enumerate(TABS)],
        # alt+N works from inside text fields too (and is what escape-then-N quickly typed arrives as).
        *[Binding(f"alt+{i + 1}", f"show_tab('{tab.id}')", tab_label(i, tab), show=False, priority=True)
          for i, tab in enumerate(TABS)],
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
            for i, tab in enumerate(TABS):
                with TabPane(tab_label(i, tab), id=tab.id):
                    # Only the first tab is built before the first frame; each other one when first shown.
                    if tab.id == first:
                        yield tab.build(self)
        yield Footer(compact=True)

    async def ensure_pane(self, tab: str):
        """The content widget of ``tab``, built and mounted on first use."""
        pane = self.query_one("#tabs", TabbedContent).get_pane(tab)
        if not pane.children:
            await pane.mount(next(t for t in TABS if t.id == tab).build(self))
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

    # ---- tabs ----------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab

    async def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # A pane built now gets its focus from its own Show event (LabPane). An activation still queued
        # when the app shuts down finds the tabs already removed: there is nothing left to build.
        if not self.query("#tabs"):
            return
        await self.ensure_pane(event.pane.id or "")

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
        tab_keys = [Binding(",".join(str(i + 1) for i in range(len(TABS))), "", "switch tab: "
                            + ", ".join(tab_label(i, t) for i, t in enumerate(TABS)))]
        general = tab_keys + [b for b in self.BINDINGS if isinstance(b, Binding) and b.show or b.key == "escape"]
        general = [b if b.key != "escape" else Binding("escape", "", f"leave a text field (then 1-{len(TABS)} work)")
                   for b in general]
        return [("Everywhere", general)] + [(t.title, list(t.pane_class().BINDINGS)) for t in TABS]

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
