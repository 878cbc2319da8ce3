"""`lab run` as a real process: kill -9 and resume bit for bit, SIGTERM, divergence, every error path.

Each test spawns ``python -m lab run`` on a tiny config over a small synthetic
English-like text in tmp_path (the token cache lives in the session's
LAB_CACHE_DIR, so the tokenizer is trained once).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lm.checkpoint_file import torch_load
from lm.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a cat dog sat ran on under mat tree big small red quick lazy fox jumped over and then "
         "slept quietly happily while sun rose moon set bird sang song river flowed far away home").split()


def write_corpus(path: Path, n_sentences: int = 1500) -> Path:
    rng = random.Random(0)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        sentences.append(" ".join(words).capitalize() + ".")
    path.write_text(" ".join(sentences) + "\n")
    return path


def experiment(tmp_path: Path, name: str = "tiny", **sections) -> Path:
    """A tiny experiment TOML; ``sections`` = {"training": {"steps": 10}, ...} override the defaults."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    cfg = {
        "data": {"source": str(corpus)},
        "tokenizer": {"vocab_size": 300},
        "model": {"preset": "tiny", "context_length": 16, "d_model": 32, "d_ff": 64,
                  "attn_dropout": 0.1, "resid_dropout": 0.1},
        "training": {"steps": 40, "batch_size": 4, "log_every": 10},
        "schedule": {"warmup_steps": 5},
        "eval": {"every": 20, "batches": 2},
        "checkpoint": {"every": 20, "keep_last": 2},
    }
    for sec, values in sections.items():
        cfg.setdefault(sec, {}).update(values)
    lines = [f'name = "{name}"', f'runs_dir = "{tmp_path / "runs"}"']
    for sec, values in cfg.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lab(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def spawn(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_event(run_dir: Path, proc: subprocess.Popen, event: str, min_step: int = 0,
                   timeout: float = 120) -> dict:
    """Poll events.jsonl until an ``event`` at ``step >= min_step`` appears.

    Read through the run directory's own tail reader: the file is being appended to, and a
    plain read can catch a line half-written (the reader waits for its newline)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for rec in RunDir(run_dir).events():
            if rec["event"] == event and rec["step"] >= min_step:
                return rec
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before a {event} event: {proc.stderr.read()}")
        time.sleep(0.005)
    raise AssertionError(f"no {event} event within {timeout} s")


def assert_all_checkpoints_load(run_dir: Path) -> None:
    for path in RunDir(run_dir).checkpoints():
        ck = torch_load(path)  # raises CheckpointError on a torn file
        assert ck["format"] == "lm-checkpoint/1"
        if path.name.startswith("step_"):
            assert ck["iteration"] == int(path.stem.split("_")[1])


def run_in_process(exp: Path, run_dir: Path, *overrides: str) -> int:
    """The same run_experiment `lab run` calls, without paying another interpreter's imports."""
    from lm.config.loader import load_experiment
    from lm.train import run_experiment

    return run_experiment(load_experiment(exp, list(overrides)), run_dir=run_dir)


def final_weights(run_dir: Path) -> dict:
    return torch_load(run_dir / "checkpoints" / "latest.pt")["model"]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bitwise_identical_to_one_go(tmp_path):
    """Two kill -9s at random moments (checkpoints every 3 steps, so some land mid-write): every
    checkpoint left behind loads, and resuming ends with exactly the weights of an uninterrupted run."""
    exp = experiment(tmp_path, training={"steps": 300, "log_every": 25}, eval={"every": 100},
                     checkpoint={"every": 3, "keep_last": 3})
    assert run_in_process(exp, tmp_path / "straight") == 0

    victim = tmp_path / "victim"
    rng = random.Random(1234)
    killed_at = []
    for lo, hi in ((3, 100), (110, 200)):  # kill points by progress, so a fast machine cannot outrun them
        proc = spawn("run", exp, "--run-dir", victim)
        wait_for_event(victim, proc, "checkpoint", min_step=rng.randint(lo, hi))
        time.sleep(rng.uniform(0.0, 0.02))  # anywhere in the next few steps, checkpoint writes included
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert RunDir(victim).status().state == "stopped"  # 'running' with a dead pid
        assert_all_checkpoints_load(victim)
        assert len(list((victim / "checkpoints").glob("step_*.pt"))) <= 3  # rotation kept working
        killed_at.append(torch_load(victim / "checkpoints" / "latest.pt")["iteration"])
    assert 0 < killed_at[0] <= killed_at[1] < 300

    from lm.train import run_experiment

    assert run_experiment(resume=victim) == 0
    assert not list((victim / "checkpoints").glob(".*.tmp"))  # leftovers of killed writes cleaned up
    a, b = final_weights(tmp_path / "straight"), final_weights(victim)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rd = RunDir(victim)
    assert rd.status().state == "done" and rd.status().step == 300
    assert [r["step"] for r in rd.metrics("train")] == list(range(25, 301, 25))  # no duplicates after resume
    assert [e["step"] for e in rd.events() if e["event"] == "resume"][-1] == killed_at[1]
    straight_evals = RunDir(tmp_path / "straight").metrics("eval")
    assert [r["val_loss"] for r in rd.metrics("eval")] == [r["val_loss"] for r in straight_evals]


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_5(tmp_path):
    exp = experiment(tmp_path, training={"steps": 100_000, "log_every": 5}, eval={"every": 0},
                     checkpoint={"every": 0})
    run_dir = tmp_path / "run"
    proc = spawn("run", exp, "--run-dir", run_dir)
    wait_for_event(run_dir, proc, "start")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert "Traceback" not in err and "resume" in out
    st = RunDir(run_dir).status()
    assert (st.state, st.exit_code) == ("stopped", 5)
    ck = torch_load(RunDir(run_dir).checkpoint("latest"))
    assert ck["iteration"] == st.step > 0
    assert RunDir(run_dir).events()[-1]["event"] == "stop"


@pytest.mark.slow
def test_injected_nan_halts_with_exit_4(tmp_path):
    exp = experiment(tmp_path, training={"steps": 40, "log_every": 5}, checkpoint={"every": 10})
    env = {**os.environ, "LAB_INJECT_NAN_AT_STEP": "23"}
    res = lab("run", exp, "--run-dir", tmp_path / "run", env=env)
    assert res.returncode == 4
    assert "Traceback" not in res.stderr and "step 23" in res.stderr
    rd = RunDir(tmp_path / "run")
    assert rd.status().state == "diverged"
    ck = torch_load(rd.checkpoint("latest"))
    assert ck["iteration"] == 20 and all(torch.isfinite(t).all() for t in ck["model"].values())


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


def test_config_errors_exit_2_with_the_key_and_no_traceback(tmp_path):
    exp = experiment(tmp_path)
    assert_clean_error(lab("run", exp, "--set", "training.stpes=5"), "training.stpes", "training.steps")
    assert_clean_error(lab("run", exp, "--set", "training.steps=abc"), "training.steps")
    assert_clean_error(lab("run", exp, "--set", "model.num_heads=3"), "num_heads")  # 32 not divisible by 3
    assert_clean_error(lab("run", tmp_path / "missing.toml"), "missing.toml")
    assert_clean_error(lab("run", exp, "--set", f'data.source="{tmp_path / "nope.txt"}"'), "nope.txt")
    assert_clean_error(lab("run", "--resume", tmp_path / "not-a-run"), "not a run directory")
    assert_clean_error(lab("run"), "experiment file")
    assert not (tmp_path / "runs").exists()  # nothing was created for bad input


@pytest.mark.slow
def test_checkpoint_errors_exit_2_with_a_clear_message(tmp_path):
    exp = experiment(tmp_path, training={"steps": 10}, checkpoint={"every": 0})
    run_dir = tmp_path / "run"
    assert run_in_process(exp, run_dir) == 0

    wider = lab("run", exp, "--run-dir", run_dir, "--set", "model.d_ff=96", "--set", "training.steps=20")
    assert_clean_error(wider, "different model", "ffn.w1.weight", "[96, 32]")
    assert RunDir(run_dir).config().model.d_ff == 64  # the run's config was not overwritten
    assert RunDir(run_dir).status().state == "failed"

    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"this is not a checkpoint")
    assert_clean_error(lab("run", "--resume", run_dir, "--set", "training.steps=20"), "latest.pt", "cannot be read")


def test_lab_runs_lists_runs_as_table_and_json(tmp_path):
    from lm.runs import atomic_write_json

    run = tmp_path / "runs" / "exp-20260101-000000"
    run.mkdir(parents=True)
    atomic_write_json(run / "status.json", {"state": "done", "step": 40, "total_steps": 40, "started": 1.0,
                                            "best_val_loss": 3.25, "best_val_bpb": 1.5})
    res = lab("runs", "--runs-dir", tmp_path / "runs")
    assert res.returncode == 0 and "exp-20260101-000000" in res.stdout and "3.2500" in res.stdout
    rows = json.loads(lab("runs", "--runs-dir", tmp_path / "runs", "--json").stdout)
    assert rows[0]["name"] == "exp-20260101-000000" and rows[0]["best_val_bpb"] == 1.5
    empty = lab("runs", "--runs-dir", tmp_path / "none")
    assert empty.returncode == 0 and "no runs" in empty.stdout


def test_starting_afresh_points_at_an_interrupted_run_of_the_same_experiment(tmp_path, capsys):
    from lab.commands.run import _hint_resumable
    from lm.config.schema import ExperimentConfig
    from lm.runs import atomic_write_json

    runs = tmp_path / "runs"
    for name, state, step in (("tiny-20260101-000000", "stopped", 20), ("other-20260102-000000", "stopped", 5)):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "latest.pt").write_bytes(b"x")
        atomic_write_json(runs / name / "status.json", {"state": state, "step": step, "total_steps": 40,
                                                        "started": 1.0})
    _hint_resumable(ExperimentConfig(name="tiny", runs_dir=str(runs)))
    out = capsys.readouterr().out
    assert "tiny-20260101-000000 was stopped at step 20/40" in out and "lab run --resume" in out
    _hint_resumable(ExperimentConfig(name="fresh", runs_dir=str(runs)))
    assert capsys.readouterr().out == ""


def test_a_run_directory_in_use_by_a_live_process_is_refused(tmp_path):
    import socket

    from lm.errors import LabError
    from lm.runs import atomic_write_json
    from lm.train import run_experiment

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "busy"
        run_dir.mkdir()
        atomic_write_json(run_dir / "status.json", {"state": "running", "pid": sleeper.pid,
                                                    "host": socket.gethostname()})
        from lm.config.loader import load_experiment

        with pytest.raises(LabError, match=f"in use: training process {sleeper.pid}"):
            run_experiment(load_experiment(experiment(tmp_path)), run_dir=run_dir)
    finally:
        sleeper.kill()
        sleeper.wait()
