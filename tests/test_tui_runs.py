"""The console with real training processes: launch, watch, attach, stop, resume, chat.

Tiny CPU runs (a 30k-parameter model on a small temp text, context 16) so
each process trains in seconds; most of their time is starting Python and torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.tui.app import LabApp
from lab.views.config_doc import ExperimentDoc
from lm.runs import RunDir
from test_tui_support import text_of, tiny_corpus, tiny_overrides, wait_for

PROJECT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 150  # seconds a tiny run may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("corpus") / "tiny.txt")


def _run_app(app, body, size=(120, 40)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await body(pilot)
    asyncio.run(main())


@pytest.mark.slow
def test_launching_from_the_config_tab_trains_and_the_monitor_follows(tmp_path, corpus):
    app = LabApp(tmp_path / "runs", cwd=PROJECT, initial_tab="config", poll_interval=0.2)

    async def body(pilot):
        pane = app.query_one("#config-pane")
        await wait_for(pilot, lambda: pane.form_ready, what="the form")
        pane.open_doc(ExperimentDoc.open("quickstart", tiny_overrides(corpus, steps=600), base_dir=PROJECT))
        await wait_for(pilot, lambda: app.query_one("#field-training-steps").value == "600")
        await wait_for(pilot, lambda: pane.validation.ok and pane.validation.cfg.model.context_length == 16)
        await pilot.press("f5")
        monitor = None

        def monitor_pane():
            nonlocal monitor
            monitor = app.query_one("#monitor-pane")
            return app.query_one("#tabs").active == "monitor" and monitor.selected is not None

        await wait_for(pilot, monitor_pane, what="the monitor with the new run")
        run = monitor.selected
        assert run.parent == tmp_path / "runs" and run.name.startswith("quickstart-")
        seen_steps, seen_losses = set(), set()

        def progressed():
            seen_steps.add(monitor.displayed_step)
            seen_losses.add(text_of(app.query_one("#spark-value-loss")))
            return monitor.displayed_step == 600 and "done" in text_of(app.query_one("#run-header"))

        await wait_for(pilot, progressed, timeout=RUN_TIMEOUT, step=0.2, what="the run to finish")
        # The monitor showed the run as it went, not only its end.
        assert len({s for s in seen_steps if 0 < s < 600}) >= 2
        assert len(seen_losses - {"-", ""}) >= 2
        assert RunDir(run).status().exit_code == 0
        log = (run / "train.log").read_text()
        assert "lab console" in log and "--run-dir" in log  # the command, then the run's own output

    _run_app(app, body)


@pytest.mark.slow
def test_a_run_started_elsewhere_is_attached_stopped_resumed_and_chatted_with(tmp_path, corpus):
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "lab", "run", "experiments/quickstart.toml",
            *[x for o in tiny_overrides(corpus, steps=100_000, checkpoint_every=5) for x in ("--set", o)],
            "--set", f"runs_dir={json.dumps(str(runs))}"]
    log = open(tmp_path / "headless.log", "wb")
    proc = subprocess.Popen(args, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = LabApp(runs, cwd=PROJECT, initial_tab="monitor", poll_interval=0.5)

    async def body(pilot):
        monitor = app.query_one("#monitor-pane")
        # The console only reads run directories: the headless run shows up and is followed live.
        await wait_for(pilot, lambda: monitor.selected is not None and monitor.displayed_step >= 1,
                       timeout=RUN_TIMEOUT, step=0.2, what="the headless run in the monitor")
        run = monitor.selected
        first = monitor.displayed_step
        await wait_for(pilot, lambda: monitor.displayed_step > first, timeout=60, what="more steps")
        await wait_for(pilot, lambda: (run / "checkpoints" / "latest.pt").is_file(), timeout=60)
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "run-table")
        await pilot.press("s")
        assert proc.wait(timeout=60) == 5  # stopped after a checkpoint
        await wait_for(pilot, lambda: "stopped" in text_of(app.query_one("#run-header")), timeout=20)
        stopped_at = RunDir(run).status().step
        await pilot.press("r")  # resume: a new `lab run --resume` process, started detached
        await wait_for(pilot, lambda: RunDir(run).status().state == "running"
                       and monitor.displayed_step > stopped_at, timeout=RUN_TIMEOUT, step=0.2, what="the resume")
        assert "--resume" in (run / "train.log").read_text()
        await pilot.press("s")
        await wait_for(pilot, lambda: RunDir(run).status().state == "stopped", timeout=60, what="the second stop")
        # Chat with what it learned (latest checkpoint), streamed from a worker.
        await pilot.press("5")
        chat = None

        def chat_ready():
            nonlocal chat
            chat = app.query_one("#chat-pane")
            return True

        await wait_for(pilot, chat_ready)
        await chat.select_run(run, "latest")
        chat.query_one("#chat-max").value = "20"
        chat.query_one("#chat-temperature").value = "0"
        chat.send("the cat")
        await wait_for(pilot, lambda: chat.replies == 1, timeout=120, step=0.2, what="the reply")
        status = text_of(chat.query_one("#chat-status"))
        assert "tokens" in status and "error" not in status, status
        assert chat.transcript_text.startswith("the cat") and len(chat.transcript_text) > len("the cat")

    try:
        _run_app(app, body)
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in app.supervisor.started:
            if s.proc.poll() is None:
                s.proc.kill()
        log.close()
