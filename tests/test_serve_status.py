"""The serving status `lab serve` leaves in the run folder, as the console reads and shows it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from lab.serve.status import StatusWriter, status_path
from lab.tui.app import LabApp
from lab.views.serving import read_serving, serving_line
from lm.processes import identity
from test_tui_support import make_run, text_of, wait_for


def fake_server(tokens=0, requests=0):
    engine = SimpleNamespace(max_batch=8, active=3, tokens=tokens, pending=lambda: 2)
    return SimpleNamespace(engine=engine, model_id="m", max_queue=64, requests_total=requests, rejected_total=1)


def test_the_writer_reports_rates_over_its_interval_and_says_when_it_stopped(tmp_path):
    server = fake_server()
    w = StatusWriter(tmp_path, server, "http://127.0.0.1:8123", interval=60)
    w.start()
    server.engine.tokens, server.requests_total = 500, 4
    time.sleep(0.2)
    w.write()
    raw = json.loads(w.path.read_text())
    assert raw["state"] == "serving" and raw["pid"] == os.getpid() and raw["url"] == "http://127.0.0.1:8123"
    assert (raw["active"], raw["slots"], raw["queued"], raw["tokens"], raw["requests"]) == (3, 8, 2, 500, 4)
    assert 500 / 0.5 < raw["tokens_per_s"] < 500 / 0.19  # 500 tokens in the ~0.2 s since the first write
    [s] = read_serving(tmp_path)
    assert (s.state, s.active, s.slots, s.tokens) == ("serving", 3, 8, 500)
    line = str(serving_line([s]))
    assert "serving http://127.0.0.1:8123" in line and "3/8 slots" in line and "2 queued" in line
    assert "tok/s" in line and "4 requests (1 refused)" in line
    w.stop()
    assert json.loads(w.path.read_text())["state"] == "stopped"
    assert read_serving(tmp_path) == [] and read_serving(tmp_path, live_only=False)[0].state == "stopped"


def test_a_server_that_died_without_saying_so_and_foreign_files_are_not_listed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    folder = tmp_path / "serving"
    folder.mkdir()
    base = {"url": "http://x:1", "model": "m", "slots": 1, "active": 0, "queued": 0, "requests": 0, "rejected": 0,
            "tokens": 0, "requests_per_s": 0.0, "tokens_per_s": 0.0, "updated": time.time()}
    (folder / "h-1.json").write_text(json.dumps({**base, "state": "serving", "pid": pid,
                                                 "host": identity()["host"]}))
    (folder / "h-2.json").write_text("{not json")
    (folder / "h-3.json").write_text(json.dumps({**base, "state": "serving", "tokens": "many"}))
    assert read_serving(tmp_path) == []
    assert [s.state for s in read_serving(tmp_path, live_only=False)] == ["gone"]


def test_the_monitor_shows_the_selected_runs_server(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, "served-20250101-120000")
    server = fake_server(tokens=1234, requests=7)
    w = StatusWriter(run, server, "http://127.0.0.1:8123", interval=60)
    w.start()
    assert status_path(run, identity()["host"], os.getpid()) == w.path
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.3, initial_tab="monitor")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#monitor-pane")
            pane.select(run)
            await wait_for(pilot, lambda: "serving http://127.0.0.1:8123" in text_of(app.query_one("#run-serving")),
                           what="the serving line")
            assert app.query_one("#run-serving").display
            assert "3/8 slots" in text_of(app.query_one("#run-serving"))
            w.stop()
            await wait_for(pilot, lambda: not app.query_one("#run-serving").display, what="the line to go")
    asyncio.run(main())
