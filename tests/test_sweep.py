"""Sweeps: the sweep file checks, and the driver (pruning, divergence, resume) on the ``lab run`` stand-in.

The stand-in's loss depends on the learning rate only (best at 3e-3, worse by
|log10(lr/3e-3)| nats; lr >= 1 climbs after warmup), so which trials should
win, be pruned or diverge is known in advance. End-to-end sweeps with the real
``lab run`` are in tests/test_queue_e2e.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.cli import main
from lab.queue.store import QueueStore
from lab.sweep.driver import SweepRunner
from lab.sweep.report import build_report, divergence_lines, metric_vs_param_plot
from lab.divergence import DivergenceWatch
from lab.sweep.spec import load_sweep
from lm.errors import ConfigError

FAKE = Path(__file__).resolve().parent / "test_queue_fakerun.py"
PROJECT = Path(__file__).resolve().parent.parent

BASE = """name = "base"
[model]
preset = "tiny"
[training]
steps = {steps}
log_every = 1
[schedule]
warmup_steps = 2
[eval]
every = 5
[checkpoint]
every = 5
"""


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("LAB_QUEUE_RUN_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.02")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def write_sweep(tmp_path: Path, body: str, steps: int = 40, name: str = "s") -> Path:
    (tmp_path / "base.toml").write_text(BASE.format(steps=steps))
    path = tmp_path / f"{name}.toml"
    path.write_text('base = "base.toml"\n' + body)
    return path


def run_sweep(spec, runs: Path, workers: int = 1) -> SweepRunner:
    runner = SweepRunner(spec, QueueStore(runs), workers, gpus=[], log=lambda m: None)
    runner.poll_interval = 0.05
    runner.run()
    return runner


def last_step(run_dir: str) -> int:
    return json.loads((Path(run_dir) / "status.json").read_text())["step"]


# ---- the sweep file -------------------------------------------------------------------------------


def test_a_valid_file_resolves_steps_min_steps_and_fixed_overrides(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, """
[search]
method = "random"
trials = 3
[params."optimizer.lr"]
low = 1e-4
high = 1e-1
log = true
[early_stop]
rule = "hyperband"
[set]
training.steps = 30
"""))
    assert (spec.name, spec.method, spec.trials, spec.rule) == ("s", "random", 3, "hyperband")
    assert spec.fixed == ["training.steps=30"]
    assert spec.total_steps == 30  # from the base with [set] applied
    assert spec.min_steps == 5  # default: the base's eval.every
    assert spec.params[0].log and spec.params[0].low == 1e-4
    unquoted = load_sweep(write_sweep(tmp_path, "[params.optimizer.lr]\nvalues = [1e-3]\n", name="u"))
    assert [p.key for p in unquoted.params] == ["optimizer.lr"]


@pytest.mark.parametrize("body, message", [
    ('[params."optimizer.lrr"]\nvalues = [1e-3]\n', "optimizer.lrr"),
    ('[params."optimizer.lr"]\nvalues = []\n', "the grid has no points"),
    ('[params."optimizer.lr"]\nvalues = [1e-3]\n[set]\n"training.steps" = "many"\n', "training.steps"),
    ('[params."optimizer.lr"]\nvalues = ["fast"]\n', "optimizer.lr"),
    ('[params."optimizer.lr"]\nlow = 1e-4\nhigh = 1e-2\n', "needs values = [...] for every parameter"),
    ('[params."optimizer.lr"]\nlow = 1e-2\nhigh = 1e-4\n[search]\nmethod = "tpe"\n', "must be below high"),
    ('[params."optimizer.lr"]\nvalues = [1e-3]\n[early_stop]\nrule = "halving"\n', "early_stop.rule"),
    ('[params."optimizer.lr"]\nvalues = [1e-3]\n[serch]\nmethod = "grid"\n', "did you mean 'search'"),
    ('[params."optimizer.lr"]\nvalues = [1e-3]\n[early_stop]\nmin_steps = 500\n', "must be below training.steps"),
    ("", "no parameters to sweep"),
])
def test_bad_sweep_files_fail_before_anything_starts(tmp_path, fake_env, capsys, body, message):
    path = write_sweep(tmp_path, body)
    runs = tmp_path / "runs"
    assert main(["sweep", str(path), "--runs-dir", str(runs)]) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()  # no queue entry, no study, no run directory


def test_several_problems_are_reported_together(tmp_path):
    path = write_sweep(tmp_path, 'metric = "acc"\n[params."optimizer.lr"]\nvalues = []\n[search]\nmethod = "bayes"\n')
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert len(e.value.problems) == 3


def test_divergence_rule_non_finite_or_above_start_after_warmup():
    w = DivergenceWatch(warmup_steps=3)
    assert w.check({"step": 1, "loss": 5.0}) is None
    assert w.check({"step": 3, "loss": 7.0}) is None  # a warmup spike is allowed
    assert w.check({"step": 4, "loss": 4.9}) is None
    assert w.check({"step": 5, "loss": 5.3}) is None  # a too-low LR hovering at its start: slow, not diverged
    assert "above the starting loss" in w.check({"step": 6, "loss": 5.6})
    capped = DivergenceWatch(warmup_steps=3, vocab_size=100)  # ln(100) = 4.605
    assert capped.check({"step": 1, "loss": 9.0}) is None  # first logged loss already bad (high lr)
    assert capped.check({"step": 5, "loss": 4.7}) is None
    assert "starting loss 4.605" in capped.check({"step": 6, "loss": 5.2})
    assert "non-finite" in DivergenceWatch(0).check({"step": 1, "loss": None})
    assert "non-finite" in DivergenceWatch(0).check({"step": 1, "loss": float("nan")})


# ---- the driver -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_successive_halving_stops_the_worst_trials_early_and_reports_the_best(tmp_path, fake_env):
    spec = load_sweep(write_sweep(tmp_path, """
