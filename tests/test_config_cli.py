"""``lab config show / check / docs / new`` through the real CLI entry point."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from lab.cli import main
from lm.config.loader import load_experiment, load_experiment_text
from lm.config.schema import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_show_prints_the_resolved_config_with_overrides(in_repo, capsys):
    assert main(["config", "show", "quickstart", "--set", "training.steps=321", "--set", "model.norm=post"]) == 0
    out = capsys.readouterr().out
    shown = load_experiment_text(out, "shown.toml")
    expected = load_experiment(ROOT / "experiments" / "quickstart.toml")
    expected = dataclasses.replace(expected, training=dataclasses.replace(expected.training, steps=321),
                                   model=dataclasses.replace(expected.model, norm="post"))
    assert shown == expected
    assert "\x1b[" not in out  # not a terminal: plain text


def test_show_error_is_one_paragraph_and_exit_2(in_repo, capsys):
    assert main(["config", "show", "quickstart", "--set", "training.stpes=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lab: config error in experiments/quickstart.toml: unknown key 'training.stpes' "
                          "(in --set training.stpes=5) — did you mean 'training.steps'?")
    assert "Traceback" not in err


def test_check_reports_each_file(tmp_path, in_repo, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nd_model = 100\nnum_heads = 3\n")
    assert main(["config", "check", "experiments/quickstart.toml", "experiments/ablations/nope.toml"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == 2 and "0.8M tokens" in out
    assert main(["config", "check", "experiments/quickstart.toml", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "ok  experiments/quickstart.toml" in captured.out
    assert "model.d_model (100) must be divisible by model.num_heads (3) (line 2)" in captured.err


def test_docs_lists_every_field(capsys):
    assert main(["config", "docs"]) == 0
    out = capsys.readouterr().out
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in out
        for f in dataclasses.fields(cls):
            assert f"  {f.name} = " in out
    assert "  warmup_steps = 100    # an integer" in out
    assert main(["config", "docs", "optimizer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[optimizer]") and "[model]" not in out
    assert "  betas = [0.9, 0.95]    # a list of numbers" in out
    assert main(["config", "docs", "modle"]) == 2
    assert "did you mean 'model'?" in capsys.readouterr().err


def test_new_writes_a_valid_file_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "new", "mine", "--preset", "tiny"]) == 0
    path = tmp_path / "experiments" / "mine.toml"
    cfg = load_experiment(path)
    assert cfg.name == "mine" and cfg.model.d_model == 64 and tomllib.loads(path.read_text())["model"]["preset"] == "tiny"
    assert load_experiment("mine").name == "mine"  # a bare name finds experiments/mine.toml
    assert main(["config", "new", "mine"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["config", "new", "other", "-o", str(tmp_path / "x.toml"), "--preset", "small"]) == 0
    assert load_experiment(tmp_path / "x.toml").model.d_model == 768
    assert main(["config", "new", "bad name"]) == 2
    assert "name (line 5) must start with a letter or digit" in capsys.readouterr().err
    assert not (tmp_path / "experiments" / "bad name.toml").exists()
    assert main(["config", "new", "z", "--preset", "huge"]) == 2
