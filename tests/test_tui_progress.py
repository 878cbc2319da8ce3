"""The monitor's progress bar draws the fill of its current width after a resize."""

import asyncio

import pytest
from textual.app import App
from textual.widgets._progress_bar import Bar

from lab.tui.widgets.progress import RunProgress


class OneBar(App):
    CSS = "RunProgress { width: 100%; } RunProgress Bar { width: 1fr; }"

    def compose(self):
        yield RunProgress(total=600, show_eta=False)


@pytest.mark.parametrize("first, then", [(40, 120), (120, 40), (40, 97)])
def test_the_fill_follows_a_resize(first, then):
    asyncio.run(_resize_and_check(first, then))


async def _resize_and_check(first: int, then: int) -> None:
    app = OneBar()
    async with app.run_test(size=(first, 5)) as pilot:
        app.query_one(RunProgress).update(progress=40)
        await pilot.pause()
        await pilot.resize_terminal(then, 5)
        await pilot.pause()
        await pilot.pause()
        bar = app.query_one(Bar)
        half_cells = 2 * bar.size.width
        # Textual rounds down to the bar's half-cells: 40 of 600 steps at this width, as a bar set
        # after the resize would draw it (hand-computed from the width, not read back from Textual).
        assert bar.percentage == int(40 / 600 * half_cells) / half_cells
