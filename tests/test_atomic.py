"""lm.atomic.atomic_write, and that every writer of run, cache and queue files goes through it.

The writers are exercised with the rename step failing: each must raise,
leave the destination as it was and leave no temp file behind. A source scan
checks that nothing else in lm/ or lab/ renames files into place itself.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import lm.atomic
from lm.atomic import atomic_write, is_temp_file, write_error_message

ROOT = Path(__file__).resolve().parent.parent
_REAL_RENAME = lm.atomic._rename


def test_bytes_text_and_callback(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "sub" / "b.txt", "héllo")
    atomic_write(tmp_path / "c.pt", lambda f: torch.save({"x": torch.arange(3)}, f))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.arange(3))
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o644  # mkstemp alone gives 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.pt", "sub"]


def test_failing_callback_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "status.json"
    target.write_text("old")

    def half(f):
        f.write(b"new but")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_temp_names_are_recognised_and_nothing_else(tmp_path):
    seen = []

    def grab(f):
        seen.extend(tmp_path.iterdir())
        f.write(b"x")

    atomic_write(tmp_path / "latest.pt", grab)
    assert is_temp_file(seen[0])
    for name in ("latest.pt", "notes.tmp", ".hidden", "my.thesis.tmp"):
        assert not is_temp_file(tmp_path / name)


def test_disk_full_message_names_path_and_free_space(tmp_path):
    msg = write_error_message(tmp_path / "checkpoints" / "latest.pt", OSError(28, "No space left on device"))
    assert str(tmp_path) in msg and "latest.pt" in msg and "free" in msg and "full" in msg
    wrapped = RuntimeError("[enforce fail at inline_container.cc:659] . unexpected pos 64 vs 0")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert "full" in write_error_message(tmp_path / "x.pt", wrapped)


# ----------------------------------------------------------------------------- every writer


@pytest.fixture(autouse=True)
def _small_builtin_corpus(monkeypatch):
    """The built-in corpus writer, without parsing the whole standard library."""
    from lm.data import builtin

    monkeypatch.setattr(builtin, "extract_corpus", lambda progress=None: ("some text\n", {}))
    real = builtin.builtin_corpus_path

    def path(cache_dir=None, *, _probe=False, **kw):
        if _probe:
            return builtin.cache_root(cache_dir) / "builtin" / f"stdlib-prose-{builtin.corpus_key()}.txt"
        return real(cache_dir, **kw)

    monkeypatch.setattr(builtin, "builtin_corpus_path", path)


def _writers(tmp_path: Path):
    """(name, target file, callable that writes it) for every writer of run, cache and queue files."""
    from lab.cli import main as lab_main
    from lab.queue.store import QueueStore
    from lm.bench.harness import write_json as bench_results
    from lm.checkpoint_file import save_checkpoint
    from lm.config.loader import load_experiment_text, write_resolved
    from lm.data import builtin, download
    from lm.records import truncate_jsonl_after_step
    from lm.runs import atomic_write_json
    from lm.tokenizer import Tokenizer
    from lm.tokenizer.gpt2_files import write_tokenizer_files
    from lm.train.run_checkpoints import CheckpointDir

    cfg = load_experiment_text('name = "x"\n', "x.toml", check_paths=False)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"type": "train", "step": 1}\n{"type": "train", "step": 9}\n')
    gz = tmp_path / "in.gz"
    gz.write_bytes(gzip.compress(b"hello world\n"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world " * 50)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    ckdir = CheckpointDir(tmp_path / "ck")
    return [
        ("config.toml", tmp_path / "config.toml", lambda: write_resolved(cfg, tmp_path / "config.toml")),
        ("status.json", tmp_path / "status.json", lambda: atomic_write_json(tmp_path / "status.json", {"a": 1})),
        ("metrics truncation", metrics, lambda: truncate_jsonl_after_step(metrics, 5)),
        ("checkpoint", tmp_path / "m.pt", lambda: save_checkpoint(model, opt, 3, tmp_path / "m.pt")),
        ("training checkpoint", ckdir.latest, lambda: ckdir.save({"model": {}}, 1, keep_step_file=False, best=False)),
        ("tokenizer files", tmp_path / "tok" / "vocab.json",
         lambda: write_tokenizer_files(tmp_path / "tok", tok.vocab, [], [])),
        ("token file", tmp_path / "c.bin", lambda: tok.encode_file(corpus, tmp_path / "c.bin")),
        ("queue", tmp_path / "runs" / "queue.json", lambda: QueueStore(tmp_path / "runs").add("e.toml", [])),
        ("gunzip", tmp_path / "out.txt", lambda: download.gunzip(gz, tmp_path / "out.txt")),
        ("manifest", tmp_path / "manifest.json", lambda: download.write_manifest(tmp_path, {"a": 1})),
        ("bench results", tmp_path / "bench.json",
         lambda: bench_results([], tmp_path / "bench.json", torch.device("cpu"))),
        ("experiment from lab config new", tmp_path / "new.toml",
         lambda: lab_main(["config", "new", "fresh", "-o", str(tmp_path / "new.toml")])),
        ("built-in corpus", builtin.builtin_corpus_path(tmp_path / "cache", _probe=True),
         lambda: builtin.builtin_corpus_path(tmp_path / "cache", rebuild=True)),
    ]


def test_every_writer_leaves_nothing_when_the_rename_fails(tmp_path, monkeypatch):
    (tmp_path / "probe").mkdir()
    names = [name for name, _, _ in _writers(tmp_path / "probe")]
    for i, name in enumerate(names):
        work = tmp_path / f"w{i}"
        work.mkdir()
        _, target, write = _writers(work)[i]
        before = target.read_bytes() if target.exists() else None
        listing = {p: p.stat().st_size for p in work.rglob("*") if p.is_file()}

        def fail(src, dst):
            raise OSError(5, "Input/output error (injected)")

        monkeypatch.setattr(lm.atomic, "_rename", fail)
        try:
            with pytest.raises(Exception):
                write()
        finally:
            monkeypatch.setattr(lm.atomic, "_rename", _REAL_RENAME)
        after = target.read_bytes() if target.exists() else None
        assert after == before, f"{name}: {target} changed although its rename failed"
        leftovers = [p for p in work.rglob("*") if p.is_file() and p not in listing and p != target]
        assert not [p for p in leftovers if p.name.endswith(".tmp") or is_temp_file(p)], (name, leftovers)
        assert not [p for p in leftovers if p.parent == target.parent and p.name.startswith(f".{target.name}")], name


def test_every_writer_goes_through_atomic_write(tmp_path, monkeypatch):
    renamed = []
    real = lm.atomic._rename
    monkeypatch.setattr(lm.atomic, "_rename", lambda s, d: (renamed.append(Path(d)), real(s, d)))
    for name, target, write in _writers(tmp_path):
        write()
        assert target in renamed, f"{name} did not write {target} through lm.atomic"


def _renames_outside_atomic() -> list[str]:
    found = []
    for top in ("lm", "lab"):
        for path in (ROOT / top).rglob("*.py"):
            if path == ROOT / "lm" / "atomic.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    f = node.func
                    if f.attr in ("replace", "rename") and isinstance(f.value, ast.Name) and f.value.id == "os":
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{f.attr}")
                    if f.attr in ("rename", "replace") and isinstance(f.value, ast.Name) and f.value.id != "os" \
                            and f.attr == "rename":
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} .rename")
    return found


def test_no_writer_renames_files_itself():
    assert _renames_outside_atomic() == []


def test_queue_file_is_valid_json_after_write(tmp_path):
    from lab.queue.store import QueueStore

    QueueStore(tmp_path).add("e.toml", [])
    assert json.loads((tmp_path / "queue.json").read_text())["entries"][0]["experiment"]
