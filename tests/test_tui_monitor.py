"""The Monitor tab on fake run directories: listing, live tailing, chart options, quitting with live runs."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time

from lab.tui.app import LabApp
from test_tui_support import make_run, make_runs_dir, text_of, wait_for


def run_app(app, body, size=(120, 40)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.query_one("#monitor-pane").runs, what="the run list")
            await body(pilot)
    asyncio.run(main())


def writer(path, start: int, count: int, every: float, stop: threading.Event) -> threading.Thread:
    """Append ``count`` train records to a metrics file, one every ``every`` seconds."""
    def go():
        with open(path, "a") as f:
            for step in range(start, start + count):
                if stop.is_set():
                    return
                f.write(json.dumps({"type": "train", "step": step, "tokens": step * 64, "time": step * 0.01,
                                    "loss": 3.0 - step * 1e-3, "ppl": 20.0, "lr": 1e-3, "grad_norm": 1.0,
                                    "tokens_per_s": 6400.0}) + "\n")
                f.flush()
                time.sleep(every)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_the_monitor_lists_runs_and_follows_the_selected_one_as_it_grows(tmp_path):
    runs = make_runs_dir(tmp_path)
    live = runs / "lr_1e-2-20250101-140000"
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.5, initial_tab="monitor")

    async def body(pilot):
        pane = app.query_one("#monitor-pane")
        assert [r.name for r in pane.runs][0] == "nope-20250101-150000"  # newest first
        pane.select(live)
        await wait_for(pilot, lambda: pane.displayed_step == 220, what="the selected run's frame")
        header = text_of(app.query_one("#run-header"))
        assert "lr_1e-2-20250101-140000" in header and "step 220/600" in header and "ETA 19s" in header
        assert "val loss" in text_of(app.query_one("#run-chart"))
        stop = threading.Event()
        t = writer(live / "metrics.jsonl", 221, 30, 0.01, stop)
        await wait_for(pilot, lambda: pane.displayed_step == 250, what="the appended records")
        t.join()
        assert text_of(app.query_one("#spark-value-loss")) == f"{3.0 - 250e-3:.3g}"
        # Chart options redraw at once.
        await pilot.press("l", "x", "m")
        await wait_for(pilot, lambda: "tokens" in text_of(app.query_one("#run-chart")))
        opts = text_of(app.query_one("#chart-options"))
        assert "x: tokens" in opts and "y: log" in opts and "ema 10" in opts
        # Overlay the highlighted run (the cursor is on the selected run): its curve joins the chart.
        await pilot.press("down")
        await wait_for(pilot, lambda: pane.selected.name == "post_norm-20250101-130000")
        await pilot.press("o")
        await wait_for(pilot, lambda: "overlay: post_norm" in text_of(app.query_one("#chart-options")))
        await pilot.press("up")
        await wait_for(pilot, lambda: pane.selected == live)
        await wait_for(pilot, lambda: "post_norm" in text_of(app.query_one("#run-chart")))
        # Stopping a run that is not running says so instead of signalling anything.
        await pilot.press("down", "down", "down")
        await wait_for(pilot, lambda: pane.selected.name == "baseline-20250101-120000")
        await pilot.press("s")
        await wait_for(pilot, lambda: any("is done, not running" in str(n.message) for n in app._notifications),
                       what="the refusal")

    run_app(app, body)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def _live_run(runs, name, pid):
    run = make_run(runs, name, state="running", steps=10, total=100)
    st = json.loads((run / "status.json").read_text())
    st.update(pid=pid, host=socket.gethostname())
    (run / "status.json").write_text(json.dumps(st))
    return run


def test_quitting_asks_about_live_runs_and_leaves_them_running_by_default(tmp_path):
    proc = _sleeper()
    try:
        runs = tmp_path / "runs"
        _live_run(runs, "live-20250101-000000", proc.pid)
        app = LabApp(runs, cwd=tmp_path, poll_interval=0.5, initial_tab="monitor")

        async def body(pilot):
            from lab.tui.screens.quit import QuitScreen

            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            assert "live-20250101-000000" in text_of(app.screen.query_one("#quit-runs"))
            await pilot.press("escape")  # cancel: the console stays open
            await wait_for(pilot, lambda: not isinstance(app.screen, QuitScreen))
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            await pilot.press("enter")  # the focused default: leave them running
            await wait_for(pilot, lambda: app._exit, what="the app to exit")

        run_app(app, body)
        time.sleep(0.2)
        assert proc.poll() is None  # still running
    finally:
        proc.kill()
        proc.wait()


def test_quitting_can_stop_the_live_runs(tmp_path):
    proc = _sleeper()
    try:
        runs = tmp_path / "runs"
        _live_run(runs, "live-20250101-000000", proc.pid)
        app = LabApp(runs, cwd=tmp_path, poll_interval=0.5, initial_tab="monitor")

        async def body(pilot):
            from lab.tui.screens.quit import QuitScreen

            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            await pilot.press("s")
            await wait_for(pilot, lambda: app._exit, what="the app to exit")

        run_app(app, body)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
