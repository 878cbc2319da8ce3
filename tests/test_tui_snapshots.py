"""Snapshots of every tab at 80x24 and 120x40 (pytest-textual-snapshot; update with --snapshot-update).

Deterministic by construction: a fixed runs folder of fake runs (fixed names,
numbers and start times, no clocks shown), a fixed experiment file and a fixed
queue. A snapshot is taken once the tab has drawn what its workers compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.queue.store import QueueStore
from lab.tui.app import LabApp
from test_tui_support import make_runs_dir, text_of, wait_for

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
EXPERIMENT = """name = "demo"
description = "a fixed experiment for the console's snapshots"

[data]
source = "builtin"

[model]
preset = "tiny"

[training]
steps = 600
device = "cpu"

[schedule]
warmup_steps = 50
"""


@pytest.fixture
def world(tmp_path) -> Path:
    """A directory to run the console in: experiments/demo.toml, runs/ with fake runs and a queue."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "demo.toml").write_text(EXPERIMENT)
    runs = make_runs_dir(tmp_path)
    (runs / "baseline-20250101-120000" / "checkpoints" / "best.pt").write_bytes(b"")  # listed by Chat
    store = QueueStore(runs)
    for name, overrides in (("baseline-20250101-120000", []), ("post_norm-20250101-130000", ["model.norm=post"])):
        e = store.add(tmp_path / "experiments" / "demo.toml", overrides, name="demo")
        with store.transaction() as state:
            entry = state.get(e.id)
            entry.status, entry.run_dir, entry.attempts = "done", str(runs / name), 1
    store.add(tmp_path / "experiments" / "demo.toml", ["optimizer.lr=0.01"], name="demo")
    return tmp_path


async def _settled(pilot, tab: str) -> None:
    """Wait until the tab shows what its workers compute (frames, estimates, the queue)."""
    app = pilot.app
    if tab == "monitor":
        pane = app.query_one("#monitor-pane")
        chart = app.query_one("#run-chart")
        await wait_for(pilot, lambda: pane.displayed_step == 40 and "train loss" in text_of(chart))
    elif tab == "config":
        pane = app.query_one("#config-pane")
        await wait_for(pilot, lambda: pane.form_ready and "fits" in text_of(app.query_one("#calc-verdict")))
    elif tab == "calculator":
        pane = app.query_one("#calculator-pane")
        await wait_for(pilot, lambda: len(pane.results) == 2)
    elif tab == "queue":
        pane = app.query_one("#queue-pane")
        await wait_for(pilot, lambda: len(pane.entries) == 3 and app.query_one("#compare-table").row_count == 2)
        # The chart is sized when a read is queued; read once more now that layout is final.
        chart = app.query_one("#compare-chart")

        def chart_fits() -> bool:  # drawn at the chart's final size, not the size a first read saw
            widest = max((len(line) for line in text_of(chart).splitlines()), default=0)
            return not pane._busy and widest == chart.plot_size()[0]

        pane.refresh_now()
        await wait_for(pilot, chart_fits)
    elif tab == "chat":
        await wait_for(pilot, lambda: str(app.query_one("#chat-run").value).endswith("baseline-20250101-120000"))
    from textual.widgets import Input

    for field in app.query(Input):  # a blinking cursor is on or off depending on when the picture is taken
        field.cursor_blink = False
    await pilot.pause(0.3)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("tab", ["config", "monitor", "calculator", "queue", "chat"])
def test_tab_snapshot(snap_compare, world, monkeypatch, tab, size):
    monkeypatch.chdir(world)
    # The cpu profile is scaled to the host (cores, memory): pin the 2-core, 24 GiB box the pictures were
    # taken on, so a machine of another size draws the same screens.
    monkeypatch.setattr("lm.calc.devices.host_cpu_cores", lambda: 2)
    monkeypatch.setattr("lm.calc.devices._host_memory_gib", lambda: 23.540176391601562)
    app = LabApp("runs", cwd=world, experiment="experiments/demo.toml", initial_tab=tab, poll_interval=60.0)

    async def run_before(pilot):
        await _settled(pilot, tab)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)