[search]
method = "grid"
seed = 1
[params."optimizer.lr"]
values = [3e-5, 3e-3, 3e-1, 1e-4, 3e-2]
[early_stop]
rule = "successive_halving"
min_steps = 5
reduction_factor = 2
diverge = true
""", steps=30))
    runs = tmp_path / "runs"
    run_sweep(spec, runs)
    report = build_report(runs, "s")
    assert len(report.trials) == 5
    assert report.best.params == {"optimizer.lr": 3e-3} and report.best.outcome == "done"
    assert report.best.value == pytest.approx(json.loads(Path(report.best.run_dir, "status.json").read_text())
                                              ["best_val_loss"])
    pruned = [t for t in report.trials if t.outcome == "pruned"]
    assert pruned, [(t.params, t.outcome) for t in report.trials]
    for t in pruned:
        assert last_step(t.run_dir) < 30  # stopped early, checkpointed (exit 5)
        assert t.last_value > report.best.value
    entries = {e.trial: e for e in QueueStore(runs).read().entries}
    assert all(entries[t.number].status == "stopped" and entries[t.number].pruned for t in pruned)
    assert all(e.sweep == "s" for e in entries.values())  # trials are ordinary queue entries, tagged


def test_an_absurd_learning_rate_is_marked_diverged_quickly(tmp_path, fake_env):
    spec = load_sweep(write_sweep(tmp_path, """
[params."optimizer.lr"]
values = [10.0]
[early_stop]
rule = "none"
diverge = true
""", steps=200))
    runs = tmp_path / "runs"
    run_sweep(spec, runs)
    entry = QueueStore(runs).read().entries[0]
    # Stopped by the sweep's rule (exit 5 after SIGTERM), long before the stand-in's own
    # non-finite halt at step warmup + 12 and the 200 steps.
    assert (entry.status, entry.exit_code) == ("diverged", 5)
    assert last_step(entry.run_dir) < 14
    report = build_report(runs, "s")
    assert report.trials[0].outcome == "diverged" and report.trials[0].diverged_step == 3
    assert report.best is None
    assert "lowest optimizer.lr that diverged: 10" in "\n".join(divergence_lines(report))


@pytest.mark.slow
def test_a_killed_sweep_driver_continues_the_study_and_resumes_its_trial(tmp_path, fake_env):
    path = write_sweep(tmp_path, """
