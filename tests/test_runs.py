"""lm/runs.py: reading run directories (status, metrics tail, checkpoints, listing) per the contract."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config.schema import ExperimentConfig
from lm.errors import CheckpointError
from lm.records import JsonLinesWriter, MetricsTail, truncate_jsonl_after_step
from lm.runs import RunDir, atomic_write_json, list_runs, new_run_dir


def write_status(path, **fields):
    base = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "step": 0,
            "total_steps": 100, "tokens": 0, "started": 1000.0, "updated": 1000.0, "best_val_loss": None,
            "best_val_bpb": None, "last_val_loss": None, "exit_code": None, "message": ""}
    base.update(fields)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "status.json", base)


def test_running_with_a_live_pid_stays_running(tmp_path):
    write_status(tmp_path / "r")
    st = RunDir(tmp_path / "r").status()
    assert st.state == "running" and st["state"] == "running" and st.get("total_steps") == 100


def test_running_with_a_dead_pid_reads_as_stopped(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_status(tmp_path / "r", pid=proc.pid)
    assert RunDir(tmp_path / "r").status().state == "stopped"


def test_a_zombie_child_reads_as_stopped(tmp_path):
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("zombie detection reads /proc (Linux)")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while time.time() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.01)
    write_status(tmp_path / "r", pid=proc.pid)
    try:
        assert RunDir(tmp_path / "r").status().state == "stopped"
    finally:
        proc.wait()


def test_running_on_another_host_is_left_alone(tmp_path):
    write_status(tmp_path / "r", pid=999_999_9, host="some-other-box")
    assert RunDir(tmp_path / "r").status().state == "running"


def test_unknown_status_keys_are_kept(tmp_path):
    write_status(tmp_path / "r", state="done", future_field=3)
    st = RunDir(tmp_path / "r").status()
    assert st.state == "done" and st["future_field"] == 3 and st.to_dict()["future_field"] == 3


def test_metrics_tail_returns_only_complete_new_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []  # no file yet
    with open(path, "wb") as f:
        f.write(b'{"step": 1}\n{"step": 2}\n{"ste')
        f.flush()
        assert [r["step"] for r in tail.read()] == [1, 2]
        assert tail.read() == []
        f.write(b'p": 3}')
        f.flush()
        assert tail.read() == []  # still no newline
        f.write(b'\n{"step": 4}\n')
        f.flush()
        assert [r["step"] for r in tail.read()] == [3, 4]


def test_metrics_tail_skips_a_corrupt_line_and_keeps_the_rest(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n{"step": 2}\n')
    assert [r["step"] for r in MetricsTail(path).read()] == [1, 2]


def test_metrics_tail_starts_over_when_the_file_is_rewritten(tmp_path):
    path = tmp_path / "m.jsonl"
    w = JsonLinesWriter(path)
    for s in range(1, 6):
        w.write({"type": "train", "step": s})
    w.close()
    tail = MetricsTail(path)
    assert len(tail.read()) == 5 and not tail.reset
    assert truncate_jsonl_after_step(path, 3) == 2
    recs = tail.read()
    assert tail.reset and [r["step"] for r in recs] == [1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.fixed_dictionaries({"step": st.integers(0, 10**6), "loss": st.floats(0, 100)}),
                        max_size=30),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_metrics_tail_reassembles_any_chunking(tmp_path_factory, records, cuts):
    """Written in arbitrary byte chunks, the tail yields exactly the records, in order."""
    path = tmp_path_factory.mktemp("tail") / "m.jsonl"
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    bounds = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    tail, got, prev = MetricsTail(path), [], 0
    with open(path, "wb") as f:
        for b in bounds:
            f.write(data[prev:b])
            f.flush()
            prev = b
            got += tail.read()
    assert got == records


def test_metrics_tail_on_200k_lines_reads_everything_then_only_new(tmp_path):
    path = tmp_path / "m.jsonl"
    line = '{"type": "train", "step": %d, "loss": 3.25, "lr": 0.001, "tokens_per_s": 24100.0}\n'
    with open(path, "w") as f:
        f.writelines(line % i for i in range(200_000))
    tail = MetricsTail(path)
    recs = tail.read()
    assert len(recs) == 200_000 and recs[-1]["step"] == 199_999
    with open(path, "a") as f:
        f.write(line % 200_000)
    assert [r["step"] for r in tail.read()] == [200_000]


def test_truncate_drops_records_after_the_step_and_a_partial_tail(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"type": "train", "step": 10}\n{"type": "eval", "step": 20}\n'
                    '{"type": "train", "step": 30}\n{"type": "tr')
    assert truncate_jsonl_after_step(path, 20) == 2
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [10, 20]


def test_last_record_reads_from_the_end(tmp_path):
    path = tmp_path / "r" / "metrics.jsonl"
    path.parent.mkdir()
    with open(path, "w") as f:
        for s in range(5000):
            f.write(json.dumps({"type": "train", "step": s, "pad": "x" * 50}) + "\n")
        f.write(json.dumps({"type": "eval", "step": 5000}) + "\n")
    rd = RunDir(path.parent)
    assert rd.last_record("train")["step"] == 4999
    assert rd.last_record("eval")["step"] == 5000
    assert rd.last_record("other") is None


def test_checkpoint_lookup_and_the_error_lists_what_exists(tmp_path):
    ck = tmp_path / "r" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "latest.pt").write_bytes(b"x")
    (ck / "step_000010.pt").write_bytes(b"x")
    rd = RunDir(tmp_path / "r")
    assert rd.checkpoint() == ck / "latest.pt"
    assert rd.checkpoint("step_000010") == ck / "step_000010.pt"
    assert rd.checkpoint(ck / "step_000010.pt") == ck / "step_000010.pt"
    with pytest.raises(CheckpointError) as e:
        rd.checkpoint("best")
    assert "'best'" in str(e.value) and "latest.pt" in str(e.value) and "step_000010.pt" in str(e.value)
    with pytest.raises(CheckpointError, match="has not written a checkpoint"):
        RunDir(tmp_path / "empty").checkpoint("latest")


def test_new_run_dir_names_and_never_collides(tmp_path):
    cfg = ExperimentConfig(name="quick start/x", runs_dir=str(tmp_path / "runs"))
    t = time.mktime((2026, 11, 22, 10, 15, 0, 0, 0, -1))
    a, b = new_run_dir(cfg, now=t), new_run_dir(cfg, now=t)
    assert a.name == "quick_start_x-20261122-101500" and b.name == a.name + "-2"
    assert a.is_dir() and b.is_dir()


def test_list_runs_summarizes_newest_first(tmp_path):
    runs = tmp_path / "runs"
    write_status(runs / "old", state="done", step=100, best_val_loss=3.5, best_val_bpb=1.4, started=1.0)
    write_status(runs / "new", state="diverged", step=40, started=2.0)
    with open(runs / "old" / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"type": "train", "step": 100, "tokens_per_s": 1234.5}) + "\n")
        f.write(json.dumps({"type": "eval", "step": 100, "val_loss": 3.5}) + "\n")
    (runs / "not-a-run").mkdir()
    out = list_runs(runs)
    assert [r.name for r in out] == ["new", "old"]
    old = out[1]
    assert (old.state, old.step, old.total_steps, old.best_val_loss, old.best_val_bpb, old.tokens_per_s) == \
        ("done", 100, 100, 3.5, 1.4, 1234.5)
    assert list_runs(tmp_path / "missing") == []


def test_json_lines_are_strict_json_even_for_nan(tmp_path):
    w = JsonLinesWriter(tmp_path / "e.jsonl")
    w.write({"loss": float("nan"), "x": [float("inf"), 1.0]})
    w.close()
    text = (tmp_path / "e.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "x": [None, 1.0]}
