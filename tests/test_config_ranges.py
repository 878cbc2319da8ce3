"""Seeds in range, the warmup of smoke runs, and choices checked in one place."""

from __future__ import annotations

import json

import pytest
from test_train_cli import experiment, run_in_process

from lm.config.loader import load_experiment_text
from lm.config.rules import fit_warmup
from lm.config.schema import ModelConfig
from lm.errors import ConfigError
from lm.decode.sampling import SamplingParams


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_training_seed_outside_uint32_is_a_config_error(seed):
    with pytest.raises(ConfigError) as e:
        load_experiment_text(f"[training]\nseed = {seed}\n", "e.toml", check_paths=False)
    assert "training.seed (line 2) must be in 0..4294967295" in str(e.value) and str(seed) in str(e.value)


def test_largest_seed_is_accepted():
    cfg = load_experiment_text(f"[training]\nseed = {2**32 - 1}\n", "e.toml", check_paths=False)
    assert cfg.training.seed == 2**32 - 1


def test_sampling_seed_outside_uint32_is_refused():
    assert any("seed must be an integer in 0..4294967295" in p for p in SamplingParams(seed=2**32).problems())
    assert SamplingParams(seed=2**32 - 1).problems() == []


def test_a_warmup_longer_than_the_run_is_shortened_with_a_warning():
    cfg = load_experiment_text("[schedule]\nwarmup_steps = 100\n[training]\nsteps = 20\n", "e.toml", check_paths=False)
    fitted, note = fit_warmup(cfg)
    assert (fitted.schedule.warmup_steps, cfg.schedule.warmup_steps) == (2, 100)
    assert note.startswith("warning: schedule.warmup_steps (100)") and "\n" not in note
    same, none = fit_warmup(fitted)
    assert same is fitted and none == ""


def test_smoke_run_with_steps_below_the_warmup_trains_and_says_so(tmp_path):
    exp = experiment(tmp_path, training={"steps": 12, "log_every": 4}, schedule={"warmup_steps": 50},
                     eval={"every": 0}, checkpoint={"every": 0})
    run = tmp_path / "run"
    assert run_in_process(exp, run, "training.steps=12") == 0
    start = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()][0]
    assert start["event"] == "start" and "warmup is shortened to 1 steps" in start["message"]
    assert start["warnings"] == [start["message"].split("; ", 1)[1]]
    assert "warmup_steps = 1\n" in (run / "config.toml").read_text()


def test_model_choices_come_from_the_literal_types():
    problems = ModelConfig(norm="postt", attention="flash").problems()
    assert problems == [
        "model.norm must be one of 'pre', 'post', 'none', got 'postt' (a string) — did you mean 'post'?",
        "model.attention must be one of 'sdpa', 'naive', got 'flash' (a string)"]


def test_the_schema_does_not_list_choices_again():
    import inspect

    import lm.config.schema as schema

    src = inspect.getsource(schema.ModelConfig.problems)
    assert "'swiglu'" not in src and '"swiglu"' not in src and '"sdpa"' not in src
