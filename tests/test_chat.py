"""`lab chat` with piped stdin and its /commands, and `lab sample`, on a run
directory holding a model trained on a repeated pattern."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from test_generate_support import PATTERN_TEXT, write_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs"))


def _chat(run_dir, monkeypatch, capsys, lines: list[str], *args: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", str(run_dir), "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_prints_prompt_and_continuation(run_dir, capsys):
    code = main(["sample", str(run_dir), "--prompt", "ab", "--temperature", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == PATTERN_TEXT + "\n"
    assert "finished: eos" in err and "tokens/s" in err and "loaded" in err


def test_sample_options_no_echo_stop_and_several_samples(run_dir, capsys):
    code = main(["sample", str(run_dir), "-p", "ab", "-t", "0", "--no-echo", "--stop", "e ",
                 "--num-samples", "2", "--checkpoint", "latest", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "c€d\n\nc€d\n"
    assert err.count("finished: stop") == 2


def test_sample_seed_reproduces_text(run_dir, capsys):
    argv = ["sample", str(run_dir), "-p", "a", "-t", "3", "--seed", "11", "-n", "30", "--device", "cpu"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first


def test_sample_kernels_torch_gives_the_default_text_and_triton_off_cuda_is_a_clear_error(run_dir, capsys):
    argv = ["sample", str(run_dir), "-p", "a", "-t", "3", "--seed", "11", "-n", "30", "--device", "cpu"]
    assert main(argv) == 0
    default = capsys.readouterr().out
    assert main(argv + ["--kernels", "torch"]) == 0
    assert capsys.readouterr().out == default
    assert main(argv + ["--kernels", "triton"]) == 2
    err = capsys.readouterr().err
    assert "Triton decode step cannot run" in err and "CUDA" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value, words", [
    ("--top-p", "1.5", "top_p must be in (0, 1]"),
    ("--temperature", "-1", "temperature must be a number >= 0"),
    ("--top-k", "-2", "top_k must be an integer >= 0"),
    ("--max-tokens", "0", "max_new_tokens"),
])
def test_sample_rejects_bad_values_without_a_traceback(run_dir, capsys, flag, value, words):
    code = main(["sample", str(run_dir), "-p", "ab", flag, value, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_sample_defaults_to_the_newest_checkpoint_that_exists(tmp_path, capsys):
    run = write_run(tmp_path, best=False)
    code = main(["sample", str(run), "-p", "ab", "-t", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0 and out == PATTERN_TEXT + "\n"
    assert "no best checkpoint yet: using latest" in err and "latest.pt" in err


def test_sample_on_a_missing_checkpoint(tmp_path, capsys):
    run = write_run(tmp_path, best=False)
    code = main(["sample", str(run), "-p", "ab", "--checkpoint", "best", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "best" in err and "Traceback" not in err


def test_chat_survives_a_bad_seed_and_invalid_utf8(run_dir, monkeypatch, capsys):
    lines = b"/seed 99999999999999999999\n/seed x\n\xff\xfe\xfd\nab\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines), encoding="utf-8"))
    code = main(["chat", str(run_dir), "--device", "cpu", "-t", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err
    assert "c€de " in out  # the turn after the bad input was answered


def test_chat_streams_replies_and_applies_commands(run_dir, monkeypatch, capsys):
    code, out, _ = _chat(run_dir, monkeypatch, capsys, [
        "/temp 0",
        "ab",
        "/reset",
        "/max 4",
        "ab",
        "/top_p 2",
        "/top_k nope",
        "/seed 5",
        "/frobnicate",
        "/help",
        "/quit",
        "this line is never read",
    ])
    assert code == 0
    lines = out.splitlines()
    assert "c€de ü!" in lines  # first reply, ended by EOS
    assert any(line.startswith("[") and "finished: eos" in line for line in lines)
    assert "c€" in lines  # after /reset and /max 4: a fresh 4-token reply
    assert any("4 tokens" in line and "finished: length" in line for line in lines)
    assert "temperature 0.0, top_p 0.95, top_k 0, max 4 tokens" in out
    assert "top_p must be in (0, 1]" in out
    assert "/top_k needs an integer, got 'nope'" in out
    assert "seed 5" in out
    assert "unknown command /frobnicate" in out
    assert "/reset" in out and "commands:" in out  # the help text
    assert "never read" not in out


def test_chat_keeps_the_running_text_between_turns(run_dir, monkeypatch, capsys):
    # The second line continues the first reply's text (which ended with EOS): a new pattern document.
    code, out, _ = _chat(run_dir, monkeypatch, capsys, ["ab", "abc€d"], "--temperature", "0")
    assert code == 0
    lines = out.splitlines()
    assert "c€de ü!" in lines and "e ü!" in lines


def test_chat_stop_command_and_end_of_input(run_dir, monkeypatch, capsys):
    code, out, _ = _chat(run_dir, monkeypatch, capsys, ["/stop ü", "ab", "/stop off", "/settings"], "-t", "0")
    assert code == 0  # stdin ran out: a clean exit
    assert "c€de " in out.splitlines()
    assert "stop strings none" in out


def test_commands_import_no_torch():
    code = ("import sys; import lab.commands.chat, lab.commands.sample; "
            "print(sorted(m for m in ('torch', 'numpy', 'lm.decode') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
