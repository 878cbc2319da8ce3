"""The token cache deletes only what lab made, and notices when its token files are damaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lm.config.loader import load_experiment_text
from lm.data import prepare_data
from lm.data.prepare import TEMP_MARKER, make_temp_dir, remove_stale_temporaries
from lm.errors import DataError


def _config(tmp_path, cache):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("The cat sat on the mat. The dog ran far away. " * 400)
    return load_experiment_text(f'name = "x"\n[data]\nsource = "{corpus}"\ncache_dir = "{cache}"\n'
                                '[tokenizer]\nvocab_size = 270\n', "x.toml")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_user_folders_under_the_caches_work_dir_survive(tmp_path):
    """Pointing data.cache_dir at an existing folder must never delete what the user keeps there."""
    cache = tmp_path / "cache"
    keep = [cache / "work" / "thesis-2024", cache / "work" / "results-4999999",  # digits that are no live pid
            cache / "work" / "0123456789abcdef0123-4999999",  # lab's name pattern, but no marker: not lab's
            cache / "tokens" / "notes.tmp-12", cache / "tokenizers" / "mine.tmp-4999999"]
    for d in keep:
        d.mkdir(parents=True)
        (d / "chapter1.tex").write_text("precious")
    prepare_data(_config(tmp_path, cache))
    for d in keep:
        assert (d / "chapter1.tex").read_text() == "precious", f"{d} was deleted"


def test_lab_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "cache"
    dead = _dead_pid()
    stale = make_temp_dir(cache / "work" / f"{'a' * 20}-{dead}")
    marker = json.loads((stale / TEMP_MARKER).read_text())
    (stale / TEMP_MARKER).write_text(json.dumps(marker | {"pid": dead}))
    mine = make_temp_dir(cache / "tokens" / f"{'b' * 20}.tmp-{os.getpid()}")
    reused = make_temp_dir(cache / "tokenizers" / f"{'c' * 20}.tmp-{os.getpid()}")
    marker = json.loads((reused / TEMP_MARKER).read_text())
    (reused / TEMP_MARKER).write_text(json.dumps(marker | {"pid_start": "another-boot:1"}))  # the pid was reused
    removed = remove_stale_temporaries(cache)
    assert sorted(removed) == sorted([stale, reused])
    assert mine.is_dir()


def test_a_damaged_cached_token_file_is_detected_with_how_to_rebuild(tmp_path):
    cache = tmp_path / "cache"
    first = prepare_data(_config(tmp_path, cache))
    data = bytearray(first.train_path.read_bytes())
    data[10] ^= 0xFF  # same size: only the checksum can tell
    first.train_path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="rm -r") as e:
        prepare_data(_config(tmp_path, cache))
    assert str(first.train_path) in str(e.value) and "corrupt" in str(e.value)


def test_a_full_disk_while_copying_text_is_a_data_error_naming_the_path(tmp_path, monkeypatch):
    import errno

    import lm.data.prepare as prepare

    corpus = tmp_path / "a.txt"
    corpus.write_text("one document.\n" * 200)
    (tmp_path / "b.txt").write_text("another one.\n" * 200)  # two files: the text is joined into work/

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare, "write_range", full)
    cfg = load_experiment_text(f'name = "x"\n[data]\nsource = "{tmp_path}"\ncache_dir = "{tmp_path / "cache"}"\n'
                               '[tokenizer]\nvocab_size = 270\n', "x.toml")
    with pytest.raises(DataError, match="is full") as e:
        prepare_data(cfg)
    assert "free" in str(e.value) and str(tmp_path / "cache") in str(e.value)
