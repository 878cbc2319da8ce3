"""The queue and sweeps with the real ``lab run`` on a tiny CPU model (context 16, a few dozen steps).

Slower than the stand-in tests in test_queue.py / test_sweep.py, so only the
behaviours that depend on the real engine are here: a runner killed with
``kill -9`` mid-run resumes the run from its checkpoint (the engine writes a
resume event and the steps continue), and a trial with an absurd learning rate
is caught as diverged within a few steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.queue.store import QueueStore
from lm.records import MetricsTail

PROJECT = Path(__file__).resolve().parent.parent

TINY = """name = "{name}"
[data]
source = "corpus.txt"
[tokenizer]
vocab_size = 300
train_bytes = 50_000
[model]
preset = "tiny"
context_length = 16
[optimizer]
lr = 3e-3
[schedule]
warmup_steps = 3
[training]
steps = {steps}
batch_size = 4
device = "cpu"
log_every = 1
[eval]
every = 5
batches = 2
[checkpoint]
every = 5
keep_last = 1
"""

pytestmark = pytest.mark.slow


def write_experiment(folder: Path, steps: int) -> None:
    """tiny.toml and a small synthetic corpus next to it (seeded word salad: no corpus download or
    extraction, so the test's time is the queue's and the trainer's)."""
    import random

    rng = random.Random(0)
    words = "the a model learns to predict next token from text and loss goes down slowly".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) + "." for _ in range(3000)]
    (folder / "corpus.txt").write_text("\n".join(lines))
    (folder / "tiny.toml").write_text(TINY.format(name="tiny", steps=steps))


def lab(*args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    env.pop("LAB_QUEUE_RUN_COMMAND", None)
    return subprocess.Popen([sys.executable, "-m", "lab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(path: Path) -> list[dict]:
    """Whole records only: the file may be mid-append (the tail reader waits for a line's newline)."""
    return MetricsTail(path).read()


def test_a_real_queue_completes_across_a_sigkill_of_its_runner_resuming_the_interrupted_run(tmp_path):
    write_experiment(tmp_path, steps=30)
    for overrides in (["model.norm=post"], ["optimizer.lr=1e-3"]):
        added = lab("queue", "add", "tiny.toml", *(x for o in overrides for x in ("--set", o)), cwd=tmp_path)
        assert added.wait(timeout=60) == 0, added.stdout.read()
    store = QueueStore(tmp_path / "runs")
    runner = lab("queue", "run", cwd=tmp_path)
    deadline = time.monotonic() + 240
    while True:  # until the first run has a checkpoint past its first one
        entry = store.read().entries[0]
        events = records(Path(entry.run_dir, "events.jsonl")) if entry.run_dir and \
            Path(entry.run_dir, "events.jsonl").exists() else []
        if [e for e in events if e["event"] == "checkpoint" and e["step"] >= 10]:
            break
        assert runner.poll() is None, runner.stdout.read()
        assert time.monotonic() < deadline, "the run never checkpointed"
        time.sleep(0.2)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    restarted = lab("queue", "run", cwd=tmp_path)
    out = restarted.communicate(timeout=300)[0]
    assert restarted.returncode == 0, out
    entries = store.read().entries
    assert [e.status for e in entries] == ["done"] * 2, [e.message for e in entries]
    assert [e.attempts for e in entries] == [2, 1]  # the first interrupted then resumed, the second run once
    for entry in entries:
        run_dir = Path(entry.run_dir)
        events = [e["event"] for e in records(run_dir / "events.jsonl")]
        assert events.count("start") == 1 and events.count("resume") == entry.attempts - 1
        assert events[-1] == "finish"
        steps = [r["step"] for r in records(run_dir / "metrics.jsonl") if r["type"] == "train"]
        assert steps == list(range(1, 31))  # continued from the checkpoint: no step recorded twice or missing
        assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert 'norm = "post"' in (Path(entries[0].run_dir) / "config.toml").read_text()  # overrides reached the run
    assert len({e.run_dir for e in entries}) == 2


def test_real_trial_with_an_absurd_learning_rate_is_marked_diverged_quickly(tmp_path):
    write_experiment(tmp_path, steps=300)
    (tmp_path / "hot.toml").write_text('base = "tiny.toml"\n[params."optimizer.lr"]\nvalues = [10.0]\n'
                                       '[early_stop]\nrule = "none"\ndiverge = true\n')
    sweep = lab("sweep", "hot.toml", cwd=tmp_path)
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, out
    entry = QueueStore(tmp_path / "runs").read().entries[0]
    assert entry.status == "diverged", out
    status = json.loads(Path(entry.run_dir, "status.json").read_text())
    assert status["step"] < 100  # stopped long before its 300 steps
    assert "1 diverged" in out
