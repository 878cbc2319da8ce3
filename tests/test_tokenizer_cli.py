"""``lab tokenizer train / info / encode`` and their errors (no tracebacks)."""

from __future__ import annotations

import json

import numpy as np

from lab.cli import main
from lm.tokenizer import Tokenizer, load_token_file

EOT = "<|endoftext|>"
STORY = "Once upon a time there was a little cat. The cat liked milk!\nThe end.\n"


def _corpus(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text((STORY + EOT) * 50, encoding="utf-8")
    return path


def test_train_info_encode(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "290", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bytes/token" in printed and "tokens" in printed and str(out) in printed
    tok = Tokenizer.from_dir(out)
    assert tok.vocab_size == 290 and tok.special_tokens == [EOT]
    tokens_line = next(line for line in printed.splitlines() if line.strip().startswith("tokens"))
    assert f"{len(tok.encode(corpus.read_text(encoding='utf-8'))):,}" in tokens_line

    assert main(["tokenizer", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 290 and info["special_tokens"] == {EOT: 0}
    assert info["fingerprint"] == tok.fingerprint()

    assert main(["tokenizer", "encode", str(out), "--text", "The cat" + EOT]) == 0
    shown = capsys.readouterr().out
    assert " ".join(map(str, tok.encode("The cat" + EOT))) in shown

    bin_path = tmp_path / "stories.bin"
    assert main(["tokenizer", "encode", str(out), str(corpus), "--out", str(bin_path)]) == 0
    ids, meta = load_token_file(bin_path)
    assert np.array_equal(ids, np.array(tok.encode(corpus.read_text(encoding="utf-8")), dtype=np.uint16))
    assert meta.fingerprint == tok.fingerprint()


def test_train_with_custom_specials(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "280", "--special", EOT, "<|pad|>",
                 "--out", str(out), "--workers", "1"]) == 0
    assert Tokenizer.from_dir(out).special_tokens == [EOT, "<|pad|>"]
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "280", "--no-special", "--out", str(out),
                 "--force"]) == 0  # the folder holds the first tokenizer: replacing it needs --force
    assert Tokenizer.from_dir(out).special_tokens == []


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    assert main(["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and "Traceback" not in err

    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "t")]) == 2
    assert "at least 257" in capsys.readouterr().err

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("na\xefve".encode("latin-1"))
    assert main(["tokenizer", "train", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 2
    assert "not UTF-8" in capsys.readouterr().err

    assert main(["tokenizer", "info", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / "vocab.json").write_text("{oops")
    (tmp_path / "t" / "merges.txt").write_text("")
    assert main(["tokenizer", "encode", str(tmp_path / "t"), "--text", "hi"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
