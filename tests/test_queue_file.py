"""The queue file is checked before it is trusted (issue 11), and ``lab --runs-dir DIR`` reaches every command."""

from __future__ import annotations

import json

import pytest

from lab.cli import main
from lab.queue.store import QueueError, QueueStore


def _write(tmp_path, **payload):
    base = {"version": 1, "next_id": 3, "runners": [],
            "entries": [{"id": 1, "experiment": "/x/a.toml", "status": "pending"},
                        {"id": 2, "experiment": "/x/b.toml", "status": "done"}]}
    base.update(payload)
    (tmp_path / "queue.json").write_text(json.dumps(base))


def _error(tmp_path) -> str:
    with pytest.raises(QueueError) as info:
        QueueStore(tmp_path).read()
    msg = str(info.value)
    assert str(tmp_path / "queue.json") in msg and "\n" not in msg  # one paragraph naming the file
    return msg


def test_a_valid_file_reads(tmp_path):
    _write(tmp_path)
    state = QueueStore(tmp_path).read()
    assert [e.id for e in state.entries] == [1, 2] and state.next_id == 3


def test_duplicate_ids_are_refused_naming_both_entries(tmp_path):
    _write(tmp_path, entries=[{"id": 4, "experiment": "a.toml"}, {"id": 4, "experiment": "b.toml"}])
    assert "entry id 4 is used twice (entries #1 and #2)" in _error(tmp_path)


@pytest.mark.parametrize("field, value, says", [
    ("status", "exploded", 'entry 1: status is "exploded", not one of pending'),
    ("attempts", "two", 'entry 1: attempts is "two", not a whole number'),
    ("overrides", "model.norm=post", 'entry 1: overrides is "model.norm=post", not a list of strings'),
    ("pid", 12345678901234567890, "entry 1: pid is 12345678901234567890, not a process id"),
    ("started", "noon", 'entry 1: started is "noon", not a number or null'),
])
def test_wrong_types_are_refused_naming_the_entry_and_key(tmp_path, field, value, says):
    _write(tmp_path, entries=[{"id": 1, "experiment": "/x/a.toml", field: value}])
    assert says in _error(tmp_path)


def test_an_entry_that_is_not_an_object_or_lacks_its_id_is_named_by_position(tmp_path):
    _write(tmp_path, entries=[{"id": 1, "experiment": "a"}, "oops", {"experiment": "c"}])
    msg = _error(tmp_path)
    assert "entry #2 is str, not an object" in msg and "entry #3 has no 'id'" in msg


def test_an_unknown_version_is_refused(tmp_path):
    _write(tmp_path, version=7)
    assert "format version 7 is not one this lab reads (version 1)" in _error(tmp_path)


def test_a_runner_record_of_the_wrong_type_is_refused(tmp_path):
    _write(tmp_path, runners=[{"pid": "me", "host": "box", "started": 1.0, "workers": 1}])
    assert 'runner #1: pid is "me"' in _error(tmp_path)


def test_a_next_id_below_the_ids_in_use_never_reuses_an_id(tmp_path):
    _write(tmp_path, next_id=1)
    assert QueueStore(tmp_path).read().next_id == 3


def test_lab_queue_reports_a_bad_file_without_a_traceback(tmp_path, capsys):
    _write(tmp_path, version=7)
    assert main(["queue", "--runs-dir", str(tmp_path), "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: ") and "Traceback" not in err and "format version 7" in err


def test_the_global_runs_dir_option_reaches_runs_queue_and_compare(tmp_path, capsys, monkeypatch):
    from test_tui_support import make_runs_dir

    monkeypatch.chdir(tmp_path)  # ./runs does not hold these runs
    runs = make_runs_dir(tmp_path / "elsewhere")
    assert main(["--runs-dir", str(runs), "runs"]) == 0
    assert "baseline-20250101-120000" in capsys.readouterr().out
    assert main(["--runs-dir", str(runs), "queue", "list"]) == 0
    assert str(runs / "queue.json") in capsys.readouterr().out
    assert main(["--runs-dir", str(runs), "compare", "baseline", "post_norm"]) == 0
    assert "post_norm" in capsys.readouterr().out
    # The command's own option beats the global one.
    assert main(["--runs-dir", str(tmp_path), "runs", "--runs-dir", str(runs)]) == 0
    assert "baseline" in capsys.readouterr().out


def test_queueing_an_experiment_whose_dataset_is_absent_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "no-data"))
    exp = tmp_path / "stories.toml"
    exp.write_text('name = "stories"\n[data]\nsource = "tinystories"\n')
    assert main(["queue", "--runs-dir", str(tmp_path / "runs"), "add", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "run `lab data get tinystories` first" in err and str(exp) in err
    assert QueueStore(tmp_path / "runs").read().entries == []  # nothing was queued
    from lab.views.config_doc import validate_text

    v = validate_text(exp.read_text(), str(exp), tmp_path)
    assert v.ok and any("lab data get tinystories" in w for w in v.warnings)
