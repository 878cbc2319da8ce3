"""GPT-2-format tokenizer files, fingerprints and token files (encode_file / load_token_file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm.errors import DataError, TokenizerError
from lm.tokenizer import Tokenizer, load_token_file, train_bpe
from lm.tokenizer.byte_unicode import byte_to_unicode, bytes_to_printable, printable_to_bytes

EOT = "<|endoftext|>"
TEXT = ("Once upon a time, there was a tiny robot named Bip.  Bip liked to count: 1, 2, 3!\n"
        "It's a café — naïve 🙂 story.\n\n") * 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_text((TEXT + EOT) * 3, encoding="utf-8")
    vocab, merges = train_bpe(path, 320, [EOT, "<|pad|>"])
    return Tokenizer(vocab, merges, [EOT, "<|pad|>"])


def test_byte_unicode_is_gpt2s_table():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    for b in range(256):
        assert printable_to_bytes(bytes_to_printable(bytes([b]))) == bytes([b])
    assert printable_to_bytes("a b") is None and printable_to_bytes("中") is None


# ----- save / load round trip


def test_save_and_from_dir_round_trip(trained, tmp_path):
    out = trained.save(tmp_path / "tok")
    assert {p.name for p in out.iterdir()} == {"vocab.json", "merges.txt", "special_tokens.json"}
    loaded = Tokenizer.from_dir(out)
    assert loaded.vocab == trained.vocab
    assert loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens
    assert loaded.fingerprint() == trained.fingerprint()
    assert loaded.vocab_size == trained.vocab_size == 320
    assert loaded.encode(TEXT + EOT) == trained.encode(TEXT + EOT)
    vocab_json = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab_json[EOT] == 0 and vocab_json["Ġ"] == 2 + ord(" ")
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and len(lines) == 1 + len(trained.merges)
    assert all(len(line.split(" ")) == 2 for line in lines[1:])


def test_gpt2_files_load(gpt2_files):
    tok = Tokenizer.from_files(*gpt2_files, [EOT])
    assert tok.vocab_size == 50257 and len(tok.merges) == 50000
    assert tok.vocab[tok.encode(" the")[0]] == b" the"


def test_gpt2_files_round_trip_through_save(gpt2_files, tmp_path):
    tok = Tokenizer.from_files(*gpt2_files, [EOT])
    again = Tokenizer.from_dir(tok.save(tmp_path / "gpt2"))
    assert again.vocab == tok.vocab and again.merges == tok.merges
    assert again.fingerprint() == tok.fingerprint()


def test_fingerprint_is_stable_and_sensitive(trained):
    same = Tokenizer(dict(trained.vocab), list(trained.merges), trained.special_tokens)
    assert same.fingerprint() == trained.fingerprint()
    assert len(trained.fingerprint()) == 64 and int(trained.fingerprint(), 16) >= 0
    fewer_merges = Tokenizer(trained.vocab, trained.merges[:-1], trained.special_tokens)
    other_specials = Tokenizer(trained.vocab, trained.merges, [EOT])
    assert len({trained.fingerprint(), fewer_merges.fingerprint(), other_specials.fingerprint()}) == 3


def test_pickle_keeps_definition_not_caches(trained):
    import pickle

    trained.encode(TEXT)
    copy = pickle.loads(pickle.dumps(trained))
    assert copy.fingerprint() == trained.fingerprint()
    assert copy.encode(TEXT + EOT) == trained.encode(TEXT + EOT)
    assert len(pickle.dumps(trained)) < 20_000  # the caches are not in it


# ----- malformed files


def _write_pair(tmp_path, vocab_text: str, merges_text: str):
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text(vocab_text, encoding="utf-8")
    merges.write_text(merges_text, encoding="utf-8")
    return vocab, merges


def _byte_vocab() -> dict[str, int]:
    return {bytes_to_printable(bytes([b])): b for b in range(256)}


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="vocab.json does not exist"):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("vocab_text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"a": -1}', "ids must be integers"),
    ('{"a": "x"}', "ids must be integers"),
    ('{"a": 1, "b": 1}', "used by both"),
    ('{"a b": 1}', "outside GPT-2's byte-to-unicode alphabet"),
])
def test_malformed_vocab(tmp_path, vocab_text, message):
    vocab, merges = _write_pair(tmp_path, vocab_text, "")
    with pytest.raises(TokenizerError, match=message) as err:
        Tokenizer.from_files(vocab, merges)
    assert str(vocab) in str(err.value)


def test_vocab_without_all_bytes(tmp_path):
    vocab, merges = _write_pair(tmp_path, json.dumps({"a": 0, "b": 1}), "")
    with pytest.raises(TokenizerError, match="256 single-byte"):
        Tokenizer.from_files(vocab, merges)


@pytest.mark.parametrize("merges_text, line, message", [
    ("#version: 0.2\nĠ t\nĠ t x\n", 3, "not two tokens"),
    ("Ġ t\n\nh\n", 3, "not two tokens"),
    ("Ġ t\nh 中\n", 2, "outside GPT-2's byte-to-unicode alphabet"),
    ("Ġ t\nh e\n", 2, "not in"),
])
def test_malformed_merges_name_file_and_line(tmp_path, merges_text, line, message):
    vocab_entries = _byte_vocab()
    vocab_entries["Ġt"] = 256
    vocab, merges = _write_pair(tmp_path, json.dumps(vocab_entries, ensure_ascii=False), merges_text)
    with pytest.raises(TokenizerError, match=message) as err:
        Tokenizer.from_files(vocab, merges)
    assert f"{merges}, line {line}" in str(err.value)


def test_special_tokens_file_must_be_a_list(trained, tmp_path):
    out = trained.save(tmp_path / "tok")
    (out / "special_tokens.json").write_text('{"eot": 1}')
    with pytest.raises(TokenizerError, match="special_tokens.json"):
        Tokenizer.from_dir(out)


def test_unsavable_special_token(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [], ["Ġ"])  # literal "Ġ" would read back as the byte " "
    with pytest.raises(TokenizerError, match="cannot save"):
        tok.save(tmp_path / "x")


# ----- token files


def test_encode_file_matches_encode(trained, tmp_path):
    src = tmp_path / "text.txt"
    src.write_text((TEXT + EOT) * 5, encoding="utf-8")
    seen = []
    info = trained.encode_file(src, tmp_path / "out" / "text.bin", progress=lambda done, total: seen.append((done, total)))
    ids, loaded = load_token_file(tmp_path / "out" / "text.bin")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
    assert ids.tolist() == trained.encode(src.read_text(encoding="utf-8"))
    assert loaded == info
    assert info.num_tokens == len(ids) and info.num_bytes == src.stat().st_size
    assert info.vocab_size == 320 and info.fingerprint == trained.fingerprint()
    assert info.source == str(src.resolve()) and info.dtype == "uint16"
    assert seen[-1] == (info.num_bytes, info.num_bytes)
    sidecar = json.loads((tmp_path / "out" / "text.bin.json").read_text())
    assert sidecar == info.to_dict()


def test_parallel_encode_file_equals_single(trained, tmp_path, monkeypatch):
    import lm.tokenizer.token_file as token_file

    src = tmp_path / "text.txt"
    src.write_text((TEXT + EOT) * 20, encoding="utf-8")
    single = trained.encode_file(src, tmp_path / "one.bin", workers=1)
    monkeypatch.setattr(token_file, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(token_file, "chunk_size_for", lambda size, workers: 3000)
    double = trained.encode_file(src, tmp_path / "two.bin", workers=2)
    assert double.num_tokens == single.num_tokens
    assert np.array_equal(load_token_file(tmp_path / "two.bin")[0], load_token_file(tmp_path / "one.bin")[0])


def test_uint32_for_large_vocabularies(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[70000] = b"zz"
    tok = Tokenizer(vocab, [(b"z", b"z")])
    src = tmp_path / "z.txt"
    src.write_text("zz zzz")
    info = tok.encode_file(src, tmp_path / "z.bin")
    ids, _ = load_token_file(tmp_path / "z.bin")
    assert info.dtype == "uint32" and ids.dtype == np.uint32
    assert ids.tolist() == [70000, ord(" "), 70000, ord("z")]


def test_empty_corpus_gives_empty_token_file(trained, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("")
    info = trained.encode_file(src, tmp_path / "empty.bin")
    ids, _ = load_token_file(tmp_path / "empty.bin")
    assert info.num_tokens == 0 and len(ids) == 0


def test_load_token_file_validates_its_sidecar(trained, tmp_path):
    src = tmp_path / "text.txt"
    src.write_text(TEXT)
    path = tmp_path / "text.bin"
    trained.encode_file(src, path)
    sidecar = tmp_path / "text.bin.json"
    good = sidecar.read_text()

    with pytest.raises(DataError, match="another tokenizer"):
        load_token_file(path, expected_fingerprint="0" * 64)

    sidecar.write_text(good.replace('"uint16"', '"int8"'))
    with pytest.raises(DataError, match=r"text\.bin\.json.*'dtype'"):
        load_token_file(path)
    sidecar.write_text("{broken")
    with pytest.raises(DataError, match=r"text\.bin\.json"):
        load_token_file(path)
    sidecar.write_text(json.dumps({"dtype": "uint16"}))
    with pytest.raises(DataError, match="num_tokens"):
        load_token_file(path)
    sidecar.write_text(good)
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"text\.bin has 10 bytes"):
        load_token_file(path)
    sidecar.unlink()
    with pytest.raises(DataError, match="no sidecar"):
        load_token_file(path)


def test_encode_file_bad_input(trained, tmp_path):
    with pytest.raises(DataError, match="missing.txt"):
        trained.encode_file(tmp_path / "missing.txt", tmp_path / "x.bin")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(DataError, match=r"bad\.txt.*offset 3"):
        trained.encode_file(bad, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.json").exists()
    assert not list(tmp_path.glob(".x.bin*"))
