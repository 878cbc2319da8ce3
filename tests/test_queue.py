"""The run queue: the store's locked edits, and runners driving a stand-in for ``lab run``.

The stand-in (tests/test_queue_fakerun.py) keeps the run-directory contract
without torch, so these tests exercise the queue itself: claims, exit codes,
kill -9 recovery with resume, two runners on one queue, stop and retry.
End-to-end tests with the real ``lab run`` are in tests/test_queue_e2e.py.
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
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.cli import main
from lab.queue.runner import QueueRunner, status_for_exit
from lab.queue.store import QueueError, QueueStore

FAKE = Path(__file__).resolve().parent / "test_queue_fakerun.py"
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_env(monkeypatch):
    """Make the queue start the stand-in instead of ``lab run``."""
    monkeypatch.setenv("LAB_QUEUE_RUN_COMMAND", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.02")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def write_exp(tmp_path: Path, name: str = "e", steps: int = 20, **extra: str) -> Path:
    text = f'name = "{name}"\n[training]\nsteps = {steps}\n[eval]\nevery = 5\n[checkpoint]\nevery = 5\n'
    for section, body in extra.items():
        text += f"[{section}]\n{body}\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def quiet_runner(store: QueueStore, workers: int = 1, **kw) -> QueueRunner:
    runner = QueueRunner(store, workers, gpus=kw.pop("gpus", []), log=lambda msg: None, **kw)
    runner.poll_interval = 0.05
    return runner


def events_of(run_dir: str) -> list[str]:
    return [json.loads(line)["event"] for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def train_steps(run_dir: str) -> list[int]:
    return [r["step"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "train"]


def runner_process(runs: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.Popen([sys.executable, "-m", "lab", "queue", "--runs-dir", str(runs), "run", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# ---- the store ------------------------------------------------------------------------------------


def test_add_list_remove_and_ids_are_never_reused(tmp_path):
    store = QueueStore(tmp_path / "runs")
    a = store.add(tmp_path / "a.toml", ["model.norm=post"], name="a")
    b = store.add(tmp_path / "b.toml", [], name="b")
    assert (a.id, b.id) == (1, 2)
    assert a.overrides == ["model.norm=post"] and a.status == "pending" and a.cwd == os.getcwd()
    store.remove([1])
    c = store.add(tmp_path / "c.toml", [])
    assert c.id == 3
    assert [e.id for e in store.read().entries] == [2, 3]
    with pytest.raises(QueueError, match="no queue entry with id 9"):
        store.remove([9])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), moves=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(
    ["top", "bottom", "up", "down", "1", "2", "3"])), max_size=8))
def test_move_matches_list_semantics(tmp_path_factory, n, moves):
    store = QueueStore(tmp_path_factory.mktemp("q"))
    for i in range(n):
        store.add(f"/x/{i}.toml", [])
    model = list(range(1, n + 1))
    for which, where in moves:
        entry_id = model[which % n]
        i = model.index(entry_id)
        target = {"top": 0, "bottom": n - 1, "up": max(i - 1, 0), "down": min(i + 1, n - 1)}.get(where)
        if target is None:
            target = int(where) - 1
            if target >= n:
                with pytest.raises(QueueError, match="out of range"):
                    store.move(entry_id, where)
                continue
        model.remove(entry_id)
        model.insert(target, entry_id)
        assert store.move(entry_id, where) == target + 1
        assert [e.id for e in store.read().entries] == model


def test_concurrent_adds_from_many_processes_lose_nothing(tmp_path):
    runs = tmp_path / "runs"
    code = ("import sys; from lab.queue.store import QueueStore\n"
            "s = QueueStore(sys.argv[1])\n"
            "for i in range(15): s.add(f'/x/{sys.argv[2]}-{i}.toml', [])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(runs), str(k)], cwd=PROJECT) for k in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    entries = QueueStore(runs).read().entries
    assert len(entries) == 60
    assert sorted(e.id for e in entries) == list(range(1, 61))
    assert len({e.experiment for e in entries}) == 60


def test_retry_keeps_a_resumable_run_dir_and_refuses_pending(tmp_path):
    store = QueueStore(tmp_path / "runs")
    e = store.add("/x/a.toml", [])
    with pytest.raises(QueueError, match="pending"):
        store.retry([e.id])
    run_dir = tmp_path / "runs" / "a-1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest.pt").write_text("{}")
    with store.transaction() as state:
        state.get(e.id).status, state.get(e.id).run_dir = "stopped", str(run_dir)
    assert store.retry([e.id])[0].run_dir == str(run_dir)
    with store.transaction() as state:
        state.get(e.id).status, state.get(e.id).run_dir = "failed", str(run_dir)
    assert store.retry([e.id], fresh=True)[0].run_dir is None
    with store.transaction() as state:
        state.get(e.id).status, state.get(e.id).run_dir = "done", str(run_dir)
    assert store.retry([e.id])[0].run_dir is None  # resuming a finished run would do nothing


def test_a_corrupt_queue_file_is_a_clear_error(tmp_path):
    (tmp_path / "queue.json").write_text("{not json")
    with pytest.raises(QueueError, match="not a valid queue file"):
        QueueStore(tmp_path).read()


def test_exit_codes_map_to_the_contract_states():
    assert [status_for_exit(c)[0] for c in (0, 1, 2, 4, 5)] == ["done", "failed", "failed", "diverged", "stopped"]
    assert status_for_exit(-9) == ("failed", "killed by SIGKILL")


# ---- runners --------------------------------------------------------------------------------------


def test_a_queue_of_four_runs_completes_two_at_a_time_one_gpu_each(tmp_path, fake_env):
    store = QueueStore(tmp_path / "runs")
    for i in range(4):
        store.add(write_exp(tmp_path, f"r{i}", steps=12), [f"optimizer.lr={10.0 ** -(i + 2)}"], name=f"r{i}")
    assert quiet_runner(store, workers=2, gpus=["0", "1"]).run() == 0
    entries = store.read().entries
    assert [e.status for e in entries] == ["done"] * 4
    assert all(e.attempts == 1 and e.exit_code == 0 and e.finished for e in entries)
    for i, e in enumerate(entries):
        cfg = json.loads((Path(e.run_dir) / "config.json").read_text())
        assert cfg["optimizer"]["lr"] == 10.0 ** -(i + 2)  # the override reached the run
        assert cfg["cuda_visible_devices"] == e.gpu  # each worker slot pinned to its GPU
        assert Path(e.run_dir).name.startswith(f"r{i}-") and Path(e.run_dir).parent == tmp_path / "runs"
        assert "lab queue" in (Path(e.run_dir) / "train.log").read_text()
    assert {e.gpu for e in entries} == {"0", "1"}
    assert store.read().runners == []  # the runner unregistered


def test_gpus_per_run_gives_each_run_its_own_disjoint_gpus(tmp_path, fake_env):
    store = QueueStore(tmp_path / "runs")
    for i in range(3):
        store.add(write_exp(tmp_path, f"d{i}", steps=8), [], name=f"d{i}")
    assert quiet_runner(store, workers=2, gpus=["0", "1", "2", "3"], gpus_per_run=2).run() == 0
    entries = store.read().entries
    assert [e.status for e in entries] == ["done"] * 3
    for e in entries:
        cfg = json.loads((Path(e.run_dir) / "config.json").read_text())
        assert cfg["gpus"] == 2 and cfg["cuda_visible_devices"] == e.gpu  # lab run --gpus 2 on its pair
    assert {e.gpu for e in entries} == {"0,1", "2,3"}
    from lm.errors import LabError

    with pytest.raises(LabError, match="needs 6 GPUs, but 4"):
        quiet_runner(store, workers=3, gpus=["0", "1", "2", "3"], gpus_per_run=2)


def test_failed_and_diverged_runs_are_recorded_and_the_queue_goes_on(tmp_path, fake_env):
    store = QueueStore(tmp_path / "runs")
    store.add(write_exp(tmp_path, "bad"), ["training.bad=1"])
    store.add(write_exp(tmp_path, "hot", steps=30), ["optimizer.lr=10.0"])
    store.add(write_exp(tmp_path, "ok", steps=6), [])
    quiet_runner(store).run()
    bad, hot, ok = store.read().entries
    assert (bad.status, bad.exit_code) == ("failed", 2)
    assert (hot.status, hot.exit_code) == ("diverged", 4)
    assert "loss is inf" in hot.message  # the run's own status message is carried over
    assert ok.status == "done"


def test_runner_killed_with_sigkill_resumes_the_interrupted_run_on_restart(tmp_path, fake_env):
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    first = store.add(write_exp(tmp_path, "long", steps=60), [])
    store.add(write_exp(tmp_path, "short", steps=6), [])
    proc = runner_process(runs)
    wait_for(lambda: (e := store.read().entries[0]).run_dir and (Path(e.run_dir) / "checkpoints" / "latest.pt").exists())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entry = store.read().get(first.id)
    assert entry.status == "running"  # nobody got to update it: an orphan
    if sys.platform.startswith("linux"):
        wait_for(lambda: not _alive(entry.pid))  # the run got SIGTERM (pdeathsig) when its runner died
    proc = runner_process(runs)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    long, short = store.read().entries
    assert (long.status, short.status) == ("done", "done")
    assert long.attempts == 2
    events = events_of(long.run_dir)
    assert events.count("start") == 1 and events.count("resume") == 1
    assert train_steps(long.run_dir) == list(range(1, 61))  # continued, not restarted
    assert "resumed entry 1" in out


def test_a_run_left_alive_by_a_dead_runner_is_stopped_then_resumed(tmp_path, fake_env):
    """Where the OS does not signal orphans (macOS), the next runner stops the old process itself."""
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    entry = store.add(write_exp(tmp_path, "orphan", steps=60), [])
    run_dir = runs / "orphan-x"
    orphan = subprocess.Popen([sys.executable, str(FAKE), entry.experiment, "--run-dir", str(run_dir)],
                              start_new_session=True)
    dead_runner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_runner.wait()
    with store.transaction() as state:
        e = state.get(entry.id)
        e.status, e.run_dir, e.pid, e.attempts = "running", str(run_dir), orphan.pid, 1
        e.runner_pid, e.runner_host = dead_runner.pid, __import__("socket").gethostname()
    wait_for(lambda: (run_dir / "checkpoints" / "latest.pt").exists())
    assert quiet_runner(store).run() == 0
    assert orphan.wait(timeout=5) == 5  # it was asked to checkpoint, not killed
    e = store.read().get(entry.id)
    assert e.status == "done" and e.run_dir == str(run_dir) and e.attempts == 2
    assert events_of(e.run_dir).count("resume") == 1
    assert train_steps(e.run_dir) == list(range(1, 61))


def test_two_runners_on_one_queue_never_take_the_same_run(tmp_path, fake_env, monkeypatch):
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.05")
    for i in range(6):  # about 0.5 s each: long enough that both runners are up while work remains
        store.add(write_exp(tmp_path, f"p{i}", steps=10), [], name=f"p{i}")
    procs = [runner_process(runs), runner_process(runs)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    entries = store.read().entries
    assert [e.status for e in entries] == ["done"] * 6
    assert all(e.attempts == 1 for e in entries)
    assert len({e.run_dir for e in entries}) == 6
    assert all(events_of(e.run_dir).count("start") == 1 for e in entries)
    started = [line for out in outs for line in out.splitlines() if "started entry" in line]
    assert len(started) == 6  # six starts in total between the two runners, none twice
    assert len({e.runner_pid for e in entries}) == 2  # and both runners did work


def test_queue_stop_checkpoints_runs_and_the_next_runner_resumes_them(tmp_path, fake_env):
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    store.add(write_exp(tmp_path, "s", steps=50), [])
    proc = runner_process(runs)
    wait_for(lambda: (e := store.read().entries[0]).run_dir and (Path(e.run_dir) / "checkpoints" / "latest.pt").exists())
    assert main(["queue", "--runs-dir", str(runs), "stop", "--wait"]) == 0
    assert proc.wait(timeout=30) == 0
    e = store.read().entries[0]
    assert e.status == "pending" and e.run_dir and "queue stop" in e.message
    assert quiet_runner(store).run() == 0
    e = store.read().entries[0]
    assert e.status == "done" and events_of(e.run_dir).count("resume") == 1
    assert train_steps(e.run_dir) == list(range(1, 51))


def test_stopping_one_entry_marks_it_stopped_and_retry_resumes_it(tmp_path, fake_env):
    runs = tmp_path / "runs"
    store = QueueStore(runs)
    store.add(write_exp(tmp_path, "one", steps=50), [])
    store.add(write_exp(tmp_path, "two", steps=4), [])
    proc = runner_process(runs)
    wait_for(lambda: (e := store.read().entries[0]).pid and (Path(e.run_dir) / "checkpoints" / "latest.pt").exists())
    assert main(["queue", "--runs-dir", str(runs), "stop", "1"]) == 0
    assert proc.wait(timeout=60) == 0
    one, two = store.read().entries
    assert (one.status, one.exit_code, two.status) == ("stopped", 5, "done")
    store.retry([one.id])
    quiet_runner(store).run()
    one = store.read().entries[0]
    assert one.status == "done" and train_steps(one.run_dir) == list(range(1, 51))


def _alive(pid) -> bool:
    from lab.queue.store import pid_alive

    return pid_alive(pid)
