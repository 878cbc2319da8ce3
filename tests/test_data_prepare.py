"""prepare_data: text to cached token files, end to end with the real tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lm.config.schema import DataConfig, ExperimentConfig, ModelConfig, TokenizerConfig
from lm.data.prepare import cached_token_sets, prepare_data
from lm.errors import ConfigError, DataError

SEP = "<|endoftext|>"


def _cfg(source: str, tmp_path: Path, **data) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(source=source, cache_dir=str(tmp_path / "cache"), **data),
        tokenizer=TokenizerConfig(vocab_size=300, special_tokens=[SEP]),
        model=ModelConfig.from_name("tiny"),
    )


def _stories(n: int = 60) -> list[str]:
    return [f"Story {i}: once upon a time a little {'cat dog fox owl'.split()[i % 4]} found {i} shiny stones "
            "by the river, and it was happy.\n" for i in range(n)]


def _decode(prepared, which: str) -> str:
    arr = prepared.train_array() if which == "train" else prepared.val_array()
    return prepared.tokenizer.decode([int(t) for t in arr])


def test_file_split_at_a_document_boundary_and_cache_hit(tmp_path):
    stories = _stories()
    corpus = tmp_path / "stories.txt"
    corpus.write_text(SEP.join(stories))
    stages = []
    first = prepare_data(_cfg(str(corpus), tmp_path), progress=lambda s, d, t: stages.append(s))
    assert first.tokenizer_trained and not first.cached
    train, val = _decode(first, "train"), _decode(first, "val")
    # The split drops exactly one separator between whole documents, near the last 10%.
    assert train + SEP + val == corpus.read_text()
    assert train.endswith("happy.\n") and val.startswith("Story ")
    assert abs(len(val.encode()) - 0.1 * corpus.stat().st_size) <= 0.05 * corpus.stat().st_size + 200
    assert first.val_bytes == len(val.encode()) and first.train_bytes == len(train.encode())
    assert first.train_tokens == len(first.train_array()) and first.val_tokens == len(first.val_array())
    assert any("training tokenizer" in s for s in stages) and any("encoding" in s for s in stages)

    again = prepare_data(_cfg(str(corpus), tmp_path))
    assert again.cached and not again.tokenizer_trained
    assert again.train_path == first.train_path
    assert again.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert not (tmp_path / "cache" / "work").exists() or not any((tmp_path / "cache" / "work").iterdir())


def test_character_boundary_split_when_there_are_no_documents(tmp_path):
    corpus = tmp_path / "plain.txt"
    text = "caf\u00e9 na\u00efve r\u00e9sum\u00e9 " * 300  # two-byte characters everywhere
    corpus.write_text(text)
    prepared = prepare_data(_cfg(str(corpus), tmp_path, val_fraction=0.25))
    train, val = _decode(prepared, "train"), _decode(prepared, "val")
    assert train + val == text
    assert abs(len(val.encode()) - 0.25 * len(text.encode())) <= 2


def test_directory_val_source_and_max_bytes(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    stories = _stories(40)
    for i in range(4):
        (d / f"part{i}.txt").write_text("".join(stories[i * 10:(i + 1) * 10]))
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("".join(_stories(5)))
    prepared = prepare_data(_cfg(str(d), tmp_path, val_source=str(held_out)))
    joined = SEP.join((d / f"part{i}.txt").read_text() for i in range(4))
    assert _decode(prepared, "train") == joined
    assert _decode(prepared, "val") == held_out.read_text()

    small = prepare_data(_cfg(str(d), tmp_path, val_source=str(held_out), max_bytes=1500))
    train = _decode(small, "train")
    assert len(train.encode()) <= 1500 and joined.startswith(train)
    assert small.train_path != prepared.train_path  # max_bytes is part of the cache key
    assert small.val_bytes <= 150  # a separate validation text is capped at max_bytes * val_fraction


def test_changed_small_file_invalidates_the_cache(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SEP.join(_stories(30)))
    a = prepare_data(_cfg(str(corpus), tmp_path))
    corpus.write_text(SEP.join(_stories(31)))
    b = prepare_data(_cfg(str(corpus), tmp_path))
    assert not b.cached and a.cache_dir != b.cache_dir


def test_given_tokenizer_is_used_and_copied_into_the_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SEP.join(_stories(30)))
    first = prepare_data(_cfg(str(corpus), tmp_path))
    run_dir = tmp_path / "run"
    again = prepare_data(_cfg(str(corpus), tmp_path), tokenizer=first.tokenizer, run_dir=run_dir)
    assert again.cached and not again.tokenizer_trained
    assert (run_dir / "tokenizer" / "vocab.json").is_file() and (run_dir / "tokenizer" / "merges.txt").is_file()
    cfg = _cfg(str(corpus), tmp_path)
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(run_dir / "tokenizer")))
    loaded = prepare_data(cfg)
    assert loaded.tokenizer.fingerprint() == first.tokenizer.fingerprint() and loaded.cached


def test_interrupted_cache_entry_is_not_used(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SEP.join(_stories(30)))
    first = prepare_data(_cfg(str(corpus), tmp_path))
    (first.cache_dir / "meta.json").unlink()  # as if killed before the last write
    again = prepare_data(_cfg(str(corpus), tmp_path))
    assert not again.cached and (again.cache_dir / "meta.json").is_file()
    listed = cached_token_sets(tmp_path / "cache")
    assert [e["path"] for e in listed] == [str(again.cache_dir)]
    assert listed[0]["train_tokens"] == again.train_tokens


def test_non_utf8_corpus_names_file_and_offset(tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes(("x" * 500 + "caf\u00e9 and more text\n" * 20).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 503 "):
        prepare_data(_cfg(str(corpus), tmp_path))


@pytest.mark.parametrize("spec, message", [("missing.txt", "does not exist"), ("nosuchset", "known dataset")])
def test_bad_sources(tmp_path, spec, message):
    with pytest.raises(DataError, match=message):
        prepare_data(_cfg(spec, tmp_path))


def test_too_small_for_a_split_is_a_data_error(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("hi")
    with pytest.raises(DataError, match="empty after splitting"):
        prepare_data(_cfg(str(corpus), tmp_path, val_fraction=0.1))


def test_tokenizer_larger_than_model_vocab_is_a_config_error(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text " * 100)
    cfg = _cfg(str(corpus), tmp_path)
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, vocab_size=1000))
    with pytest.raises(ConfigError, match="model.vocab_size"):
        prepare_data(cfg)


def test_tinyshakespeare_val_is_the_last_tenth(tmp_path, shared_data):
    cfg = _cfg(str(shared_data / "tinyshakespeare.txt"), tmp_path)
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, train_bytes=100_000))
    prepared = prepare_data(cfg)
    raw = (shared_data / "tinyshakespeare.txt").read_bytes()
    assert prepared.val_bytes == round(len(raw) * 0.1) == 111_539  # nanoGPT's 90/10 split, no documents
    assert _decode(prepared, "val").encode() == raw[-111_539:]
    assert prepared.summary()["bytes_per_token"] == pytest.approx(len(raw[:-111_539]) / prepared.train_tokens,
                                                                  abs=1e-3)
    meta = json.loads((prepared.cache_dir / "meta.json").read_text())
    assert meta["source"] == str(shared_data / "tinyshakespeare.txt")


@pytest.mark.slow
def test_builtin_source_end_to_end():
    from lm.data.builtin import builtin_corpus_path

    cfg = ExperimentConfig(  # the session's default cache: the built-in corpus is extracted once per session
        data=DataConfig(source="builtin", max_bytes=400_000),
        tokenizer=TokenizerConfig(vocab_size=400, train_bytes=100_000),
        model=ModelConfig.from_name("tiny"),
    )
    prepared = prepare_data(cfg)
    corpus = builtin_corpus_path().read_text()
    train, val = _decode(prepared, "train"), _decode(prepared, "val")
    assert corpus.startswith(train + SEP + val)  # whole documents, split at a boundary, within max_bytes
    assert len((train + SEP + val).encode()) <= 400_000
    assert prepare_data(cfg).cached
