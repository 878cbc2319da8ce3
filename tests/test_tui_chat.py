"""The Chat tab: it talks to the newest checkpoint that exists (best, else latest) and says which, and a
checkpoint holding a pickle payload is never executed by opening it in the console (issue 11)."""

from __future__ import annotations

import asyncio
import os

import torch

from lab.tui.app import LabApp
from lab.views.chat import checkpoint_choice, checkpoint_options
from lm.runs import RunDir
from test_tui_support import make_run, text_of, wait_for


class Payload:
    """Unpickling this runs a shell command (what a hostile run directory would ship)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_default_checkpoint_is_best_else_latest_else_the_newest_step(tmp_path):
    run = make_run(tmp_path, "r-20250101-000000")
    ck = run / "checkpoints"
    assert RunDir(run).default_checkpoint() is None and checkpoint_choice(run)[0] is None
    (ck / "step_000010.pt").write_bytes(b"")
    (ck / "step_000020.pt").write_bytes(b"")
    assert RunDir(run).default_checkpoint() == "step_000020"
    (ck / "latest.pt").write_bytes(b"")
    which, note = checkpoint_choice(run)
    assert which == "latest" and "no best.pt yet" in note
    (ck / "best.pt").write_bytes(b"")
    assert checkpoint_choice(run)[0] == "best"
    assert checkpoint_options(run) == ["best", "latest", "step_000020", "step_000010"]


def test_a_pickle_payload_in_a_checkpoint_never_runs_from_the_chat_tab(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, "hostile-20250101-000000", state="stopped", steps=100, total=600)
    marker = tmp_path / "pwned"
    for name in ("latest.pt", "step_000100.pt"):  # no best.pt: the tab must pick latest and say so
        torch.save({"format": "lm-checkpoint/1", "model": Payload(marker), "config": {}}, run / "checkpoints" / name)
    app = LabApp(runs, cwd=tmp_path, poll_interval=60.0, initial_tab="chat")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            chat = app.query_one("#chat-pane")
            await wait_for(pilot, lambda: str(app.query_one("#chat-run").value) == str(run), what="the run")
            await wait_for(pilot, lambda: app.query_one("#chat-checkpoint").value == "latest")
            assert "checkpoints/latest.pt: no best.pt yet" in text_of(app.query_one("#chat-status"))
            for which in ("latest", "step_000100"):
                app.query_one("#chat-checkpoint").value = which
                chat.send("hello")
                await wait_for(pilot, lambda: not chat.generating, timeout=60, what="the load to be refused")
                status = text_of(app.query_one("#chat-status"))
                assert status.startswith("error:") and which in status, status
                assert not marker.exists()
            assert app.is_running

    asyncio.run(main())
    assert not marker.exists()
