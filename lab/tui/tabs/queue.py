"""The Queue tab: the ablation queue and sweeps, their runner, and a comparison of what finished.

The queue is ``<runs>/queue.json`` (:mod:`lab.queue.store`), edited under its
lock, so this tab, ``lab queue`` commands and runners can all change it at
once. The runner is a detached ``python -m lab queue run`` process (a sweep
file starts ``python -m lab sweep`` instead); closing the console leaves it
running. Finished runs are compared with :mod:`lab.run_comparison`: a table of their
numbers and differing config keys, and their validation curves overlaid.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Input, Static

from lab.processes import lower_thread_priority
from lab.tui.tabs.base import LabPane
from lab.tui.messages import QueueRead, notify
from lab.tui.tabs.monitor import state_text
from lab.tui.widgets.chart import Chart
from lab.views.formats import format_number
from lab.views.queue import COMPARE_METRICS, Comparison, QueueReader, QueueSnapshot, is_study_file, is_sweep_file
from lm.errors import LabError

class QueuePane(LabPane):
    """Add entries, reorder, remove, retry; start and stop the runner; compare finished runs."""

    INITIAL_FOCUS = "#queue-table"

    BINDINGS = [
        Binding("a", "focus_add", "Add",
                tooltip="add an experiment file (+ key=value overrides), or start a sweep or scaling-study file"),
        Binding("shift+up", "move('up')", "Move up", tooltip="move the selected entry up the queue"),
        Binding("shift+down", "move('down')", "Move down", tooltip="move the selected entry down the queue"),
        Binding("delete,x", "remove", "Remove", tooltip="remove the selected entry (not a running one)"),
        Binding("r", "retry", "Retry", tooltip="put a finished entry back to pending (it resumes its checkpoint)"),
        Binding("s", "start_runner", "Start runner", tooltip="start the queue runner (a detached lab queue run)"),
        Binding("t", "stop_runner", "Stop runner", tooltip="stop the runner: its runs checkpoint and resume next time"),
        Binding("c", "cycle_metric", "Metric",
                tooltip="comparison curves: val loss, train loss, learning rate, grad norm (as lab compare --metric)"),
    ]

    @classmethod
    def for_app(cls, app, **kwargs) -> "QueuePane":
        return cls(app.supervisor, app.cwd, app.poll_interval, **kwargs)

    def __init__(self, supervisor, cwd: Path, poll_interval: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.supervisor = supervisor
        self.cwd = cwd
        self.poll_interval = poll_interval
        self.entries: list = []
        self.why: dict[int, str] = {}
        self.metric = COMPARE_METRICS[0][0]
        self.reader = QueueReader(supervisor, default_runs=cwd / os.environ.get("LAB_RUNS_DIR", "runs"))
        self._busy = False
        self._again = False
        self._keys: list[str] = []
        self.selected_id: str | None = None

    @property
    def store(self):
        from lab.queue.store import QueueStore

        return QueueStore(self.supervisor.runs_dir)

    def compose(self) -> ComposeResult:
        with Horizontal(id="queue-add"):
            yield Input(placeholder="experiment, sweep or study file (a: add)", id="queue-experiment", compact=True)
            yield Input(placeholder="overrides: key=value ...", id="queue-overrides", compact=True)
        yield Static("", id="queue-runner")
        with VerticalScroll(id="queue-body"):
            yield DataTable(id="queue-table", cursor_type="row")
            yield Static("", id="queue-why")
            yield Static(self._compare_title(), id="compare-title", classes="side-title")
            yield DataTable(id="compare-table", cursor_type="none", show_cursor=False)
            yield Chart("", id="compare-chart")

    def on_mount(self) -> None:
        self.query_one("#queue-table", DataTable).add_columns("id", "status", "step", "best val", "tries", "run",
                                                               "experiment")
        self.refresh_now()
        self.set_interval(self.poll_interval, self.refresh_now)

    # ---- reading -------------------------------------------------------------

    def refresh_now(self) -> None:
        """Re-read the queue in a worker (once more right after the current read, if one is in flight)."""
        if self._busy:
            self._again = True
            return
        self._busy = True
        chart = self.query_one("#compare-chart", Chart)
        self._read(*chart.plot_size(), self.metric)

    @work(thread=True, group="queue-read", exit_on_error=False)
    def _read(self, width: int, height: int, metric: str) -> None:
        lower_thread_priority()
        snapshot = QueueSnapshot(error="the queue could not be read")
        try:
            snapshot = self.reader.read(width, height, metric)
        finally:  # always answered: the UI thread clears its in-flight flag
            self.post_message(QueueRead(snapshot))

    @on(Chart.Resized)
    def _chart_resized(self, message: Chart.Resized) -> None:
        message.stop()
        self.refresh_now()

    @on(QueueRead)
    def _apply(self, message: QueueRead) -> None:
        message.stop()
        self._busy = False
        if self._again:
            self._again = False
            self.refresh_now()
        snap: QueueSnapshot = message.snapshot
        status = self.query_one("#queue-runner", Static)
        if snap.error:
            status.update(Text(snap.error, style="red"))
            return
        self.why = snap.why
        self.entries = [e for e, _ in snap.entries]
        table = self.query_one("#queue-table", DataTable)
        keys = [str(e.id) for e in self.entries]
        rows = {str(e.id): self._row(e, st) for e, st in snap.entries}
        if keys != self._keys:
            table.clear()
            for k in keys:
                table.add_row(*rows[k], key=k)
            self._keys = keys
            if self.selected_id in keys:
                table.move_cursor(row=keys.index(self.selected_id), animate=False)
        else:
            for k in keys:
                for col, value in zip(table.ordered_columns, rows[k]):
                    table.update_cell(k, col.key, value, update_width=True)
        pending = sum(1 for e in self.entries if e.status == "pending")
        running = sum(1 for e in self.entries if e.status == "running")
        if snap.runners:
            who = ", ".join(f"pid {r.pid}" for r in snap.runners)
            line = Text(f"runner: running ({who})", style="cyan")
        else:
            line = Text("runner: stopped (s starts it)", style="dim")
        line.append(f"   {len(self.entries)} entries, {pending} pending, {running} running", style="dim")
        status.update(line)
        if snap.comparison is not None:
            comparison, chart = snap.comparison
            self._show_comparison(comparison, chart)
        self._show_why()

    def _show_why(self) -> None:
        """Why the selected entry failed (the last lines of its log) and the command that retries it."""
        why = self.why.get(int(self.selected_id)) if self.selected_id and self.selected_id.isdigit() else None
        panel = self.query_one("#queue-why", Static)
        panel.display = bool(why)
        if why:
            head, _, rest = why.partition("\n")
            text = Text(head, style="bold red")
            if rest:
                text.append("\n" + rest, style="dim")
            panel.update(text)

    def _compare_title(self) -> Text:
        label = dict(COMPARE_METRICS)[self.metric]
        return Text.assemble(("finished runs", "bold"), (f"  curves: {label} (c: metric)", "dim"))

    def action_cycle_metric(self) -> None:
        """The comparison chart draws the next metric (val loss, train loss, learning rate, grad norm)."""
        names = [m for m, _ in COMPARE_METRICS]
        self.metric = names[(names.index(self.metric) + 1) % len(names)]
        self.query_one("#compare-title", Static).update(self._compare_title())
        self.refresh_now()

    @staticmethod
    def _row(e, st) -> tuple:
        step = f"{st.step}/{st.total_steps}" if st is not None and st.total_steps else ""
        best = format_number(st.best_val_loss, ".4f") if st is not None and st.best_val_loss is not None else ""
        from lab.scale import entry_label

        what = entry_label(e) or (f"sweep {e.sweep} #{e.trial}" if e.sweep else Path(e.experiment).name)
        status = state_text(e.status)
        if e.pruned:
            status.append(" (pruned)")
        return (str(e.id), status, step, best, str(e.attempts), Text(Path(e.run_dir).name if e.run_dir else ""),
                Text(" ".join([what, *e.overrides])))

    @on(DataTable.RowHighlighted, "#queue-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row != event.data_table.cursor_row:
            return  # stale: the table was rebuilt since
        if event.row_key is not None:
            self.selected_id = event.row_key.value
            self._show_why()

    def _show_comparison(self, comparison: Comparison | None, chart: Text | None) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        if comparison is None:
            self.query_one("#compare-chart", Chart).update(Text("no finished runs yet", style="dim"))
            return
        from lab.run_comparison import short_labels

        headers = ["run", "steps", "best val", "bpb", "tok/s", *[k for k, _ in comparison.diff[:4]]]
        labels = short_labels([row["run"] for row in comparison.rows])  # stamps kept where names would clash
        cells = []
        for i, row in enumerate(comparison.rows):
            diffs = [format_number(values[i]) for _, values in comparison.diff[:4]]
            cells.append([labels[i], str(row["steps"]), format_number(row["best_val_loss"], ".4f"),
                          format_number(row["best_val_bpb"], ".3f"), format_number(row["tokens_per_s"], ".0f"),
                          *diffs])
        # Explicit widths: auto-width after clear(columns=True) sometimes keeps the header's width.
        for c, header in enumerate(headers):
            table.add_column(header, width=max([len(header)] + [len(str(r[c])) for r in cells]))
        for r in cells:
            table.add_row(*r)
        self.query_one("#compare-chart", Chart).update(chart or "")

    # ---- actions -------------------------------------------------------------

    def _selected(self):
        entry = next((e for e in self.entries if str(e.id) == self.selected_id), None)
        if entry is None:
            notify(self, "select an entry first (arrow keys)", severity="warning")
        return entry

    def _do(self, fn, done: str) -> None:
        try:
            fn()
        except LabError as e:
            notify(self, str(e), severity="warning", timeout=8)
            return
        if done:
            notify(self, done)
        self.refresh_now()

    def action_focus_add(self) -> None:
        self.query_one("#queue-experiment", Input).focus()

    @on(Input.Submitted, "#queue-experiment")
    @on(Input.Submitted, "#queue-overrides")
    def _submitted(self) -> None:
        self.add(self.query_one("#queue-experiment", Input).value,
                 self.query_one("#queue-overrides", Input).value)

    def add(self, experiment: str, overrides: str = "") -> None:
        """Queue ``experiment`` with space-separated ``key=value`` overrides (or start a sweep or study file)."""
        experiment = experiment.strip()
        if not experiment:
            notify(self, "type an experiment file first", severity="warning")
            return
        try:
            items = shlex.split(overrides)
        except ValueError as e:
            notify(self, f"overrides: {e}", severity="error")
            return
        path = Path(experiment).expanduser()
        path = path if path.is_absolute() else self.cwd / path
        if path.is_file() and is_sweep_file(path):
            self._do(lambda: self.supervisor.start_sweep(path), f"sweep {path.name} started: its trials are "
                                                                  "queue entries")
            return
        if path.is_file() and is_study_file(path):
            self._do(lambda: self.supervisor.start_study(path), f"scaling study {path.name} started: its runs "
                                                                  "are queue entries, fitted as they finish")
            return

        def add():
            from lab.queue.validate import resolve_entry
            from lm.config.loader import resolve_experiment_path

            resolved = resolve_experiment_path(experiment, self.cwd)
            cfg = resolve_entry(resolved, items)
            entry = self.store.add(resolved, items, name=cfg.name)
            notify(self, f"queued {entry.id}: {entry.label()}")
            # Only a queued entry clears the overrides: after a refusal they stay, to be fixed.
            self.query_one("#queue-overrides", Input).value = ""

        self._do(add, "")

    def action_move(self, direction: str) -> None:
        entry = self._selected()
        if entry is not None:
            self._do(lambda: self.store.move(entry.id, direction), "")

    def action_remove(self) -> None:
        entry = self._selected()
        if entry is not None:
            self._do(lambda: self.store.remove([entry.id]), f"removed {entry.id}")

    def action_retry(self) -> None:
        entry = self._selected()
        if entry is not None:
            self._do(lambda: self.store.retry([entry.id]), f"entry {entry.id} is pending again")

    def action_start_runner(self) -> None:
        if self.supervisor.queue_runners():
            notify(self, "a runner is already running")
            return
        self._do(lambda: self.supervisor.start_queue_runner(), "runner started: pending entries run one by one")

    def action_stop_runner(self) -> None:
        def stop():
            if not self.supervisor.stop_queue_runners():
                raise LabError("no runner is running")
        self._do(stop, "asked the runner to checkpoint its runs and exit")
