"""The shipped experiment files, the dump/load round trip, the line scanner and the key reference."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config.docs import field_reference
from lm.config.loader import (
    NAMED_DATASETS,
    dump_experiment,
    load_experiment,
    load_experiment_text,
    write_resolved,
)
from lm.config.schema import SECTIONS, ExperimentConfig, field_docs, to_dict
from lm.config.toml_lines import key_lines

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
SCALE_FILES = sorted(p for p in (EXPERIMENTS / "scaling").glob("*.toml") if not p.stem.endswith("_base"))
EXPERIMENT_FILES = sorted(p for p in EXPERIMENTS.rglob("*.toml") if "sweeps" not in p.parts and p not in SCALE_FILES)
SWEEP_FILES = sorted((EXPERIMENTS / "sweeps").glob("*.toml"))


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ----------------------------------------------------------------------------- shipped files

def test_the_expected_files_are_there():
    names = {rel(p) for p in EXPERIMENT_FILES}
    for n in ["quickstart", "tinyshakespeare", "tinystories", "owt", "small", "medium", "large", "xl", "2.7B"]:
        assert f"experiments/{n}.toml" in names
    for n in ["no_rmsnorm", "post_norm", "nope", "silu_ffn", "no_warmup",
              "lr_1e-4", "lr_3e-4", "lr_1e-3", "lr_3e-3", "lr_1e-2"]:
        assert f"experiments/ablations/{n}.toml" in names
    assert {"lr.toml", "lr_quickstart.toml"} <= {p.name for p in SWEEP_FILES}


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=rel)
def test_every_experiment_file_loads_cleanly(path):
    cfg = load_experiment(path, base_dir=ROOT)
    assert cfg.data.source in NAMED_DATASETS
    text = path.read_text()
    assert text.startswith("# "), "each file opens with comments saying what it is for"
    lowered = text.lower()
    assert "estimate" in lowered or "measured" in lowered, "time/hardware figures say whether they are measured or estimates"
    # the resolved dump of a shipped file loads back to the same config
    assert load_experiment_text(dump_experiment(cfg), "resolved.toml", base_dir=ROOT) == cfg


def test_experiment_names_are_unique():
    names = [load_experiment(p, base_dir=ROOT).name for p in EXPERIMENT_FILES]
    assert len(names) == len(set(names))


def test_quickstart_is_cpu_sized():
    cfg = load_experiment(EXPERIMENTS / "quickstart.toml", base_dir=ROOT)
    assert cfg.data.source == "builtin" and cfg.training.device == "cpu"
    assert cfg.tokenizer.train_bytes <= 3_000_000 and 0 < cfg.data.max_bytes <= 4_000_000
    assert cfg.model.d_model <= 192 and cfg.model.num_layers <= 4
    assert cfg.schedule.warmup_steps < cfg.training.steps <= 1000
    assert 0 < cfg.eval.every < cfg.training.steps


def test_tinystories_has_the_cs336_settings():
    cfg = load_experiment(EXPERIMENTS / "tinystories.toml", base_dir=ROOT)
    m = cfg.model
    assert (cfg.tokenizer.vocab_size, m.vocab_size, m.context_length) == (10000, 10000, 256)
    assert (m.d_model, m.d_ff, m.num_layers, m.num_heads, m.rope_theta) == (512, 1344, 4, 16, 10000.0)
    assert cfg.schedule.kind == "cosine"
    assert cfg.total_tokens == 327_680_000
    owt = load_experiment(EXPERIMENTS / "owt.toml", base_dir=ROOT)
    assert (owt.data.source, owt.model.vocab_size) == ("owt", 32000)
    assert dataclasses.replace(owt.model, vocab_size=10000) == m


def test_tinyshakespeare_uses_nanogpts_split():
    cfg = load_experiment(EXPERIMENTS / "tinyshakespeare.toml", base_dir=ROOT)
    assert (cfg.data.source, cfg.data.val_fraction, cfg.data.val_source) == ("tinyshakespeare", 0.1, "")
    assert 0 < cfg.training.max_time <= 70


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "ablations").glob("*.toml")), ids=rel)
def test_ablations_change_only_what_they_say(path):
    """An ablation differs from the TinyStories baseline exactly in the keys it sets itself."""
    base = to_dict(load_experiment(EXPERIMENTS / "tinystories.toml", base_dir=ROOT))
    cfg = to_dict(load_experiment(path, base_dir=ROOT))
    own = tomllib.loads(path.read_text())
    assert own.pop("extends") == "../tinystories.toml"
    own_keys = {f"{s}.{k}" for s, t in own.items() if isinstance(t, dict) for k in t}
    changed = {f"{s}.{k}" for s in SECTIONS for k in set(base[s]) | set(cfg[s]) if base[s].get(k) != cfg[s].get(k)}
    assert changed == own_keys and changed
    assert cfg["name"] != base["name"]


@pytest.mark.parametrize("path", SCALE_FILES, ids=rel)
def test_scaling_study_files_plan_valid_runs(path):
    from lab.scale.spec import load_scale

    spec = load_scale(path, check_data=False)  # every point's config is resolved and checked
    assert len({p.n for p in spec.points}) >= 4 and path.read_text().startswith("# ")


@pytest.mark.parametrize("path", SWEEP_FILES, ids=rel)
def test_sweep_files_point_at_valid_experiments(path):
    sweep = tomllib.loads(path.read_text())
    assert set(sweep) <= {"base", "metric", "direction", "search", "params", "early_stop", "set"}
    assert sweep["direction"] in ("minimize", "maximize") and sweep["metric"] == "val_loss"
    assert sweep["search"]["method"] in ("grid", "random", "tpe")
    assert sweep["early_stop"]["rule"] in ("successive_halving", "hyperband", "none")
    base = path.parent / sweep["base"]
    fixed = sweep.get("set", {})
    for key, spec in sweep["params"].items():
        values = spec["values"] if "values" in spec else [spec["low"], spec["high"]]
        for v in values:
            cfg = load_experiment(base, {**fixed, key: v}, base_dir=ROOT)
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == v
    assert sweep["early_stop"]["min_steps"] < load_experiment(base, fixed, base_dir=ROOT).training.steps


# ----------------------------------------------------------------------------- round trip

finite = dict(allow_nan=False, allow_infinity=False)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,15}", fullmatch=True)


@st.composite
def experiments(draw) -> ExperimentConfig:
    """Random valid experiments (every rule of the loader respected)."""
    specials = draw(st.lists(st.text(min_size=1, max_size=8), max_size=3, unique=True))
    tok_vocab = draw(st.integers(256 + len(specials), 70000))
    heads = draw(st.integers(1, 8))
    position = draw(st.sampled_from(["rope", "nope"]))
    d_head = draw(st.integers(1, 16)) * (2 if position == "rope" else 1)
    steps = draw(st.integers(1, 10**6))
    warmup = draw(st.integers(0, steps))
    unit = st.floats(0.0, 1.0, exclude_max=True, **finite)
    positive = st.floats(1e-12, 1e6, **finite)
    nonneg = st.floats(0.0, 1e6, **finite)
    return ExperimentConfig(
        name=draw(names), description=draw(st.text(max_size=30)), runs_dir=draw(names),
        data=SECTIONS["data"](
            source=draw(st.sampled_from(NAMED_DATASETS)), val_source=draw(st.sampled_from(("",) + NAMED_DATASETS)),
            val_fraction=draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True, **finite)),
            max_bytes=draw(st.integers(0, 2**40)), cache_dir=draw(st.text(max_size=10))),
        tokenizer=SECTIONS["tokenizer"](vocab_size=tok_vocab, special_tokens=specials,
                                        train_bytes=draw(st.integers(0, 2**40))),
        model=SECTIONS["model"](
            vocab_size=draw(st.integers(tok_vocab, 200000)), context_length=draw(st.integers(2, 4096)),
            d_model=heads * d_head, num_layers=draw(st.integers(1, 8)), num_heads=heads,
            d_ff=draw(st.none() | st.integers(1, 4096)), rope_theta=draw(positive),
            norm=draw(st.sampled_from(["pre", "post", "none"])), position=position,
            ffn=draw(st.sampled_from(["swiglu", "silu"])), tie_embeddings=draw(st.booleans()),
            attn_dropout=draw(unit), resid_dropout=draw(unit),
            attention=draw(st.sampled_from(["sdpa", "naive"])), rmsnorm_eps=draw(positive)),
        optimizer=SECTIONS["optimizer"](lr=draw(positive), betas=[draw(unit), draw(unit)], eps=draw(positive),
                                        weight_decay=draw(nonneg), grad_clip=draw(nonneg)),
        schedule=SECTIONS["schedule"](kind=draw(st.sampled_from(["cosine", "constant"])), warmup_steps=warmup,
                                      cosine_steps=draw(st.just(0) | st.integers(warmup, 2 * 10**6)),
                                      min_lr_ratio=draw(st.floats(0.0, 1.0, **finite))),
        training=SECTIONS["training"](
            steps=steps, batch_size=draw(st.integers(1, 4096)), grad_accum=draw(st.integers(1, 64)),
            seed=draw(st.integers(0, 2**32 - 1)), device=draw(st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps"])),
            dtype=draw(st.sampled_from(["auto", "fp32", "bf16"])), compile=draw(st.sampled_from(["auto", "on", "off"])),
            max_time=draw(nonneg), log_every=draw(st.integers(1, 1000))),
        eval=SECTIONS["eval"](every=draw(st.integers(0, 10**5)), batches=draw(st.integers(1, 1000)),
                              batch_size=draw(st.integers(0, 4096))),
        checkpoint=SECTIONS["checkpoint"](every=draw(st.integers(0, 10**5)), keep_last=draw(st.integers(0, 100))),
    )


@settings(max_examples=60, deadline=None)
@given(experiments())
def test_dump_then_load_gives_an_equal_config(cfg):
    text = dump_experiment(cfg)
    assert load_experiment_text(text, "roundtrip.toml") == cfg
    # sections come out in schema order, after the top-level keys
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == [f"[{s}]" for s in SECTIONS]
    assert text.index("[data]") > text.index("runs_dir =")


def test_write_resolved_is_atomic_and_loads_back(tmp_path):
    cfg = load_experiment(EXPERIMENTS / "ablations" / "nope.toml", base_dir=ROOT)
    out = write_resolved(cfg, tmp_path / "run" / "config.toml")
    assert out.read_text() == dump_experiment(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["config.toml"]  # no temp file left behind
    again = load_experiment(out, base_dir=ROOT)
    assert again == cfg and "preset" not in out.read_text() and "extends" not in out.read_text()


def test_loader_imports_without_torch():
    code = ("import sys, lm.config.loader, lm.config.docs, lab.commands.config; "
            "bad = [m for m in ('torch', 'numpy', 'rich', 'textual') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- line scanner

def test_key_lines_tracks_tables_and_skips_multiline_values():
    text = '''\
name = "x"   # a comment with key = 1
description = """
fake = 1
[fake]
"""
[training]
steps = 10
betas = [
  1,  # not = a key
  2,
]
"quoted.key" = 1
a.b . c = 2
[ model ]
norm = 'post'
s = "it's # [x]"
[[runs]]
x = 1
'''
    lines = key_lines(text)
    assert tomllib.loads(text)  # the sample itself is valid TOML
    assert lines[("name",)] == 1 and lines[("description",)] == 2
    assert ("fake",) not in lines
    assert lines[("training",)] == 6 and lines[("training", "steps")] == 7
    assert lines[("training", "betas")] == 8
    assert lines[("training", "quoted.key")] == 12
    assert lines[("training", "a", "b", "c")] == 13 and lines[("training", "a")] == 13
    assert lines[("model",)] == 14 and lines[("model", "norm")] == 15
    assert lines[("runs", "x")] == 18


# ----------------------------------------------------------------------------- key reference

def test_field_reference_documents_every_key():
    ref = field_reference()
    keys = {fd.key for fd in ref}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in keys
    assert {"name", "description", "runs_dir", "extends", "model.preset"} <= keys
    assert all(fd.doc and fd.type and fd.default for fd in ref)
    norm = next(fd for fd in ref if fd.key == "model.norm")
    assert norm.choices == ("pre", "post", "none") and norm.default == '"pre"'
    assert norm.doc == field_docs(SECTIONS["model"])["norm"]
    assert [fd.key for fd in field_reference("eval")] == ["eval.every", "eval.batches", "eval.batch_size"]
