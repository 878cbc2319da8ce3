"""Commands that write refuse to overwrite existing files and non-empty folders unless --force."""

from __future__ import annotations

import pytest

from lab.cli import main
from lm.atomic import refuse_overwrite
from lm.errors import OutputExistsError

STORY = "Once upon a time there was a little cat. The cat liked milk!\nThe end.\n<|endoftext|>"


def _corpus(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text(STORY * 40, encoding="utf-8")
    return path


def test_tokenizer_train_refuses_a_non_empty_folder(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    out = tmp_path / "run" / "tokenizer"
    out.mkdir(parents=True)
    (out / "merges.txt").write_text("#version: 0.2\nprecious\n")
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err and "merges.txt" in err and "Traceback" not in err
    assert (out / "merges.txt").read_text() == "#version: 0.2\nprecious\n"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(out), "--force"]) == 0
    assert "precious" not in (out / "merges.txt").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(empty)]) == 0


def test_tokenizer_encode_refuses_an_existing_token_file(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(tok)]) == 0
    out = tmp_path / "c.bin"
    out.write_bytes(b"keep")
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(tok), str(corpus), "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(["tokenizer", "encode", str(tok), str(corpus), "--out", str(out), "--force"]) == 0
    assert out.stat().st_size > 4
    assert main(["tokenizer", "encode", str(tok), str(corpus), "--out", str(corpus)]) == 2
    assert corpus.read_text(encoding="utf-8").startswith("Once upon")


def test_refuse_overwrite_rules(tmp_path):
    refuse_overwrite(tmp_path / "new", force=False, directory=True)
    refuse_overwrite(tmp_path / "new.bin", force=False)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="already exists"):
        refuse_overwrite(tmp_path / "f", force=False)
    with pytest.raises(OutputExistsError, match="is a file"):
        refuse_overwrite(tmp_path / "f", force=False, directory=True)
    refuse_overwrite(tmp_path / "f", force=True)


def test_bench_out_refuses_an_existing_file(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{}")
    assert main(["bench", "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err and out.read_text() == "{}"


def test_cpu_memory_measurement_prints_no_profiler_lines():
    """kineto prints 'USDT: ... profiler_start' to fd 2 from C++; lab bench must not show it."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch\nfrom lm.bench.memory import cpu_peak_bytes\n"
            "print(cpu_peak_bytes(lambda: torch.ones(1000) + 1))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "USDT" not in proc.stderr and "profiler_start" not in proc.stderr + proc.stdout
    assert int(proc.stdout.strip()) >= 4000
