"""Malformed run files (issue 11): one bad status.json or metrics line never hides the other runs.

Every reader of status.json / metrics.jsonl / events.jsonl (lm.runs, ``lab runs``, ``lab compare``,
the queue, the console's run tail, a resume) checks types and skips or marks what it cannot read;
a finished run whose status.json is missing or broken is reconstructed from its records.
"""

from __future__ import annotations

import json

import pytest

from lab.cli import main
from lm.runs import RunDir, list_runs
from test_tui_support import make_run, make_runs_dir

BAD_STATUS = {
    "step is text": {"step": "x"},
    "pid of 20 digits": {"pid": 12345678901234567890, "state": "running", "host": "__HOST__"},
    "state unknown": {"state": "exploded"},
    "best val is text": {"best_val_loss": "low"},
    "total is negative": {"total_steps": -5},
}


def _patch_status(run, **fields):
    import socket

    st = json.loads((run / "status.json").read_text())
    st.update({k: (socket.gethostname() if v == "__HOST__" else v) for k, v in fields.items()})
    (run / "status.json").write_text(json.dumps(st))


@pytest.mark.parametrize("case", list(BAD_STATUS))
def test_a_status_value_of_the_wrong_type_is_named_and_filled_from_the_records(tmp_path, case):
    run = make_run(tmp_path, "bad-20250101-000000", state="done", steps=600)
    _patch_status(run, **BAD_STATUS[case])
    st = RunDir(run).status()
    key = next(iter(BAD_STATUS[case]))
    assert any(p.startswith(key) for p in st.problems), st.problems
    assert st.reconstructed
    assert isinstance(st.step, int) and isinstance(st.total_steps, int) and st.state in (
        "done", "running", "stopped")
    if key == "pid":
        assert st.state == "done"  # its events end with a finish
    if key == "step":
        assert st.step == 600  # from the last record
    if key == "best_val_loss":
        assert st.best_val_loss == pytest.approx(min(r["val_loss"] for r in RunDir(run).metrics("eval")))


def test_a_truncated_status_of_a_finished_run_is_reconstructed_not_pending(tmp_path):
    run = make_run(tmp_path, "cut-20250101-000000", state="done", steps=600, total=600)
    text = (run / "status.json").read_text()
    (run / "status.json").write_text(text[: len(text) // 2])
    st = RunDir(run).status()
    assert (st.state, st.step, st.total_steps, st.exit_code) == ("done", 600, 600, 0)
    assert st.best_val_loss is not None and st.started is not None
    assert st.problems == ["status.json is not valid JSON (truncated?)"]


def test_a_missing_status_is_reconstructed_from_events(tmp_path):
    run = make_run(tmp_path, "gone-20250101-000000", state="stopped", steps=350, total=600)
    (run / "status.json").unlink()
    st = RunDir(run).status()
    assert (st.state, st.step, st.total_steps) == ("stopped", 350, 600)
    assert st.problems == ["status.json is missing"]


def test_a_run_that_has_not_started_is_pending_without_a_problem(tmp_path):
    run = tmp_path / "new-20250101-000000"
    run.mkdir()
    (run / "config.toml").write_text('name = "new"\n')
    st = RunDir(run).status()
    assert st.state == "pending" and st.problems == [] and not st.reconstructed


def test_metric_values_of_the_wrong_type_are_read_as_missing_and_bad_steps_skipped(tmp_path):
    run = make_run(tmp_path, "m-20250101-000000", steps=100)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 110, "loss": 2.0, "tokens_per_s": "fast"}) + "\n")
        f.write(json.dumps({"type": "train", "step": "x", "loss": 2.0}) + "\n")
        f.write(json.dumps({"type": 7, "step": 120, "loss": 2.0}) + "\n")
        f.write('{"type": "train", "step": 130, "lo')  # truncated by a kill
    train = RunDir(run).metrics("train")
    assert train[-1]["step"] == 110 and train[-1]["tokens_per_s"] is None
    assert all(isinstance(r["step"], int) for r in RunDir(run).metrics())
    assert RunDir(run).last_record("train")["step"] == 110


