"""The Calculator tab: numbers typed in place update every device's column."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lab.tui.app import LabApp
from lab.tui.tabs.calculator import memory_bar
from test_tui_support import text_of, wait_for

PROJECT = Path(__file__).resolve().parent.parent


def swiglu_params(V: int, d: int, L: int, dff: int) -> int:
    """Parameters of the model by hand: embeddings + LM head, 4 d^2 attention and 3 d dff SwiGLU
    per layer, two RMSNorm gains per layer plus the final one."""
    return 2 * V * d + L * (4 * d * d + 3 * d * dff) + (2 * L + 1) * d


def test_changing_a_number_updates_every_device_column(tmp_path):
    app = LabApp(tmp_path / "runs", cwd=PROJECT, initial_tab="calculator")

    async def body(pilot):
        pane = app.query_one("#calculator-pane")
        await wait_for(pilot, lambda: len(pane.results) == 2, what="the first estimates")
        assert [r.device.key for r in pane.results] == ["m4", "rtx4090"]  # preselected
        # quickstart: vocab 2048, d_model 128, 4 layers, d_ff 320 (8/3 d rounded to 64)
        assert pane.results[0].params.total == swiglu_params(2048, 128, 4, 320)
        before = {k: pane.value(k, "m4") for k in ("parameters", "memory", "step time")}
        pane.set_number("d_model", 256)
        pane.set_number("d_ff", 704)
        await wait_for(pilot, lambda: pane.results[0].params.total == swiglu_params(2048, 256, 4, 704))
        after = {k: pane.value(k, "m4") for k in before}
        assert all(after[k] != before[k] for k in before)
        assert pane.value("parameters", "rtx4090") == pane.value("parameters", "m4")
        bars = text_of(app.query_one("#calc-bars"))
        assert bars.splitlines()[0].startswith("m4") and "16 GiB" in bars
        # A bad number is named, the table keeps its last good numbers.
        pane.set_number("num_heads", 7)
        await wait_for(pilot, lambda: "divisible" in text_of(app.query_one("#calc-error")))
        # Batch grows memory, not parameters.
        pane.set_number("num_heads", 4)
        pane.set_number("batch_size", 64)
        await wait_for(pilot, lambda: pane.results[0].settings.batch_size == 64)
        assert pane.value("parameters", "m4") == after["parameters"]
        assert pane.results[0].memory.total > 0

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await body(pilot)
    asyncio.run(main())


def test_memory_bar_fills_with_the_fraction_and_turns_red_when_over():
    half = memory_bar(8, 16, width=10)
    assert half.plain == "█████░░░░░"
    over = memory_bar(40, 16, width=10)
    assert over.plain == "█" * 10 and "red" in str(over.style) and "red" not in str(half.style)


def test_the_table_keeps_its_column_widths_after_switching_experiment(tmp_path):
    """Seen at 120x40: after picking another experiment the columns shrank to their headers' widths."""
    (tmp_path / "experiments").mkdir()
    for name, d in (("a", 64), ("b", 128), ("c", 256)):
        (tmp_path / "experiments" / f"{name}.toml").write_text(
            f'name = "{name}"\n[model]\npreset = "tiny"\nd_model = {d}\n[training]\ndevice = "cpu"\n')
    app = LabApp(tmp_path / "runs", cwd=tmp_path, initial_tab="calculator", poll_interval=60)

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#calculator-pane")
            await wait_for(pilot, lambda: len(pane.results) == 2)
            sel, table = app.query_one("#calc-config"), app.query_one("#calc-table")
            for rep in range(2):
                for name in ("a", "b", "c"):
                    sel.value = f"experiments/{name}.toml"
                    await pilot.pause(0.02)
            await wait_for(pilot, lambda: table.row_count == 9 and table.ordered_columns, timeout=20)
            await pilot.pause(1.0)  # the estimates of every switch have arrived
            widths = [c.get_render_width(table) - 2 * table.cell_padding for c in table.ordered_columns]
            cells = [max(len(str(table.get_cell_at((r, i)).plain if hasattr(table.get_cell_at((r, i)), "plain")
                                 else table.get_cell_at((r, i)))) for r in range(table.row_count))
                     for i in range(len(widths))]
            assert all(w >= c for w, c in zip(widths, cells)), (widths, cells)

    asyncio.run(main())
