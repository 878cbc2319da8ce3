"""The Monitor tab: every run in the runs folder, and the selected one live.

A timer (``poll_interval``, 1 s by default) starts two thread workers: one
lists the runs folder (cheap: only changed ``status.json`` files are re-read),
one polls the selected run's files from their last byte offsets and renders
its frame. The UI thread only applies finished frames, so a run logging 100
steps a second, or a finished run of 200,000 metric lines, never stalls it.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Label, ProgressBar, RichLog, Static

from lab.processes import lower_thread_priority
from lab.tui.tabs.base import LabPane
from lab.tui.messages import FrameReady, RunsListed, ServingRead, notify
from lab.tui.widgets.chart import Chart
from lab.tui.widgets.progress import RunProgress
from lab.tui.widgets.spark import Spark
from lab.views.formats import format_duration, format_number, format_value
from lab.views.serving import read_serving, serving_line
from lab.views.monitor import SMOOTHING, SPARK_METRICS, ChartOptions, FrameBuilder, MonitorFrame, RunLister, short_name
from lm.errors import LabError

STATE_GLYPH = {"running": "▶", "done": "✓", "failed": "✗", "stopped": "■", "diverged": "!", "pending": "…"}
STATE_STYLE = {"running": "bold cyan", "done": "green", "failed": "red", "stopped": "yellow",
               "diverged": "magenta", "pending": "default"}
EVENT_STYLE = {"eval": "cyan", "checkpoint": "green", "halt": "red", "error": "red", "stop": "yellow",
               "start": "bold", "resume": "bold", "finish": "bold green"}


def state_text(state: str) -> Text:
    """A run state in its color."""
    return Text(state, style=STATE_STYLE.get(state, "default"))


def state_glyph(state: str) -> Text:
    """A run state as one colored symbol (the run list is narrow)."""
    return Text(STATE_GLYPH.get(state, "?"), style=STATE_STYLE.get(state, "default"))


def event_line(ev: dict) -> Text:
    """One event as a log line: step, kind, message."""
    kind = str(ev.get("event", "?"))
    line = Text(f"{ev.get('step', 0):>7} ", style="dim")
    line.append(f"{kind:<10}", style=EVENT_STYLE.get(kind, "default"))
    line.append(" " + str(ev.get("message", "")))
    return line


class MonitorPane(LabPane):
    """Run list on the left, the selected run's numbers, sparklines, chart and events on the right."""

    INITIAL_FOCUS = "#run-table"

    BINDINGS = [
        Binding("s", "stop_run", "Stop run",
                tooltip="stop the selected run: SIGTERM, it writes a checkpoint and exits 5"),
        Binding("r", "resume_run", "Resume", tooltip="resume the selected stopped run (lab run --resume DIR)"),
        Binding("l", "toggle_log", "Log y", tooltip="chart: linear or log y axis"),
        Binding("x", "toggle_axis", "Steps/tokens", tooltip="chart: x axis in steps or in tokens"),
        Binding("m", "cycle_smoothing", "Smooth",
                tooltip="chart: raw (min/max downsampled) or EMA over 10, 50, 200 records"),
        Binding("o", "toggle_overlay", "Overlay",
                tooltip="overlay the highlighted run's train loss on the chart (again: remove it)"),
        Binding("c", "clear_overlays", "Clear overlays",
                tooltip="remove every overlaid run from the chart", show=False),
    ]

    @classmethod
    def for_app(cls, app, **kwargs) -> "MonitorPane":
        return cls(app.supervisor, app.poll_interval, **kwargs)

    def __init__(self, supervisor, poll_interval: float = 1.0, max_points: int = 2000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.supervisor = supervisor
        self.poll_interval = poll_interval
        self.builder = FrameBuilder(max_points)
        self.lister = RunLister(supervisor.runs_dir)
        self.selected: Path | None = None
        self.options = ChartOptions()
        self.runs: list = []
        self.displayed_step = 0
        self.frames_applied = 0
        self._polling = False
        self._again = False
        self._listing = False
        self._row_keys: list[str] = []

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="runs-side"):
                yield DataTable(id="run-table", cursor_type="row", zebra_stripes=False)
                yield Static("", id="runs-hint")
            with VerticalScroll(id="run-detail"):
                yield Static("select a run", id="run-header")
                yield RunProgress(total=1, show_eta=False, id="run-progress")
                yield Static("", id="run-values")
                yield Static("", id="run-serving")
                for name, label in SPARK_METRICS:
                    with Horizontal(classes="spark-row"):
                        yield Label(label, classes="spark-label")
                        yield Spark(id=f"spark-{name}", classes="spark")
                        yield Label("-", id=f"spark-value-{name}", classes="spark-value")
                yield Static("", id="chart-options")
                yield Chart("", id="run-chart")
                yield RichLog(id="run-events", max_lines=500, wrap=False, markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#run-table", DataTable)
        table.add_columns(" ", "run", "done")
        self._show_options()
        self.refresh_now()
        self.set_interval(self.poll_interval, self.refresh_now)

    # ---- polling -------------------------------------------------------------

    def refresh_now(self, force: bool = False) -> None:
        """List the runs and poll the selected one, each in a worker (skipped while one is in flight)."""
        if not self._listing:
            self._listing = True
            self._list_runs()
        if self.selected is None:
            return
        if self._polling:
            self._again = self._again or force  # draw once more when the frame in flight is done
            return
        self._polling = True
        self._poll_run(self.selected, self._chart_options(), force)

    @work(thread=True, group="monitor-list", exit_on_error=False)
    def _list_runs(self) -> None:
        lower_thread_priority()
        runs = None
        try:
            runs = self.lister.list()
        finally:  # always answered, so the next listing starts (None: this one failed)
            self.post_message(RunsListed(runs))

    @work(thread=True, group="monitor-tail", exit_on_error=False)
    def _poll_run(self, path: Path, opts: ChartOptions, force: bool) -> None:
        lower_thread_priority()
        frame = None
        try:
            frame = self.builder.build(path, opts, force)
        finally:  # always answered: the UI thread clears its in-flight flag (None: nothing new)
            self.post_message(FrameReady(frame))
        self.post_message(ServingRead(path, read_serving(path)))  # a few small files: every poll

    def _chart_options(self) -> ChartOptions:
        chart = self.query_one("#run-chart", Chart)
        w, h = chart.plot_size()
        from dataclasses import replace

        return replace(self.options, width=w, height=h)

    @on(Chart.Resized)
    def _chart_resized(self, message: Chart.Resized) -> None:
        message.stop()
        self.refresh_now(force=True)

    # ---- the run list --------------------------------------------------------

    @on(RunsListed)
    def _apply_runs(self, message: RunsListed) -> None:
        self._listing = False
        if message.runs is None:
            return
        self.runs = message.runs
        table = self.query_one("#run-table", DataTable)
        keys = [str(r.path) for r in self.runs]
        rows = {str(r.path): self._row(r) for r in self.runs}
        if keys != self._row_keys:
            keep = str(self.selected) if self.selected else None
            table.clear()
            for k in keys:
                table.add_row(*rows[k], key=k)
            self._row_keys = keys
            if keep in keys:
                table.move_cursor(row=keys.index(keep), animate=False)
        else:
            for k in keys:
                for col, value in zip(table.ordered_columns, rows[k]):
                    table.update_cell(k, col.key, value, update_width=True)
        if self.selected is None and keys:
            self.select(Path(keys[table.cursor_row if 0 <= table.cursor_row < len(keys) else 0]))
        hint = self.query_one("#runs-hint", Static)
        live = sum(1 for r in self.runs if r.state == "running")
        where = self.supervisor.runs_label
        n = len(self.runs)
        hint.update(Text(f"{n} run{'s' if n != 1 else ''}, {live} running in {where}/" if self.runs else
                         f"no runs in {where}/ yet: press 1, open an experiment, F5 launches it"))

    def _row(self, r) -> tuple:
        overlay = "+" if str(r.path) in self.options.overlays else ""
        done = f"{100 * r.step / r.total_steps:.0f}%" if r.total_steps else str(r.step)
        return (state_glyph(r.state), Text(overlay + r.name), done)

    @on(DataTable.RowHighlighted, "#run-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != event.data_table.cursor_row:
            return  # stale: the table was rebuilt since (clear() highlights row 0 on the way)
        if event.row_key is not None and event.row_key.value:
            self.select(Path(event.row_key.value))

    def select(self, path: Path) -> None:
        """Show ``path`` (a run directory) on the right; the next poll draws it."""
        path = Path(path)
        if self.selected == path:
            return
        self.selected = path
        self.displayed_step = -1  # nothing of this run drawn yet
        self.builder.forget_events(path)
        self.query_one("#run-events", RichLog).clear()
        self.query_one("#run-header", Static).update(Text(path.name, style="bold"))
        if str(path) in self._row_keys:
            table = self.query_one("#run-table", DataTable)
            index = self._row_keys.index(str(path))
            if table.cursor_row != index:
                table.move_cursor(row=index, animate=False)
        self.refresh_now(force=True)

    # ---- the selected run ----------------------------------------------------

    @on(FrameReady)
    def _apply_frame(self, message: FrameReady) -> None:
        self._polling = False
        if self._again:  # asked for a fresh frame while this one was being built
            self._again = False
            self.refresh_now(True)
        frame: MonitorFrame | None = message.frame
        if frame is None or self.selected is None or Path(frame.path) != self.selected:
            return
        v = frame.view
        self.displayed_step = v.step
        self.frames_applied += 1
        header = Text(v.name, style="bold")
        header.append("  ")
        header.append_text(state_text(v.state))
        header.append(f"  step {v.step:,}" + (f"/{v.total_steps:,}" if v.total_steps else ""))
        if v.world:
            header.append(f"  {v.world}", style="cyan")
        if v.state == "running":
            header.append(f"  ETA {format_duration(v.eta_s)}")
        if v.message and v.state != "running":
            header.append(f"  {v.message}", style="dim")
        self.query_one("#run-header", Static).update(header)
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=max(1, v.total_steps), progress=min(v.step, max(1, v.total_steps)))
        self.query_one("#run-values", Static).update(self._values(v))
        for name, _ in SPARK_METRICS:
            self.query_one(f"#spark-{name}", Spark).data = frame.sparklines.get(name)
            last = v.last_train.get(name)
            self.query_one(f"#spark-value-{name}", Label).update(format_number(last, ".3g"))
        if frame.chart is not None:
            self.query_one("#run-chart", Chart).update(frame.chart)
        log = self.query_one("#run-events", RichLog)
        if frame.reset_events:
            log.clear()
        for ev in frame.new_events:
            log.write(event_line(ev))

    @on(ServingRead)
    def _apply_serving(self, message: ServingRead) -> None:
        if self.selected is None or Path(message.path) != self.selected:
            return
        widget = self.query_one("#run-serving", Static)
        widget.update(serving_line(message.servers))
        widget.display = bool(message.servers)

    @staticmethod
    def _values(v) -> Text:
        t, e = v.last_train, v.last_eval
        parts = [("loss", t.get("loss"), ".4f"), ("val", e.get("val_loss"), ".4f"),
                 ("best val", v.best_val_loss, ".4f"), ("bpb", e.get("val_bpb"), ".3f"),
                 ("tok/s", t.get("tokens_per_s"), ",.0f"), ("mfu", t.get("mfu"), ".1%"),
                 ("tokens", v.tokens or None, ",")]
        out = Text()
        for i, (label, value, spec) in enumerate(parts):
            if i:
                out.append("  ")
            out.append(f"{label} ", style="dim")
            out.append(format_value(value, spec))
        return out

    def _show_options(self) -> None:
        o = self.options
        smooth = f"ema {o.smoothing}" if o.smoothing else "raw"
        text = Text(f"x: {o.x_axis}  y: {'log' if o.log_y else 'linear'}  {smooth}", style="dim")
        if o.overlays:
            text.append(f"  overlay: {', '.join(short_name(Path(p).name) for p in o.overlays)}", style="dim")
        self.query_one("#chart-options", Static).update(text)

    def _set_options(self, **changes) -> None:
        from dataclasses import replace

        self.options = replace(self.options, **changes)
        self._show_options()
        self.refresh_now(force=True)

    # ---- actions -------------------------------------------------------------

    def action_toggle_log(self) -> None:
        self._set_options(log_y=not self.options.log_y)

    def action_toggle_axis(self) -> None:
        self._set_options(x_axis="tokens" if self.options.x_axis == "step" else "step")

    def action_cycle_smoothing(self) -> None:
        i = SMOOTHING.index(self.options.smoothing) if self.options.smoothing in SMOOTHING else 0
        self._set_options(smoothing=SMOOTHING[(i + 1) % len(SMOOTHING)])

    def action_toggle_overlay(self) -> None:
        table = self.query_one("#run-table", DataTable)
        if not self._row_keys or not 0 <= table.cursor_row < len(self._row_keys):
            return
        key = self._row_keys[table.cursor_row]
        overlays = list(self.options.overlays)
        if key in overlays:
            overlays.remove(key)
        else:
            overlays.append(key)
        self._set_options(overlays=tuple(overlays))

    def action_clear_overlays(self) -> None:
        self._set_options(overlays=())

    def action_stop_run(self) -> None:
        if self.selected is None:
            return
        try:
            pid = self.supervisor.stop(self.selected)
        except LabError as e:
            notify(self, str(e), severity="warning")
            return
        notify(self, f"stopping {self.selected.name} (pid {pid}): it writes a checkpoint and exits; "
                    "r resumes it")

    def action_resume_run(self) -> None:
        if self.selected is None:
            return
        try:
            self.supervisor.resume(self.selected)
        except LabError as e:
            notify(self, str(e), severity="warning")
            return
        notify(self, f"resuming {self.selected.name} from its latest checkpoint")
        self.refresh_now(force=True)