def test_lab_runs_lists_every_run_and_marks_the_unreadable_ones(tmp_path, capsys):
    runs = make_runs_dir(tmp_path)
    _patch_status(runs / "baseline-20250101-120000", step="x", total_steps=600)
    _patch_status(runs / "post_norm-20250101-130000", pid=12345678901234567890, state="running",
                  host="__HOST__")
    with open(runs / "nope-20250101-150000" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 50, "loss": 3.0, "tokens_per_s": "fast"}) + "\n")
    lone = runs / "lone-20250101-160000"  # status.json unreadable, no records to reconstruct from
    lone.mkdir()
    (lone / "status.json").write_text('{"state": "do')
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "post_norm", "lr_1e-2", "nope", "lone"):
        assert name in out
    assert "unreadable: status.json is not valid JSON" in out
    assert "done*" in out and "step is \"x\"" in out  # reconstructed, with why
    assert "600/600" in out
    assert main(["runs", "--runs-dir", str(runs), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lone-20250101-160000"]["problem"] and rows["baseline-20250101-120000"]["reconstructed"]
    assert rows["nope-20250101-150000"]["tokens_per_s"] is None


def test_lab_compare_reads_runs_with_bad_values(tmp_path, capsys):
    runs = make_runs_dir(tmp_path)
    _patch_status(runs / "baseline-20250101-120000", step="x")
    with open(runs / "post_norm-20250101-130000" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": 360, "loss": "bad", "tokens_per_s": "fast"}) + "\n")
        f.write(json.dumps({"type": "eval", "step": 360, "val_loss": [1]}) + "\n")
    assert main(["compare", "baseline", "post_norm", "--runs-dir", str(runs), "--plot", "--metric", "loss"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "post_norm" in out


def test_the_queue_list_shows_entries_whose_run_status_is_broken(tmp_path, capsys):
    from lab.queue.store import QueueStore

    runs = make_runs_dir(tmp_path)
    exp = tmp_path / "e.toml"
    exp.write_text('name = "e"\n')
    store = QueueStore(runs)
    entry = store.add(exp, [], name="e")
    with store.transaction() as state:
        state.get(entry.id).run_dir = str(runs / "baseline-20250101-120000")
        state.get(entry.id).status = "done"
    _patch_status(runs / "baseline-20250101-120000", step="x", best_val_loss="low")
    assert main(["queue", "--runs-dir", str(runs), "list"]) == 0
    assert "600/600" in capsys.readouterr().out
    assert main(["queue", "--runs-dir", str(runs), "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["run_status"]["step"] == 600


def test_a_resume_reads_only_type_checked_status_values(tmp_path):
    from lm.train.recorder import RunRecorder

    run = make_run(tmp_path, "r-20250101-000000", state="stopped", steps=350, total=600)
    _patch_status(run, step="x", tokens="many", started="yesterday")
    rec = RunRecorder(run, 600)
    try:
        assert rec.status["step"] == 350 and rec.status["tokens"] == 350 * 2048
        assert isinstance(rec.status["started"], float)
    finally:
        rec.close()


def test_the_console_run_tail_reads_a_run_with_bad_files(tmp_path):
    from lab.views.run_tail import RunTail

    run = make_run(tmp_path, "t-20250101-000000", steps=100)
    _patch_status(run, step="x", pid=12345678901234567890, state="running")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": "x", "loss": 2.0}) + "\n")
        f.write(json.dumps({"type": "train", "step": 110, "loss": "low", "tokens_per_s": "fast"}) + "\n")
    tail = RunTail(run)
    assert tail.poll()
    view = tail.view()
    assert view.step == 110 and view.state == "done"  # its events end with a finish


def test_list_runs_keeps_going_past_a_run_it_cannot_read(tmp_path, monkeypatch):
    import lm.runs

    runs = make_runs_dir(tmp_path)
    real = lm.runs.summarize_run

    def flaky(path):
        if "nope" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(lm.runs, "summarize_run", flaky)
    listed = {r.name: r for r in list_runs(runs)}
    assert len(listed) == 4
    assert listed["nope-20250101-150000"].state == "unreadable"
    assert "Permission denied" in listed["nope-20250101-150000"].problem
