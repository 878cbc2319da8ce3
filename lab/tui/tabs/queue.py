"""The Queue tab: the ablation queue and sweeps, their runner, and a comparison of what finished.

The queue is ``<runs>/queue.json`` (:mod:`lab.queue.store`), edited under its
lock, so this tab, ``lab queue`` commands and runners can all change it at
once. The runner is a detached ``python -m lab queue run`` process (a sweep
file starts ``python -m lab sweep`` instead); closing the console leaves it
running. Finished runs are compared with :mod:`lab.compare`: a table of their
numbers and differing config keys, and their validation curves overlaid.
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Input, Static

from lab.processes import lower_thread_priority
from lab.tui.messages import QueueRead, notify
from lab.tui.tabs.monitor import state_text
from lab.tui.widgets.chart import Chart
from lab.views.charts import ChartCurve, render_chart
from lab.views.formats import format_number
from lm.errors import LabError

MAX_COMPARED = 12  # the most recent finished runs compared


def is_sweep_file(path: Path) -> bool:
    """Whether a TOML file is a sweep (a ``base`` experiment plus ``params``/``search``)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return "base" in data and ("params" in data or "search" in data)


class Comparison:
    """Finished queue runs read through lab.compare: summary rows, differing keys, curves."""

    def __init__(self, run_dirs: list[str]):
        from lab.compare import config_diff, load_run, summarize

        self.runs = [load_run(p) for p in run_dirs]
        self.rows = [summarize(r) for r in self.runs]
        self.diff = config_diff(self.runs) if len(self.runs) > 1 else []

    def curves(self) -> list[ChartCurve]:
        from lab.compare import comparison_curves, short_labels

        out = []
        for curve, label in zip(comparison_curves(self.runs, "val_loss"), short_labels([r.label for r in self.runs])):
            out.append(ChartCurve(label, curve.xs, curve.ys))
        return out


class QueuePane(Vertical):
    """Add entries, reorder, remove, retry; start and stop the runner; compare finished runs."""

    initial_focus = "#queue-table"
    """The widget focused when the tab is opened."""

    BINDINGS = [
        Binding("a", "focus_add", "Add",
                tooltip="add an experiment file (+ key=value overrides), or start a sweep file"),
        Binding("shift+up", "move('up')", "Move up", tooltip="move the selected entry up the queue"),
        Binding("shift+down", "move('down')", "Move down", tooltip="move the selected entry down the queue"),
        Binding("delete,x", "remove", "Remove", tooltip="remove the selected entry (not a running one)"),
        Binding("r", "retry", "Retry", tooltip="put a finished entry back to pending (it resumes its checkpoint)"),
        Binding("s", "start_runner", "Start runner", tooltip="start the queue runner (a detached lab queue run)"),
        Binding("t", "stop_runner", "Stop runner", tooltip="stop the runner: its runs checkpoint and resume next time"),
    ]

    def __init__(self, supervisor, cwd: Path, poll_interval: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.supervisor = supervisor
        self.cwd = cwd
        self.poll_interval = poll_interval
        self.entries: list = []
        self._compare_key: tuple = ()
        self._comparison: Comparison | None = None
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
            yield Input(placeholder="experiment or sweep file (a: add)", id="queue-experiment", compact=True)
            yield Input(placeholder="overrides: key=value ...", id="queue-overrides", compact=True)
        yield Static("", id="queue-runner")
        with VerticalScroll(id="queue-body"):
            yield DataTable(id="queue-table", cursor_type="row")
            yield Static("finished runs", classes="side-title")
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
        self._read(*chart.plot_size())

    @work(thread=True, group="queue-read", exit_on_error=False)
    def _read(self, width: int, height: int) -> None:
        from lm.runs import RunDir

        lower_thread_priority()
        try:
            try:
                state = self.store.read()
            except LabError as e:
                self.post_message(QueueRead([], [], error=str(e)))
                return
            rows = []
            for e in state.entries:
                st = RunDir(e.run_dir).status() if e.run_dir and Path(e.run_dir).is_dir() else None
                rows.append((e, st))
            runners = self.supervisor.queue_runners()
            done = tuple(e.run_dir for e in state.entries if e.status == "done" and e.run_dir)[-MAX_COMPARED:]
            comparison = None
            if (done, width, height) != self._compare_key:
                if self._compare_key[:1] != (done,):
                    self._comparison = Comparison(list(done)) if done else None
                self._compare_key = (done, width, height)
                comparison = (self._comparison, render_chart(self._comparison.curves(), width, height, xlabel="step",
                                                             empty="no validation points")
                              if self._comparison else None)
            self.post_message(QueueRead(rows, runners, comparison))
        finally:
            self._busy = False
            if self._again:
                self._again = False
                self.app.call_from_thread(self.refresh_now)

    @on(Chart.Resized)
    def _chart_resized(self, message: Chart.Resized) -> None:
        message.stop()
        self.refresh_now()

    @on(QueueRead)
    def _apply(self, message: QueueRead) -> None:
        message.stop()
        status = self.query_one("#queue-runner", Static)
        if message.error:
            status.update(Text(message.error, style="red"))
            return
        self.entries = [e for e, _ in message.entries]
        table = self.query_one("#queue-table", DataTable)
        keys = [str(e.id) for e in self.entries]
        rows = {str(e.id): self._row(e, st) for e, st in message.entries}
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
        if message.runners:
            who = ", ".join(f"pid {r.pid}" for r in message.runners)
            line = Text(f"runner: running ({who})", style="cyan")
        else:
            line = Text("runner: stopped (s starts it)", style="dim")
        line.append(f"   {len(self.entries)} entries, {pending} pending, {running} running", style="dim")
        status.update(line)
        if message.comparison is not None:
            comparison, chart = message.comparison
            self._show_comparison(comparison, chart)

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

    def _show_comparison(self, comparison: Comparison | None, chart: Text | None) -> None:
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        if comparison is None:
            self.query_one("#compare-chart", Chart).update(Text("no finished runs yet", style="dim"))
            return
        from lab.compare import short_labels

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
        """Queue ``experiment`` with space-separated ``key=value`` overrides (or start a sweep file)."""
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

        def add():
            from lab.queue.validate import resolve_entry
            from lm.config.loader import resolve_experiment_path

            resolved = resolve_experiment_path(experiment, self.cwd)
            cfg = resolve_entry(resolved, items)
            entry = self.store.add(resolved, items, name=cfg.name)
            notify(self, f"queued {entry.id}: {entry.label()}")

        self._do(add, "")
        self.query_one("#queue-overrides", Input).value = ""

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
