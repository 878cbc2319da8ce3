"""``lab model``: parameter table, forward pass, presets and --set parsing."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import pytest

from lab.cli import main
from lab.commands import model as model_cmd
from lm.config.schema import PRESETS, ModelConfig
from lm.errors import ConfigError


def _hand_count(cfg: ModelConfig) -> dict:
    V, d, L, f = cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.ffn_dim
    ffn = (3 if cfg.ffn == "swiglu" else 2) * d * f
    return {"embeddings": V * d, "attention": L * 4 * d * d, "FFN": L * ffn,
            "norms": (2 * L + 1) * d if cfg.norm != "none" else 0, "LM head": 0 if cfg.tie_embeddings else V * d}


def _json(capsys, *argv) -> dict:
    assert main(["model", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_default_is_tiny_with_hand_counted_parameters(capsys):
    r = _json(capsys, "--batch", "1", "--seq-len", "16")
    expected = _hand_count(PRESETS["tiny"])
    assert {k: r["parameters"][k] for k in expected} == expected
    assert r["parameters"]["total"] == sum(expected.values())
    assert r["non_embedding_parameters"] == r["parameters"]["total"] - expected["embeddings"] - expected["LM head"]
    assert r["input_shape"] == [1, 16]
    assert r["output_shape"] == [1, 16, 512]
    assert r["expected_loss"] == pytest.approx(math.log(512))
    # Init logits are small (lm_head std sqrt(2/(d+V))): the loss sits just above ln(vocab).
    assert r["expected_loss"] - 0.1 < r["loss"] < r["expected_loss"] + 1.0


@pytest.mark.parametrize("overrides", [["model.norm=none", "model.ffn=silu"],
                                       ["model.tie_embeddings=true", "model.norm=post"]])
def test_counts_follow_overrides(capsys, overrides):
    sets = [a for o in overrides for a in ("--set", o)]
    r = _json(capsys, "--batch", "1", "--seq-len", "8", *sets)
    cfg = model_cmd.apply_model_overrides(PRESETS["tiny"], overrides)
    expected = _hand_count(cfg)
    assert {k: r["parameters"][k] for k in expected} == expected
    assert r["overrides"] == overrides


def test_text_report_names_every_component(capsys):
    assert main(["model", "--batch", "1", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    for word in ("embeddings", "attention", "FFN", "norms", "LM head", "total", "172,352", "ln(512) = 6.238",
                 "logits (1, 8, 512)"):
        assert word in out


def test_text_report_without_rich(capsys, monkeypatch):
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["model", "--batch", "1", "--seq-len", "8", "--set", "model.tie_embeddings=true"]) == 0
    out = capsys.readouterr().out
    assert "tied (shared with embeddings)" in out
    assert "139,584" in out  # 172,352 - 512 * 64


def test_list_presets(capsys):
    assert main(["model", "--list"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    listed = {p["name"]: p for p in _json(capsys, "--list")}
    assert set(listed) == set(PRESETS)
    for name in ("tiny", "small", "2.7B"):
        assert listed[name]["parameters"] == sum(_hand_count(PRESETS[name]).values())


def test_set_parses_toml_values_and_bare_words():
    cfg = model_cmd.apply_model_overrides(PRESETS["tiny"], [
        "model.norm=post", 'model.position="nope"', "model.tie_embeddings=true", "model.rope_theta=500",
        "model.d_ff=256", "model.attn_dropout=0.1", "model.num_layers = 3"])
    assert (cfg.norm, cfg.position, cfg.tie_embeddings, cfg.d_ff, cfg.num_layers) == ("post", "nope", True, 256, 3)
    assert cfg.rope_theta == 500.0 and isinstance(cfg.rope_theta, float)
    assert cfg.attn_dropout == 0.1
    assert dataclasses.replace(cfg, norm="pre", position="rope", tie_embeddings=False, rope_theta=10000.0,
                               d_ff=192, attn_dropout=0.0, num_layers=2) == PRESETS["tiny"]


@pytest.mark.parametrize("item, pattern", [
    ("model.nrom=post", r"unknown key model\.nrom \(did you mean model\.norm\?\); valid keys: vocab_size"),
    ("model.d_model=1.5", r"model\.d_model must be an integer, got '1\.5'"),
    ("model.tie_embeddings=1", r"model\.tie_embeddings must be true or false"),
    ("model.ffn=gelu", r"model\.ffn must be one of 'swiglu', 'silu', got 'gelu'"),
    ("model.d_ff=wide", r"model\.d_ff must be an integer"),
    ("training.steps=3", r"--set expects model\.KEY=VALUE"),
    ("model.norm", r"--set expects model\.KEY=VALUE"),
    ("model.d_model=66", r"model\.d_model \(66\) must be divisible by model\.num_heads \(4\)"),
])
def test_set_errors_name_the_key_and_valid_values(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        model_cmd.apply_model_overrides(PRESETS["tiny"], [item])


def test_all_set_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        model_cmd.apply_model_overrides(PRESETS["tiny"], ["model.x=1", "model.norm=sideways"])
    assert len(e.value.problems) == 2


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "unknown model preset 'huge'"),
    (["--seq-len", "65"], "--seq-len must be between 1 and model.context_length (64)"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--device", "tpu:7"], "--device 'tpu:7' is not usable here"),
])
def test_bad_input_prints_one_line_without_traceback(capsys, argv, message):
    assert main(["model", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_component_of_rejects_unknown_parameter():
    with pytest.raises(ValueError):
        model_cmd.component_of("layers.0.mystery.weight")


def test_add_parser_defaults():
    sub = argparse.ArgumentParser().add_subparsers()
    args = model_cmd.add_parser(sub).parse_args([])
    assert (args.preset, args.overrides, args.list, args.device) == ("tiny", [], False, "cpu")
