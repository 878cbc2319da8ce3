"""`lab data prepare|list|builtin`: summaries, JSON output, and errors without tracebacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab.cli import main

SEP = "<|endoftext|>"


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("LAB_NO_PROGRESS", "1")
    return tmp_path


def _experiment(tmp_path: Path, source: Path) -> Path:
    toml = tmp_path / "x.toml"
    toml.write_text(f'name = "x"\n[data]\nsource = "{source}"\n[tokenizer]\nvocab_size = 300\n'
                    '[model]\npreset = "tiny"\n')
    return toml


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "stories.txt"
    corpus.write_text(SEP.join(f"Story {i}: a small fox saw {i} birds by the lake and sang.\n" for i in range(80)))
    return corpus


def test_prepare_prints_a_summary_then_hits_the_cache(isolated, capsys):
    toml = _experiment(isolated, _corpus(isolated))
    assert main(["data", "prepare", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "tokenizer trained and text encoded" in out and "bytes/token" in out and "train" in out
    assert main(["data", "prepare", str(toml), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cached"] is True and summary["vocab_size"] <= 300
    assert summary["train_bytes"] + summary["val_bytes"] + len(SEP) == (isolated / "stories.txt").stat().st_size
    assert summary["bytes_per_token"] == pytest.approx(summary["train_bytes"] / summary["train_tokens"], abs=1e-3)


def test_prepare_set_override_changes_the_cache_entry(isolated, capsys):
    toml = _experiment(isolated, _corpus(isolated))
    main(["data", "prepare", str(toml), "--json"])
    a = json.loads(capsys.readouterr().out)
    main(["data", "prepare", str(toml), "--json", "--set", "data.val_fraction=0.2"])
    b = json.loads(capsys.readouterr().out)
    assert a["cache_dir"] != b["cache_dir"] and b["val_bytes"] > a["val_bytes"]


def test_list_shows_token_caches_and_datasets(isolated, capsys):
    main(["data", "prepare", str(_experiment(isolated, _corpus(isolated))), "--json"])
    capsys.readouterr()
    assert main(["data", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in listing["datasets"]} == {"tinystories", "owt", "tinyshakespeare"}
    assert not any(f["present"] for d in listing["datasets"] for f in d["files"])
    (entry,) = listing["token_sets"]
    assert entry["source"].endswith("stories.txt") and entry["train_tokens"] > 0
    assert entry["created"] <= time.time()
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "not downloaded" in out and "stories.txt" in out


def test_prepare_bad_text_is_one_message_without_traceback(isolated, capsys):
    bad = isolated / "bad.txt"
    bad.write_bytes(b"good text then \xff\xfe bad bytes")
    assert main(["data", "prepare", str(_experiment(isolated, bad))]) == 2
    err = capsys.readouterr().err
    assert "bad.txt is not UTF-8 text" in err and "byte offset 15" in err and "Traceback" not in err


def test_prepare_missing_dataset_says_how_to_download(isolated, capsys):
    toml = isolated / "x.toml"
    toml.write_text('[data]\nsource = "tinystories"\n[tokenizer]\nvocab_size = 300\n[model]\npreset = "tiny"\n')
    assert main(["data", "prepare", str(toml)]) == 2
    assert "lab data get tinystories" in capsys.readouterr().err


def test_builtin_command_reports_the_corpus_size(isolated, monkeypatch, capsys):
    from lm.data import builtin

    root = isolated / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text('"""A module that explains what it does in one sentence."""\n')
    monkeypatch.setattr(builtin, "stdlib_dir", lambda: root)
    assert main(["data", "builtin"]) == 0
    out = capsys.readouterr().out
    size = len("A module that explains what it does in one sentence.\n")
    assert f"({size:,} bytes), 1 documents" in out
