"""A full disk while checkpointing, and a recorded pid that now belongs to another process."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest
from test_train_cli import experiment

from lm.checkpoint_file import torch_load
from lm.config.loader import load_experiment
from lm.errors import CheckpointError, LabError
from lm.processes import ALIVE, DEAD, REUSED, identity, process_start, process_state
from lm.runs import RunDir
from lm.train import run_checkpoints


def _disk_full(*args, **kwargs):
    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        raise inner
    except OSError as e:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1108") from e


def test_checkpoint_on_a_full_disk_is_one_paragraph_and_the_run_resumes(tmp_path, monkeypatch):
    from lm.train import run_experiment

    exp = experiment(tmp_path, training={"steps": 20, "log_every": 10}, eval={"every": 10},
                     checkpoint={"every": 10, "keep_last": 2})
    run = tmp_path / "run"
    real = run_checkpoints.atomic_torch_save
    calls = []

    def save(obj, path):
        calls.append(path)
        if len(calls) > 1:
            _disk_full()
        real(obj, path)

    monkeypatch.setattr(run_checkpoints, "atomic_torch_save", save)
    with pytest.raises(CheckpointError) as e:
        run_experiment(load_experiment(exp), run_dir=run)
    msg = str(e.value)
    assert "is full" in msg and "free" in msg and str(run / "checkpoints") in msg and "latest.pt" in msg
    assert "--resume" in msg and "\n" not in msg and "inline_container" not in msg
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "is full" in status["message"]
    assert torch_load(run / "checkpoints" / "latest.pt")["iteration"] == 10  # the last checkpoint is intact
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(run_checkpoints, "atomic_torch_save", real)
    assert run_experiment(resume=run) == 0
    assert torch_load(run / "checkpoints" / "latest.pt")["iteration"] == 20


def test_status_records_the_process_start_time(tmp_path):
    from lm.train.recorder import RunRecorder

    rec = RunRecorder(tmp_path, 10)
    rec.update_status(state="running")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["pid"] == os.getpid() and status["pid_start"] == process_start(os.getpid()) is not None
    assert status["host"] == identity()["host"]


@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    yield proc
    proc.kill()
    proc.wait()


def _write_running(run, pid, start):
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": pid, "host": identity()["host"],
                                                 "pid_start": start, "step": 3, "total_steps": 10}))


def test_a_reused_pid_is_not_the_run(tmp_path, other_process):
    from lm.train.experiment import _refuse_if_in_use

    assert process_state(other_process.pid, identity()["host"], process_start(other_process.pid)) == ALIVE
    assert process_state(other_process.pid, None, "another-boot:42") == REUSED
    run = tmp_path / "run"
    _write_running(run, other_process.pid, "another-boot:42")  # the run's process died; the pid went to this one
    st = RunDir(run).status()
    assert st.state == "stopped" and "kill -" not in st.message
    _refuse_if_in_use(run)  # no refusal, no advice to kill an unrelated process
    _write_running(run, other_process.pid, process_start(other_process.pid))  # really the run's process
    with pytest.raises(LabError, match=f"kill -TERM {other_process.pid}"):
        _refuse_if_in_use(run)


def test_dead_and_absurd_pids_are_dead():
    assert process_state(2**70) == DEAD and process_state(-1) == DEAD and process_state("12") == DEAD
