"""The Config tab: the form, inline validation by the loader `lab run` uses, raw TOML, save as."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest

from lab.tui.app import LabApp
from lab.views.config_doc import ExperimentDoc, form_fields, parse_input, problems_by_key, toml_from_values, values_of
from lm.config.loader import load_experiment
from lm.config.schema import ExperimentConfig

from test_tui_support import text_of, wait_for

PROJECT = Path(__file__).resolve().parent.parent


def run_app(app, body, size=(120, 40)):
    """Run ``body(pilot)`` against ``app`` headless."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.query_one("#config-pane").form_ready, what="the form")
            await body(pilot)
    asyncio.run(main())


def test_form_values_round_trip_through_toml_to_the_same_config():
    cfg = load_experiment("quickstart", base_dir=PROJECT)
    values = values_of(cfg)
    assert set(values) == {f.key for f in form_fields()}
    text = toml_from_values(values)
    from lab.views.config_doc import validate_text

    v = validate_text(text, "experiments/quickstart.toml", PROJECT)
    assert v.ok and v.cfg == cfg


def test_inputs_parse_like_set_values_and_strings_stay_strings():
    fields = {f.key: f for f in form_fields()}
    assert parse_input(fields["model.d_model"], "256") == 256
    assert parse_input(fields["optimizer.betas"], "[0.9, 0.99]") == [0.9, 0.99]
    assert parse_input(fields["model.d_ff"], "  ") is None  # empty: the default (computed d_ff)
    assert parse_input(fields["data.source"], "1e-3") == "1e-3"  # a string field takes the text as is
    assert parse_input(fields["training.steps"], "abc") == "abc"  # the loader then names the wrong type


def test_problems_are_attached_to_every_key_they_name():
    by_key = problems_by_key(["model.d_model (line 3) must be divisible by model.num_heads (4)",
                              "name must start with a letter", "TOML syntax error at line 2"])
    assert by_key["model.d_model"] == ["model.d_model must be divisible by model.num_heads (4)"]
    assert "model.num_heads" in by_key and "name" in by_key and by_key[""] == ["TOML syntax error at line 2"]


def test_an_invalid_value_shows_its_error_next_to_the_field_and_in_the_problems(tmp_path):
    app = LabApp(tmp_path / "runs", cwd=PROJECT, experiment="quickstart", initial_tab="config")

    async def body(pilot):
        pane = app.query_one("#config-pane")
        assert "valid" in text_of(app.query_one("#config-problems"))
        # Type into the field as a user would: focus it, clear it, type.
        field = app.query_one("#field-model-d_model")
        field.focus()
        field.value = ""
        await pilot.press(*"130")
        doc = app.query_one("#doc-field-model-d_model")
        await wait_for(pilot, lambda: "(130)" in text_of(doc), what="the d_model error")
        assert "model.d_model (130) must be divisible by model.num_heads (4)" in text_of(doc)
        assert field.has_class("-invalid-field")
        assert "1 problem" in text_of(app.query_one("#config-problems"))
        # The same problem is shown under num_heads, the other key it names.
        assert "divisible" in text_of(app.query_one("#doc-field-model-num_heads"))
        pane.set_field("training.steps", "many")
        steps_doc = app.query_one("#doc-field-training-steps")
        await wait_for(pilot, lambda: "must be an integer" in text_of(steps_doc), what="the steps error")
        assert "training.steps must be an integer, got 'many'" in text_of(steps_doc)
        # Launching is refused while a problem is left.
        pane.set_field("model.d_model", "128")
        await wait_for(pilot, lambda: "divisible" not in text_of(doc), what="d_model fixed")
        await pilot.press("f5")
        await pilot.pause()
        assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
        pane.set_field("training.steps", "100")
        await wait_for(pilot, lambda: pane.validation.ok, what="a valid config")
        assert pane.validation.cfg.training.steps == 100 and pane.validation.cfg.model.d_model == 128
        assert "valid" in text_of(app.query_one("#config-problems"))

    run_app(app, body)