[params."optimizer.lr"]
values = [3e-3, 1e-3]
[early_stop]
rule = "none"
""", steps=30)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lab", "sweep", str(path), "--runs-dir", str(runs)]
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = QueueStore(runs)
    deadline = time.monotonic() + 60
    while not any(e.run_dir and Path(e.run_dir, "checkpoints", "latest.pt").exists() for e in store.read().entries):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = store.read().entries[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    entries = store.read().entries
    assert [e.status for e in entries] == ["done", "done"] and len(entries) == 2
    assert entries[0].run_dir == first.run_dir and entries[0].attempts == 2
    events = [json.loads(x)["event"] for x in Path(first.run_dir, "events.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1
    report = build_report(runs, "s")
    assert sorted(t.outcome for t in report.trials) == ["done", "done"]
    assert report.best.params == {"optimizer.lr": 3e-3}
    assert "best: trial" in done.stdout


def test_the_same_sweep_name_with_other_settings_is_refused(tmp_path, fake_env):
    from lab.sweep.search import open_study
    from lm.errors import LabError

    runs = tmp_path / "runs"
    open_study(load_sweep(write_sweep(tmp_path, '[params."optimizer.lr"]\nvalues = [1e-3]\n')), runs)
    other = load_sweep(write_sweep(tmp_path, '[params."optimizer.lr"]\nvalues = [1e-2]\n'))
    with pytest.raises(LabError, match="different settings.*--name"):
        open_study(other, runs)


def test_report_plot_draws_every_trial(tmp_path, fake_env, capsys):
    spec = load_sweep(write_sweep(tmp_path, """
[params."optimizer.lr"]
values = [3e-3, 10.0]
[early_stop]
rule = "none"
""", steps=12))
    runs = tmp_path / "runs"
    run_sweep(spec, runs)
    text = metric_vs_param_plot(build_report(runs, "s"), width=70, height=15, color=False)
    assert "val_loss vs optimizer.lr" in text and "diverged" in text and "finished" in text
    capsys.readouterr()
    assert main(["sweep", "report", "s", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "(optimizer.lr=0.003): val_loss" in out.split("best: trial")[1]
    assert "(optimizer.lr=10) diverged at step 3" in out
    assert main(["sweep", "report", "nope", "--runs-dir", str(runs)]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_tpe_with_hyperband_samples_inside_the_range_and_picks_the_lowest_value(tmp_path, fake_env):
    spec = load_sweep(write_sweep(tmp_path, """
[search]
method = "tpe"
trials = 3
seed = 3
[params."optimizer.lr"]
low = 1e-4
high = 1e-1
log = true
[early_stop]
rule = "hyperband"
min_steps = 5
reduction_factor = 2
""", steps=20))
    runs = tmp_path / "runs"
    run_sweep(spec, runs, workers=2)
    report = build_report(runs, "s")
    assert len(report.trials) == 3
    assert all(1e-4 <= t.params["optimizer.lr"] <= 1e-1 for t in report.trials)
    assert len({t.params["optimizer.lr"] for t in report.trials}) == 3
    finished = [t for t in report.trials if t.value is not None]
    assert finished and report.best.value == min(t.value for t in finished)
    # The stand-in's loss floor is 2 + |log10(lr / 3e-3)|: the best trial is the one closest to 3e-3.
    assert report.best.params == min(finished, key=lambda t: abs(math.log10(t.params["optimizer.lr"] / 3e-3))).params


def test_a_trial_the_engine_halts_as_diverged_is_recorded_with_its_step(tmp_path, fake_env):
    spec = load_sweep(write_sweep(tmp_path, """
[params."optimizer.lr"]
values = [10.0]
[early_stop]
rule = "none"
diverge = false
""", steps=200))
    runs = tmp_path / "runs"
    run_sweep(spec, runs)
    entry = QueueStore(runs).read().entries[0]
    assert (entry.status, entry.exit_code) == ("diverged", 4)  # the stand-in's own non-finite halt
    trial = build_report(runs, "s").trials[0]
    assert trial.outcome == "diverged" and trial.diverged_step == 14  # the first non-finite step (2 + 12)
