"""The strict experiment loader: precedence, every error path, extends, presets, overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lm.config.loader import (
    Override,
    apply_overrides,
    experiment_from_dict,
    load_experiment,
    load_experiment_text,
    parse_overrides,
)
from lm.config.schema import PRESETS, ExperimentConfig
from lm.errors import ConfigError, LabError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing needle (independent of the loader's scanner)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def problems(fn, *args, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kw)
    assert isinstance(info.value, LabError)
    return info.value.problems


# ----------------------------------------------------------------------------- overrides

def test_parse_overrides_parses_toml_values_and_falls_back_to_bare_strings():
    got = parse_overrides(["training.steps=100", 'model.norm="post"', "optimizer.betas=[0.9,0.99]",
                           "model.norm=post", "training.max_time=1.5", "model.tie_embeddings=true",
                           "description=two words", "data.source=", "name=1\nx = 2"])
    assert [o.key for o in got] == ["training.steps", "model.norm", "optimizer.betas", "model.norm",
                                    "training.max_time", "model.tie_embeddings", "description", "data.source",
                                    "name"]
    assert [o.value for o in got] == [100, "post", [0.9, 0.99], "post", 1.5, True, "two words", "", "1\nx = 2"]
    assert type(got[0].value) is int and got[1].text == 'model.norm="post"'
    assert got[0].path == ("training", "steps")


def test_parse_overrides_reports_every_malformed_item():
    found = problems(parse_overrides, ["training.steps", "=3", "a..b=1", "ok.key=1", "sp ace=1"])
    assert len(found) == 4
    assert all("section.key=value" in p for p in found)
    assert "'training.steps'" in found[0]


def test_set_beats_file_beats_defaults(tmp_path):
    f = write(tmp_path / "e.toml", """
        [training]
        steps = 50
        batch_size = 8
        [schedule]
        warmup_steps = 5
        """)
    cfg = load_experiment(f, ["training.steps=100"])
    assert cfg.training.steps == 100  # --set
    assert cfg.training.batch_size == 8  # file
    assert cfg.training.grad_accum == 1  # default
    assert cfg.optimizer == ExperimentConfig().optimizer
    # the later of two --set items for the same key wins
    assert load_experiment(f, ["training.steps=7", "training.steps=9"]).training.steps == 9


def test_set_unknown_key_wrong_type_and_into_a_value(tmp_path):
    f = write(tmp_path / "e.toml", "[training]\nsteps = 50\n")
    found = problems(load_experiment, f, ["model.nrom=post", "training.steps=abc", "training.steps.x=1"])
    assert len(found) == 3
    text = "\n".join(found)
    assert "unknown key 'model.nrom' (in --set model.nrom=post) — did you mean 'model.norm'?" in text
    assert "training.steps (in --set training.steps=abc) must be an integer, got 'abc' (a string)" in text
    assert "in --set training.steps.x=1: training.steps is a value, not a section" in text


def test_malformed_set_names_the_file(tmp_path):
    f = write(tmp_path / "e.toml", "")
    with pytest.raises(ConfigError) as info:
        load_experiment(f, ["steps"])
    assert info.value.source == str(f)


def test_apply_overrides_to_dict_and_to_experiment():
    d = {"training": {"steps": 5}}
    out = apply_overrides(d, ["training.steps=6", "model.d_model=64"])
    assert out == {"training": {"steps": 6}, "model": {"d_model": 64}}
    assert d == {"training": {"steps": 5}}  # input left alone

    cfg = ExperimentConfig()
    new = apply_overrides(cfg, {"optimizer.lr": 3e-4, "training": {"steps": 300}})
    assert isinstance(new, ExperimentConfig)
    assert (new.optimizer.lr, new.training.steps, cfg.training.steps) == (3e-4, 300, 1000)
    found = problems(apply_overrides, cfg, ["schedule.min_lr_ratio=2", "training.steps=10"])
    assert found == ["schedule.min_lr_ratio (in --set schedule.min_lr_ratio=2) must be in [0, 1], got 2.0"]
    # A warmup longer than the run is no longer an error (smoke runs): fit_warmup shortens it.
    assert apply_overrides(cfg, ["schedule.warmup_steps=20", "training.steps=10"]).schedule.warmup_steps == 20


def test_apply_overrides_accepts_override_objects():
    new = apply_overrides(ExperimentConfig(), [Override("training.steps", 300, "training.steps=300")])
    assert new.training.steps == 300


# ----------------------------------------------------------------------------- unknown keys

def test_unknown_nested_key_has_line_and_suggestion(tmp_path):
    f = write(tmp_path / "e.toml", """
        name = "x"

        [training]
        steps = 500
        stpes = 12
        """)
    (msg,) = problems(load_experiment, f)
    assert msg == f"unknown key 'training.stpes' (line {line_of(f, 'stpes')}) — did you mean 'training.steps'?"


def test_unknown_keys_suggest_the_right_section(tmp_path):
    f = write(tmp_path / "e.toml", """
        nmae = "x"
        steps = 100

        [model]
        lr = 0.1

        [trainig]
        steps = 3
        """)
    found = problems(load_experiment, f)
    assert len(found) == 4
    assert found[0] == f"unknown key 'nmae' (line {line_of(f, 'nmae')}) — did you mean 'name'?"
    assert found[1].startswith(f"unknown key 'steps' (line {line_of(f, 'steps = 100')}) — did you mean "
                               "'training.steps'?")
    assert found[2] == f"unknown key 'model.lr' (line {line_of(f, 'lr = 0.1')}) — did you mean 'optimizer.lr'?"
    assert found[3] == f"unknown section [trainig] (line {line_of(f, '[trainig]')}) — did you mean [training]?"


def test_section_given_as_a_value(tmp_path):
    f = write(tmp_path / "e.toml", "model = 3\n")
    (msg,) = problems(load_experiment, f)
    assert msg.startswith("'model' (line 1) must be a [model] section")


def test_dotted_keys_and_inline_tables_are_located(tmp_path):
    f = write(tmp_path / "e.toml", """
        name = "x"
        training.stepz = 3
        model = { d_model = 64, num_heads = 4, typo = 1 }
        """)
    found = problems(load_experiment, f)
    assert found[0].startswith("unknown key 'training.stepz' (line 2)")
    assert found[1].startswith("unknown key 'model.typo' (line 3)")


# ----------------------------------------------------------------------------- types

@pytest.mark.parametrize("toml_line, message", [
    ('[training]\nsteps = "100"', "training.steps (line 2) must be an integer, got '100' (a string)"),
    ("[training]\nsteps = true", "training.steps (line 2) must be an integer, got true (a boolean)"),
    ("[training]\nsteps = 10.0", "training.steps (line 2) must be an integer, got 10.0 (a float)"),
    ("[optimizer]\nlr = true", "optimizer.lr (line 2) must be a number, got true (a boolean)"),
    ("[optimizer]\nlr = nan", "optimizer.lr (line 2) must be a number, got nan (a float)"),
    ('[optimizer]\nbetas = [0.9, "x"]', "optimizer.betas (line 2) must be a list of numbers, got [0.9, 'x'] (an array)"),
    ("[optimizer]\nbetas = 0.9", "optimizer.betas (line 2) must be a list of numbers, got 0.9 (a float)"),
    ("[tokenizer]\nspecial_tokens = [1]", "tokenizer.special_tokens (line 2) must be a list of strings, got [1] (an array)"),
    ("[model]\nd_ff = 1.5", "model.d_ff (line 2) must be an integer, got 1.5 (a float)"),
    ("[model]\ntie_embeddings = 1", "model.tie_embeddings (line 2) must be true or false, got 1 (an integer)"),
    ("name = 3", "name (line 1) must be a string, got 3 (an integer)"),
    ('[model]\nnorm = "postnorm"',
     "model.norm (line 2) must be one of 'pre', 'post', 'none', got 'postnorm' (a string) — did you mean 'post'?"),
    ('[training]\ndtype = "fp16"', "training.dtype (line 2) must be one of 'auto', 'fp32', 'bf16', got 'fp16' (a string) — did you mean 'bf16'?"),
])
def test_wrong_types_are_rejected(tmp_path, toml_line, message):
    f = write(tmp_path / "e.toml", toml_line + "\n")
    assert problems(load_experiment, f) == [message]


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    f = write(tmp_path / "e.toml", "[optimizer]\nlr = 1\nbetas = [0, 0.5]\n[model]\nd_ff = 96\n")
    cfg = load_experiment(f)
    assert cfg.optimizer.lr == 1.0 and type(cfg.optimizer.lr) is float
    assert cfg.optimizer.betas == [0.0, 0.5] and all(type(b) is float for b in cfg.optimizer.betas)
    assert cfg.model.d_ff == 96 and cfg.model.ffn_dim == 96


# ----------------------------------------------------------------------------- cross-field rules

@pytest.mark.parametrize("body, fragment", [
    ("[model]\nd_model = 100\nnum_heads = 3", "model.d_model (100) must be divisible by model.num_heads (3)"),
    ("[model]\nd_model = 12\nnum_heads = 4", "needs an even head size"),
    ("[model]\ncontext_length = 1", "model.context_length (line 2) must be greater than 1, got 1"),
    ("[schedule]\nwarmup_steps = 50\ncosine_steps = 20", "schedule.cosine_steps (20) must be 0"),
    ("[optimizer]\nlr = 0", "optimizer.lr (line 2) must be positive, got 0.0"),
    ("[optimizer]\nbetas = [0.9, 1.0]", "optimizer.betas (line 2) must be two numbers in [0, 1)"),
    ("[optimizer]\nbetas = [0.9]", "optimizer.betas (line 2) must be two numbers in [0, 1)"),
    ("[data]\nval_fraction = 0.0", "data.val_fraction (line 2) must be in (0, 1), got 0.0"),
    ("[data]\nval_fraction = 1", "data.val_fraction (line 2) must be in (0, 1), got 1.0"),
    ("[training]\nbatch_size = 0", "training.batch_size (line 2) must be at least 1, got 0"),
    ("[training]\ngrad_accum = 0", "training.grad_accum (line 2) must be at least 1, got 0"),
    ('[training]\ndevice = "gpu"', "training.device (line 2) must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ("[eval]\nevery = -1", "eval.every (line 2) must be >= 0"),
    ("[eval]\nbatches = 0", "eval.batches (line 2) must be at least 1"),
    ("[checkpoint]\nevery = -1", "checkpoint.every (line 2) must be >= 0"),
    ("[tokenizer]\nvocab_size = 256", "tokenizer.vocab_size (line 2) must be at least 256 bytes + 1 special tokens = 257"),
    ("[tokenizer]\nvocab_size = 300\n[model]\nvocab_size = 299",
     "model.vocab_size (299) must be at least tokenizer.vocab_size (300)"),
    ('[tokenizer]\nspecial_tokens = ["<a>", "<a>"]', "tokenizer.special_tokens (line 2) must be distinct"),
    ('name = "has space"', "name (line 1) must start with a letter or digit"),
    ('[data]\nsource = "tinystorie"', "did you mean 'tinystories'?"),
    ('[data]\nsource = "nowhere/at/all.txt"', "data.source (line 2): no such file or directory 'nowhere/at/all.txt'"),
    ('[data]\nval_source = "missing.txt"', "data.val_source (line 2): no such file or directory"),
    ('[tokenizer]\npath = "no/such/tokenizer"', "tokenizer.path (line 2): no such tokenizer directory"),
])
def test_cross_field_and_range_rules(tmp_path, body, fragment):
    f = write(tmp_path / "e.toml", body + "\n")
    found = problems(load_experiment, f, base_dir=tmp_path)
    assert len(found) == 1, found
    assert fragment in found[0]
    assert "(line " in found[0]


def test_rule_is_located_at_the_key_the_file_set(tmp_path):
    # d_model comes from the defaults (512); the file set only model.num_heads.
    f = write(tmp_path / "e.toml", "[model]\n\nnum_heads = 7\n")
    (msg,) = problems(load_experiment, f)
    assert msg == "model.d_model (512) must be divisible by model.num_heads (7) (line 3)"


def test_no_spurious_rule_errors_after_a_type_error(tmp_path):
    # d_model is rejected; its default (512) must not then fail divisibility by 6.
    f = write(tmp_path / "e.toml", '[model]\nd_model = "384"\nnum_heads = 6\n')
    (msg,) = problems(load_experiment, f)
    assert msg.startswith("model.d_model (line 2) must be an integer")


def test_rope_needs_even_head_size_but_nope_does_not(tmp_path):
    f = write(tmp_path / "e.toml", '[model]\nd_model = 12\nnum_heads = 4\nposition = "nope"\n')
    assert load_experiment(f).model.d_head == 3


def test_existing_paths_and_named_datasets_pass(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello world")
    (tmp_path / "tok").mkdir()
    f = write(tmp_path / "e.toml", """
        [data]
        source = "corpus.txt"
        val_source = "tinyshakespeare"
        [tokenizer]
        path = "tok"
        vocab_size = 100     # ignored with a path: the tokenizer's own size counts at run time
        [model]
        vocab_size = 50
        """)
    cfg = load_experiment(f, base_dir=tmp_path)
    assert cfg.data.source == "corpus.txt" and cfg.tokenizer.path == "tok"
    for name in ("builtin", "tinystories", "owt", "tinyshakespeare"):
        assert load_experiment(f, [f"data.source={name}"], base_dir=tmp_path).data.source == name
    # relative paths resolve against base_dir, not against the experiment file
    with pytest.raises(ConfigError, match="data.source"):
        load_experiment(f, base_dir=tmp_path / "tok")
    # a finished run's config may name a corpus that is gone: check_paths=False reads it anyway
    assert load_experiment(f, base_dir=tmp_path / "tok", check_paths=False).data.source == "corpus.txt"


def test_every_problem_is_reported_at_once(tmp_path):
    f = write(tmp_path / "e.toml", """
        naem = "x"
        [training]
        stpes = 3
        batch_size = 0
        [model]
        norm = "sideways"
        [optimizer]
        lr = -1
        """)
    found = problems(load_experiment, f, ["eval.every=-5"])
    assert len(found) == 6
    # reading order: lines of the file first, then --set items
    assert [p.split()[0] for p in found] == ["unknown", "unknown", "training.batch_size", "model.norm",
                                             "optimizer.lr", "eval.every"]
    with pytest.raises(ConfigError) as info:
        load_experiment(f)
    assert str(info.value).startswith(f"5 config errors in {f}:")


# ----------------------------------------------------------------------------- files

def test_toml_syntax_error_names_file_and_line(tmp_path):
    f = write(tmp_path / "e.toml", "name = \"x\"\n[training]\nsteps 100\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(f)
    assert info.value.source == str(f)
    (msg,) = info.value.problems
    assert msg.startswith("TOML syntax error at line 3, column 7: Expected '='")
    assert str(f) in str(info.value)


def test_toml_syntax_error_at_end_of_file(tmp_path):
    f = write(tmp_path / "e.toml", "name = 'x'\nbetas = [1,\n")
    assert problems(load_experiment, f) == ["TOML syntax error at the end of the file (line 2): Invalid value"]


def test_missing_file_suggests_experiments(tmp_path):
    write(tmp_path / "experiments" / "quickstart.toml", "")
    write(tmp_path / "experiments" / "ablations" / "nope.toml", "")
    (msg,) = problems(load_experiment, "quickstrat.toml", base_dir=tmp_path)
    assert msg == "no such experiment file: quickstrat.toml; did you mean experiments/quickstart.toml?"
    (msg,) = problems(load_experiment, "zzzz.toml", base_dir=tmp_path)
    assert "experiments/ablations/nope.toml" in msg and "experiments/quickstart.toml" in msg


def test_bare_names_resolve_to_experiments(tmp_path):
    write(tmp_path / "experiments" / "ablations" / "nope.toml", 'name = "n"\n')
    assert load_experiment("ablations/nope", base_dir=tmp_path).name == "n"
    assert load_experiment("experiments/ablations/nope.toml", base_dir=tmp_path).name == "n"


def test_unreadable_inputs_are_config_errors(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"name = \"\xff\"\n")
    assert "not UTF-8" in problems(load_experiment, tmp_path / "bin.toml")[0]
    (tmp_path / "dir.toml").mkdir()
    assert "is a directory" in problems(load_experiment, tmp_path / "dir.toml")[0]


# ----------------------------------------------------------------------------- extends

def test_extends_chain_layers_in_order(tmp_path):
    write(tmp_path / "base.toml", """
        name = "base"
        [training]
        steps = 100
        batch_size = 4
        [model]
        d_model = 64
        num_heads = 4
        """)
    write(tmp_path / "mid" / "mid.toml", """
        extends = "../base.toml"
        name = "mid"
        [training]
        steps = 200
        """)
    leaf = write(tmp_path / "leaf.toml", """
        extends = "mid/mid.toml"
        [model]
        norm = "post"
        """)
    cfg = load_experiment(leaf, ["training.batch_size=8"])
    assert (cfg.name, cfg.training.steps, cfg.training.batch_size) == ("mid", 200, 8)
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.model.norm) == (64, 4, "post")


def test_errors_in_an_extended_file_name_that_file(tmp_path):
    base = write(tmp_path / "base.toml", "[training]\n# comment\nstepz = 1\n")
    leaf = write(tmp_path / "sub" / "leaf.toml", 'extends = "../base.toml"\n[model]\nnorm = "x"\n')
    found = problems(load_experiment, leaf)
    assert found[0].startswith("model.norm (line 3) must be one of")
    assert found[1] == f"unknown key 'training.stepz' (line 3 of {base.resolve()}) — did you mean 'training.steps'?"


def test_syntax_error_in_an_extended_file(tmp_path):
    write(tmp_path / "base.toml", "[training\n")
    leaf = write(tmp_path / "leaf.toml", 'extends = "base.toml"\n')
    with pytest.raises(ConfigError) as info:
        load_experiment(leaf)
    assert info.value.source.endswith("base.toml")
    assert "TOML syntax error at line 1" in info.value.problems[0]
    assert "extended by" in info.value.problems[0] and "leaf.toml" in info.value.problems[0]


def test_extends_cycle_is_rejected(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "c.toml"\n')
    write(tmp_path / "c.toml", '# the third file\nextends = "a.toml"\n')
    (msg,) = problems(load_experiment, tmp_path / "a.toml")
    assert "makes a cycle" in msg and "line 2 of" in msg
    assert msg.count("a.toml") == 2 and "b.toml" in msg
    write(tmp_path / "self.toml", 'extends = "self.toml"\n')
    assert "cycle" in problems(load_experiment, tmp_path / "self.toml")[0]


def test_extends_missing_or_not_a_string(tmp_path):
    write(tmp_path / "tinystories.toml", "")
    f = write(tmp_path / "x.toml", 'extends = "tinystorie.toml"\n')
    (msg,) = problems(load_experiment, f)
    assert "no such file" in msg and "did you mean 'tinystories.toml'?" in msg and "line 1" in msg
    f = write(tmp_path / "y.toml", "extends = 3\n")
    assert "must be a path" in problems(load_experiment, f)[0]
    assert "only be set in an experiment file" in problems(load_experiment, tmp_path / "tinystories.toml",
                                                            ["extends=x"])[0]


# ----------------------------------------------------------------------------- presets and vocab

def test_preset_then_overrides(tmp_path):
    f = write(tmp_path / "e.toml", '[model]\npreset = "small"\nnum_layers = 2\n[tokenizer]\nvocab_size = 4096\n')
    cfg = load_experiment(f)
    small = PRESETS["small"]
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.model.d_ff) == (small.d_model, small.num_heads, small.d_ff)
    assert cfg.model.num_layers == 2
    assert cfg.model.vocab_size == 4096  # from the tokenizer, not the preset
    assert load_experiment(f, ["model.d_model=1536"]).model.d_model == 1536
    assert load_experiment(f, ["model.preset=tiny"]).model.d_model == PRESETS["tiny"].d_model


def test_vocab_size_defaults_to_the_tokenizer_unless_set(tmp_path):
    f = write(tmp_path / "e.toml", "[tokenizer]\nvocab_size = 1000\n")
    assert load_experiment(f).model.vocab_size == 1000
    assert load_experiment(f, ["model.vocab_size=1024"]).model.vocab_size == 1024
    assert load_experiment_text("", "empty.toml").model.vocab_size == ExperimentConfig().tokenizer.vocab_size


def test_unknown_preset(tmp_path):
    f = write(tmp_path / "e.toml", '[model]\npreset = "smal"\n')
    (msg,) = problems(load_experiment, f)
    assert msg.startswith("model.preset (line 2) must be one of 'tiny', 'tinystories', 'small'")
    assert msg.endswith("did you mean 'small'?")


# ----------------------------------------------------------------------------- dicts

def test_experiment_from_dict_validates_like_a_file():
    cfg = experiment_from_dict({"training": {"steps": 20}, "schedule": {"warmup_steps": 5}})
    assert cfg.training.steps == 20
    found = problems(experiment_from_dict, {"training": {"stpes": 1}, "optimizer": {"lr": "x"}}, "trial-3")
    assert found == ["unknown key 'training.stpes' — did you mean 'training.steps'?",
                     "optimizer.lr must be a number, got 'x' (a string)"]
    with pytest.raises(ConfigError) as info:
        experiment_from_dict({"x": 1}, "trial-3")
    assert info.value.source == "trial-3"
