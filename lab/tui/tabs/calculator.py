"""The Calculator tab: a config's parameters, FLOPs, memory and speed on several devices side by side.

Pick an experiment (or edit its model numbers in place) and the devices to
compare (Apple M4 and RTX 4090 to start with); every change re-runs
:func:`lm.calc.estimate` for each device in a worker (pure arithmetic, no
torch, milliseconds) and the table and the memory bars update.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Input, Label, Select, SelectionList, Static

from lab.tui.tabs.base import LabPane
from lab.tui.messages import CalcDone
from lm.errors import LabError

DEFAULT_DEVICES = ("m4", "rtx4090")
# (input id, label, where the number lives in the experiment)
NUMBERS = (("d_model", "d_model", "model"), ("num_layers", "layers", "model"), ("num_heads", "heads", "model"),
           ("d_ff", "d_ff", "model"), ("vocab_size", "vocab", "model"), ("context_length", "context", "model"),
           ("batch_size", "batch", "training"))
ROWS = ("parameters", "FLOPs/token", "FLOPs/step", "memory", "capacity", "fits", "step time", "tokens/s", "MFU")
BAR_WIDTH = 24


def memory_bar(total: float, capacity: float, width: int = BAR_WIDTH) -> Text:
    """A bar of memory against capacity: green while it fits, red (and full) when it does not."""
    frac = total / capacity if capacity > 0 else float("inf")
    filled = min(width, max(0, round(min(frac, 1.0) * width)))
    style = "green" if frac <= 0.85 else "yellow" if frac <= 1.0 else "bold red"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    return bar


def estimate_cells(est) -> list[str | Text]:
    """The column of one device: a cell per row of ROWS."""
    from lm.calc.units import fmt_bytes, fmt_count, fmt_flops, fmt_seconds

    m, t, v = est.memory, est.time, est.verdict
    fits = Text("✓ fits", style="green") if v.fits else Text("✗ over", style="bold red")
    fits.append(f" (≤{v.max_batch_size})" if v.max_batch_size else "")
    return [fmt_count(est.params.total), fmt_flops(est.flops.per_token),
            fmt_flops(est.flops.per_token * est.settings.tokens_per_step), fmt_bytes(m.total), fmt_bytes(m.capacity),
            fits, fmt_seconds(t.step_s), fmt_count(t.tokens_per_s), f"{t.mfu:.0%}"]


class CalculatorPane(LabPane):
    """Config numbers and devices at the top, the comparison table and memory bars below."""

    INITIAL_FOCUS = "#calc-config"

    BINDINGS = [Binding("ctrl+r", "reset_numbers", "Reset numbers", tooltip="put the chosen config's own numbers back")]

    @classmethod
    def for_app(cls, app, **kwargs) -> "CalculatorPane":
        return cls(app.cwd, app.experiment, **kwargs)

    def __init__(self, cwd: Path, experiment: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cwd = cwd
        self.experiment = experiment
        self.base = None  # the ExperimentConfig the numbers start from
        self._token = 0
        self._filling = False
        self.results: list = []

    def compose(self) -> ComposeResult:
        from lm.calc import list_devices
        from lm.config.loader import list_experiment_files

        files = list_experiment_files(self.cwd)
        first = self.experiment if self.experiment in files else next(
            (f for f in files if Path(f).stem == "quickstart"), Select.NULL)
        with Horizontal(id="calc-top"):
            with Vertical(id="calc-left"):
                yield Select([(f, f) for f in files], id="calc-config", compact=True, prompt="(defaults)",
                             value=first)
                with Grid(id="calc-numbers"):
                    for key, label, _ in NUMBERS:
                        yield Label(label, classes="calc-label")
                        yield Input(id=f"calc-{key}", classes="calc-number", compact=True, type="integer")
            devices = list_devices()
            yield SelectionList(*[(d.key, d.key, d.key in DEFAULT_DEVICES) for d in devices], id="calc-devices")
        with VerticalScroll(id="calc-results"):
            yield Static("", id="calc-error")
            yield DataTable(id="calc-table", cursor_type="none", zebra_stripes=True, show_cursor=False)
            yield Static("", id="calc-bars")

    def on_mount(self) -> None:
        sel = self.query_one("#calc-config", Select)
        self._load(None if sel.value is Select.NULL else str(sel.value))

    # ---- inputs --------------------------------------------------------------

    def _load(self, path: str | None) -> None:
        from lm.config.loader import load_experiment
        from lm.config.schema import ExperimentConfig

        try:
            self.base = load_experiment(path, base_dir=self.cwd, check_paths=False) if path else ExperimentConfig()
        except LabError as e:
            self.query_one("#calc-error", Static).update(Text(str(e), style="red"))
            return
        self.action_reset_numbers()

    def action_reset_numbers(self) -> None:
        """Put the chosen config's own numbers back in the inputs."""
        if self.base is None:
            return
        self._filling = True
        for key, _, section in NUMBERS:
            value = getattr(getattr(self.base, section), key)
            if key == "d_ff":
                value = self.base.model.ffn_dim
            self.query_one(f"#calc-{key}", Input).value = str(value)
        self._filling = False
        self.recompute()

    @on(Select.Changed, "#calc-config")
    def _config_changed(self, event: Select.Changed) -> None:
        self._load(None if event.value is Select.NULL else str(event.value))

    @on(Input.Changed, ".calc-number")
    @on(SelectionList.SelectedChanged, "#calc-devices")
    def _numbers_changed(self) -> None:
        if not self._filling:
            self.recompute()

    def set_number(self, key: str, value: int | str) -> None:
        """Type a number into one of the inputs (tests and scripted use)."""
        self.query_one(f"#calc-{key}", Input).value = str(value)

    def current_config(self):
        """The base experiment with the numbers from the inputs; LabError naming a bad input."""
        if self.base is None:
            raise LabError("no config loaded")
        model, training = {}, {}
        problems = []
        for key, label, section in NUMBERS:
            raw = self.query_one(f"#calc-{key}", Input).value.strip()
            try:
                n = int(raw)
            except ValueError:
                problems.append(f"{label} must be a whole number, got {raw!r}")
                continue
            if n < 1:
                problems.append(f"{label} must be at least 1, got {n}")
            (model if section == "model" else training)[key] = n
        if problems:
            raise LabError("; ".join(problems))
        m = dataclasses.replace(self.base.model, **model)
        if m.problems():
            raise LabError("; ".join(m.problems()))
        return dataclasses.replace(self.base, model=m, training=dataclasses.replace(self.base.training, **training))

    def recompute(self) -> None:
        """Estimate the current numbers on every selected device (in a worker)."""
        devices = list(self.query_one("#calc-devices", SelectionList).selected)
        self._token += 1
        try:
            cfg = self.current_config()
        except LabError as e:
            self.query_one("#calc-error", Static).update(Text(str(e), style="bold red"))
            return
        self.query_one("#calc-error", Static).update("")
        self._estimate(cfg, devices, self._token)

    @work(thread=True, exclusive=True, group="calculator", exit_on_error=False)
    def _estimate(self, cfg, devices: list[str], token: int) -> None:
        from lm.calc import estimate

        results = []
        for d in devices:
            try:
                results.append(estimate(cfg, d))
            except LabError as e:
                results.append(f"{d}: {e}")
        self.post_message(CalcDone(results, token=token))

    # ---- results -------------------------------------------------------------

    @on(CalcDone)
    def _show(self, message: CalcDone) -> None:
        message.stop()
        if message.token != self._token:
            return
        self.results = message.results
        table = self.query_one("#calc-table", DataTable)
        table.clear(columns=True)
        ok = [r for r in message.results if not isinstance(r, str)]
        errors = [r for r in message.results if isinstance(r, str)]
        if errors:
            self.query_one("#calc-error", Static).update(Text("\n".join(errors), style="red"))
        if not ok:
            self.query_one("#calc-bars", Static).update(Text("select one or more devices", style="dim"))
            return
        columns = [estimate_cells(est) for est in ok]
        # Explicit widths from the content: after clear(columns=True) DataTable's auto width can keep only
        # the headers' widths (the table collapsed to '', 'm4', 'rtx4090' after switching experiment).
        table.add_column("", key="row", width=max(len(r) for r in ROWS))
        for est, col in zip(ok, columns):
            width = max([len(est.device.key)] + [len(c.plain if isinstance(c, Text) else str(c)) for c in col])
            table.add_column(est.device.key, key=est.device.key, width=width)
        for i, row in enumerate(ROWS):
            table.add_row(row, *[col[i] for col in columns], key=row)
        bars = Text()
        width = max(len(e.device.key) for e in ok)
        from lm.calc.units import fmt_bytes

        for est in ok:
            m = est.memory
            bars.append(f"{est.device.key:<{width}} ")
            bars.append_text(memory_bar(m.total, m.capacity))
            bars.append(f" {fmt_bytes(m.total)} / {fmt_bytes(m.capacity)} ({m.total / m.capacity:.0%})\n")
        self.query_one("#calc-bars", Static).update(bars)

    def value(self, row: str, device: str) -> str:
        """The text of one table cell (tests)."""
        cell = self.query_one("#calc-table", DataTable).get_cell(row, device)
        return cell.plain if isinstance(cell, Text) else str(cell)
