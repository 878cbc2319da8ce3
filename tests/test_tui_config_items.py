"""The Config tab (issue 11): unsaved edits are never dropped without asking, save-as shows the new file and
keeps the experiment's comments, ctrl+f jumps to a key, and the focused widget has a visible ring."""

from __future__ import annotations

import asyncio

from lab.tui.app import LabApp
from lab.views.config_doc import find_field, form_fields, patch_text
from test_tui_support import wait_for

DEMO = '''# the demo experiment: a comment the user wrote
name = "demo"

[data]
source = "builtin"

[model]
preset = "tiny"  # the smallest model
d_model = 64     # width

[training]
steps = 600
device = "cpu"
'''


def test_patch_text_changes_values_and_keeps_comments_and_order():
    out = patch_text(DEMO, {"model.d_model": 128, "optimizer.lr": 0.01, "training.steps": None, "description": "x"})
    assert "d_model = 128     # width" in out and "# the demo experiment" in out
    assert "steps" not in out and "[optimizer]\nlr = 0.01" in out
    assert out.index('name = "demo"') < out.index('description = "x"') < out.index("[data]")


def test_find_field_by_key_part_or_spelling():
    fields = form_fields()
    assert find_field(fields, "optimizer.lr").key == "optimizer.lr"
    assert find_field(fields, "warmpu_steps").key == "schedule.warmup_steps"
    assert find_field(fields, "norm").key.endswith("norm")
    assert find_field(fields, "zzzzzz") is None


def _app(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "demo.toml").write_text(DEMO)
    (tmp_path / "experiments" / "other.toml").write_text('name = "other"\n[model]\npreset = "tiny"\n'
                                                        '[training]\ndevice = "cpu"\n')
    return LabApp(tmp_path / "runs", cwd=tmp_path, experiment="experiments/demo.toml", initial_tab="config",
                  poll_interval=60.0)


def test_edits_are_kept_unless_discarding_is_confirmed_and_save_as_keeps_comments(tmp_path):
    from lab.tui.screens.confirm import ConfirmScreen

    app = _app(tmp_path)

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#config-pane")
            await wait_for(pilot, lambda: pane.form_ready, what="the form")
            await pilot.pause(0.3)
            assert not pane.is_edited()
            pane.set_field("model.d_model", "128")
            await wait_for(pilot, lambda: pane.is_edited())
            pick = app.query_one("#experiment-select")
            pick.value = "experiments/other.toml"  # picking another experiment asks first
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            await pilot.press("escape")  # keep editing
            await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            await wait_for(pilot, lambda: pick.value == "experiments/demo.toml")
            assert app.query_one("#field-model-d_model").value == "128" and pane.doc.source == "experiments/demo.toml"
            # Save as: the new file keeps the comments and is what the tab shows now.
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            prompt = app.screen.query_one("#prompt-input")
            prompt.value = "wide"
            await pilot.press("enter")
            saved = tmp_path / "experiments" / "wide.toml"
            await wait_for(pilot, lambda: saved.is_file(), what="the saved file")
            text = saved.read_text()
            assert "# the demo experiment" in text and "d_model = 128     # width" in text
            await wait_for(pilot, lambda: pick.value == "experiments/wide.toml", what="the picker on the new file")
            assert pane.doc.source == "experiments/wide.toml" and not pane.is_edited()
            # Edited again, then confirmed: the other experiment opens.
            pane.set_field("model.d_model", "256")
            await wait_for(pilot, lambda: pane.is_edited())
            pick.value = "experiments/other.toml"
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("d")
            await wait_for(pilot, lambda: pane.doc.source == "experiments/other.toml", what="the other file")

    asyncio.run(main())


def test_ctrl_f_jumps_to_a_key_and_the_focused_table_gets_a_bright_border(tmp_path):
    from test_tui_support import make_runs_dir

    app = _app(tmp_path)
    make_runs_dir(tmp_path)

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#config-pane")
            await wait_for(pilot, lambda: pane.form_ready, what="the form")
            await pilot.press("ctrl+f")
            await pilot.pause(0.2)
            app.screen.query_one("#prompt-input").value = "warmup"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "field-schedule-warmup_steps")
            assert app.focused.region.y >= 0 and app.focused.region.y < 40  # scrolled into view
            await pilot.press("escape", "2")  # leave the text field, then the Monitor tab
            table = None

            def focused_table():
                nonlocal table
                table = app.query_one("#run-table")
                return app.focused is table

            await wait_for(pilot, focused_table, what="the run table focused")
            accent = app.theme_variables["accent"].lower()
            assert table.styles.border_top[1].hex.lower() == accent
            app.query_one("#run-events").focus()
            await pilot.pause(0.1)
            assert table.styles.border_top[1].hex.lower() != accent

    asyncio.run(main())
