"""The Queue tab: add, reorder, remove, run the queue with a detached runner, compare what finished.

The runner is the real ``python -m lab queue run``; the runs it starts are the
contract-keeping stand-in of tests/test_queue_fakerun.py (no torch, a step
every few milliseconds), so this tests the console's queue handling, not training.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from lab.queue.store import QueueStore
from lab.tui.app import LabApp
from test_tui_support import text_of, wait_for

FAKE_RUN = Path(__file__).resolve().parent / "test_queue_fakerun.py"


@pytest.mark.slow
def test_add_reorder_remove_and_run_the_queue_then_compare(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_QUEUE_RUN_COMMAND", f"{sys.executable} {FAKE_RUN}")
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.005")
    exp = tmp_path / "ablation.toml"
    exp.write_text('name = "abl"\n[training]\nsteps = 20\n[schedule]\nwarmup_steps = 2\n'
                   '[eval]\nevery = 5\n[checkpoint]\nevery = 5\n')
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.3, initial_tab="queue")

    async def body(pilot):
        pane = app.query_one("#queue-pane")
        await pilot.press("a")  # focus the experiment field
        await wait_for(pilot, lambda: app.focused.id == "queue-experiment", what=f"focus (now {app.focused})")
        await pilot.press(*"ablation.toml", "tab")
        await wait_for(pilot, lambda: app.focused.id == "queue-overrides")
        await pilot.press(*"optimizer.lr=0.003", "enter")
        await wait_for(pilot, lambda: len(store.read().entries) == 1)
        pane.add("ablation.toml", "optimizer.lr=0.03")
        pane.add("ablation.toml", "training.stepz=3")  # a typo is refused before it is queued
        await wait_for(pilot, lambda: any("training.stepz" in str(n.message) for n in app._notifications))
        pane.add("ablation.toml", "optimizer.lr=0.3")
        await wait_for(pilot, lambda: [e.id for e in pane.entries] == [1, 2, 3], what="three entries listed")
        # Select entry 2, move it to the top, remove entry 3.
        table = app.query_one("#queue-table")
        table.focus()
        table.move_cursor(row=1)
        await wait_for(pilot, lambda: pane.selected_id == "2")
        await pilot.press("shift+up")
        await wait_for(pilot, lambda: [e.id for e in store.read().entries] == [2, 1, 3])
        table.move_cursor(row=2)
        await wait_for(pilot, lambda: pane.selected_id == "3")
        await pilot.press("x")
        await wait_for(pilot, lambda: [e.id for e in store.read().entries] == [2, 1])
        # Start the runner (a detached `lab queue run`) and let it run both entries.
        await pilot.press("s")
        await wait_for(pilot, lambda: [e.status for e in store.read().entries] == ["done", "done"], timeout=90,
                       what="the queue to finish")
        runs_started = [Path(e.run_dir).name for e in store.read().entries]
        assert all(n.startswith("abl-") for n in runs_started)
        await wait_for(pilot, lambda: app.query_one("#compare-table").row_count == 2, timeout=20,
                       what="the comparison")
        chart = text_of(app.query_one("#compare-chart"))
        assert "abl" in chart and "step" in chart
        # Both differ only in optimizer.lr: that column is in the comparison.
        columns = [str(c.label) for c in app.query_one("#compare-table").ordered_columns]
        assert "optimizer.lr" in columns
        # Retry puts a finished entry back to pending.
        table.move_cursor(row=0)
        await wait_for(pilot, lambda: pane.selected_id == "2")
        await pilot.press("r")
        await wait_for(pilot, lambda: store.read().entries[0].status == "pending")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.focused.id == "queue-table", what="the queue tab")
            await body(pilot)
            app.supervisor.stop_queue_runners()
            for started in app.supervisor.started:  # leave no runner behind
                started.proc.wait(timeout=60)
    asyncio.run(main())


@pytest.mark.slow
def test_adding_a_scaling_study_file_starts_the_study_and_its_runs_are_queue_entries(tmp_path):
    import json

    from test_scale import _write_study

    study = _write_study(tmp_path, 'rule = "fixed"\ntokens = 10240')  # 3 tiny sizes, 40 CPU steps each
    runs = tmp_path / "runs"
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.3, initial_tab="queue")
    result = runs / "scaling" / "study" / "scaling.json"

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.focused.id == "queue-table", what="the queue tab")
            app.query_one("#queue-pane").add("study.toml")
            await wait_for(pilot, lambda: any("scaling study study.toml started" in str(n.message)
                                              for n in app._notifications), what="the start notice")
            assert [s.kind for s in app.supervisor.started] == ["scale"]
            await wait_for(pilot, lambda: len(app.query_one("#queue-pane").entries) == 3, timeout=60,
                           what="the study's three runs listed as queue entries")
            await wait_for(pilot, result.is_file, timeout=240, what="the study to finish and be fitted")
            for started in app.supervisor.started:
                started.proc.wait(timeout=60)
    asyncio.run(main())
    points = json.loads(result.read_text())["points"]
    assert [p["status"] for p in points] == ["done"] * 3
