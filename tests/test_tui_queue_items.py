"""The Queue tab (issue 11): a failed entry says why (its log's last lines) and how to retry it, a refused
add keeps what was typed, the comparison curves switch metric like ``lab compare --metric``."""

from __future__ import annotations

import asyncio

from lab.queue.store import QueueStore
from lab.tui.app import LabApp
from lab.views.queue import retry_command, why_failed
from test_tui_support import make_runs_dir, text_of, wait_for


def _world(tmp_path):
    exp = tmp_path / "demo.toml"
    exp.write_text('name = "demo"\n[data]\nsource = "builtin"\n[model]\npreset = "tiny"\n[training]\nsteps = 600\n'
                   'device = "cpu"\n[schedule]\nwarmup_steps = 50\n')
    runs = make_runs_dir(tmp_path)
    (runs / "nope-20250101-150000" / "train.log").write_text(
        "=== lab queue 2025-01-01 15:00:00: lab run demo.toml\nstep 40 loss 5.47\n"
        "lab: data error: out of memory on cpu: the batch needs 12.5 GiB (training.batch_size=4096)\n")
    store = QueueStore(runs)
    for name, status, overrides in (("baseline-20250101-120000", "done", []),
                                    ("post_norm-20250101-130000", "done", ["model.norm=post"]),
                                    ("nope-20250101-150000", "failed", ["training.batch_size=4096"])):
        e = store.add(exp, overrides, name="demo")
        with store.transaction() as state:
            entry = state.get(e.id)
            entry.status, entry.run_dir, entry.attempts = status, str(runs / name), 1
            entry.message = "bad input (see train.log)" if status == "failed" else ""
    return exp, runs, store


def test_why_failed_names_the_log_lines_and_the_retry_command(tmp_path):
    _, runs, store = _world(tmp_path)
    entry = store.read().get(3)
    why = why_failed(entry, runs, default_runs=tmp_path / "elsewhere")
    assert why.splitlines()[0] == "entry 3 failed: bad input (see train.log)"
    assert "out of memory on cpu" in why and "train.log" in why
    assert f"lab queue --runs-dir {runs} retry 3" in why
    assert retry_command(3, runs, default_runs=runs) == "lab queue retry 3"


def test_the_queue_tab_shows_why_keeps_a_refused_add_and_switches_metric(tmp_path):
    exp, runs, store = _world(tmp_path)
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.3, initial_tab="queue")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#queue-pane")
            await wait_for(pilot, lambda: len(pane.entries) == 3, what="the entries")
            table = app.query_one("#queue-table")
            table.focus()
            table.move_cursor(row=2)
            await wait_for(pilot, lambda: pane.selected_id == "3")
            why = app.query_one("#queue-why")
            await wait_for(pilot, lambda: why.display and "out of memory" in text_of(why), what="why it failed")
            assert "retry 3" in text_of(why)
            table.move_cursor(row=0)  # a done entry has nothing to explain
            await wait_for(pilot, lambda: not why.display)
            # A refused add keeps the typed overrides, to be fixed rather than retyped.
            overrides = app.query_one("#queue-overrides")
            overrides.value = "training.stepz=3 optimizer.lr=0.01"
            pane.add(str(exp), overrides.value)
            await wait_for(pilot, lambda: any("training.stepz" in str(n.message) for n in app._notifications))
            assert overrides.value == "training.stepz=3 optimizer.lr=0.01" and len(store.read().entries) == 3
            pane.add(str(exp), "optimizer.lr=0.01")
            await wait_for(pilot, lambda: len(store.read().entries) == 4)
            assert overrides.value == ""
            # The comparison switches metric: val loss -> train loss -> lr.
            chart = app.query_one("#compare-chart")
            await wait_for(pilot, lambda: "baseline" in text_of(chart), what="the comparison chart")
            table.focus()
            await pilot.press("c")
            await wait_for(pilot, lambda: "train loss" in text_of(app.query_one("#compare-title")))
            await pilot.press("c")
            await wait_for(pilot, lambda: "learning rate" in text_of(app.query_one("#compare-title")))
            await wait_for(pilot, lambda: pane.reader._key[-1] == "lr" and not pane._busy, what="an lr read")

    asyncio.run(main())