@pytest.mark.slow
def test_raw_toml_view_edits_the_same_experiment_and_save_as_writes_a_loadable_file(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "base.toml").write_text('name = "base"\n# a comment\n[training]\nsteps = 50\n'
                                                        '[schedule]\nwarmup_steps = 5\n')
    app = LabApp(tmp_path / "runs", cwd=tmp_path, experiment="experiments/base.toml", initial_tab="config")

    async def body(pilot):
        pane = app.query_one("#config-pane")
        await pilot.press("ctrl+r")
        raw = app.query_one("#config-raw")
        assert "# a comment" in raw.text  # the file as written while unedited
        raw.text = raw.text.replace("steps = 50", "steps = 70").replace('name = "base"', 'name = "edited"')
        await wait_for(pilot, lambda: pane.validation.ok and pane.validation.cfg.training.steps == 70)
        raw.text = raw.text + "\n[model]\nnorm = 'sideways'\n"
        problems = app.query_one("#config-problems")
        await wait_for(pilot, lambda: "model.norm (line 9) must be one of" in text_of(problems))
        raw.text = raw.text.replace("norm = 'sideways'", "norm = 'post'")
        await pilot.press("ctrl+r")  # back to the form, which now shows the raw edits
        await wait_for(pilot, lambda: app.query_one("#field-training-steps").value == "70")
        assert app.query_one("#field-model-norm").value == "post"
        await wait_for(pilot, lambda: pane.validation.ok)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.query_one("#prompt-input"))
        assert app.screen.query_one("#prompt-input").value == "experiments/edited.toml"
        await pilot.press("enter")
        saved = tmp_path / "experiments" / "edited.toml"
        await wait_for(pilot, saved.exists)
        cfg = load_experiment(saved, base_dir=tmp_path)
        assert cfg.training.steps == 70 and cfg.model.norm == "post" and cfg.name == "edited"
        assert tomllib.loads(saved.read_text())["training"]["steps"] == 70
        assert pane.doc.source == "experiments/edited.toml"
        # Saving again under the same name is refused: the console never overwrites a file.
        saved.write_text(saved.read_text() + "# mine\n")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.query_one("#prompt-input"))
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert saved.read_text().endswith("# mine\n")

    run_app(app, body)


def test_launch_args_reproduce_an_unedited_file_and_fall_back_to_the_resolved_config():
    doc = ExperimentDoc.open("quickstart", ["training.steps=500"], base_dir=PROJECT)
    assert doc.launch_args(doc.loaded) == ("experiments/quickstart.toml", ("training.steps=500",))
    import dataclasses

    edited = dataclasses.replace(doc.loaded, name="other")
    assert doc.launch_args(edited) == (None, ())
    assert ExperimentDoc.default().launch_args(ExperimentConfig()) == (None, ())


def test_a_file_with_problems_opens_with_its_problems_shown(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "bad.toml").write_text('name = "bad"\n[model]\nd_modle = 64\n')
    app = LabApp(tmp_path / "runs", cwd=tmp_path, experiment="experiments/bad.toml", initial_tab="config")

    async def body(pilot):
        problems = app.query_one("#config-problems")
        await wait_for(pilot, lambda: "d_modle" in text_of(problems))
        # Shown as the file's own text, so the line the problem names is the line the user sees.
        assert "unknown key 'model.d_modle' (line 3)" in text_of(problems)
        assert "did you mean 'model.d_model'" in text_of(problems)
        raw = app.query_one("#config-raw")
        assert raw.display and raw.text.splitlines()[2] == "d_modle = 64"
        raw.text = raw.text.replace("d_modle", "d_model")
        await wait_for(pilot, lambda: app.query_one("#config-pane").validation.ok)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.query_one("#field-model-d_model").value == "64")
        assert app.query_one("#field-name").value == "bad"

    run_app(app, body)
