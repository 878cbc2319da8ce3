"""Non-finite metrics (issue 11): one ``Infinity`` or ``NaN`` never closes the console; it is drawn as a gap
and a mark everywhere (sparklines, charts, tables, ``lab compare``, ``lab runs``)."""

from __future__ import annotations

import asyncio
import json
import math


from lab.views.charts import ChartCurve, render_chart, segments
from lab.views.formats import format_number, nice_ticks, tick_label
from lab.views.series import MinMaxSeries
from lab.views.spark import MARK, spark_cells, spark_text
from test_tui_support import make_run, text_of, wait_for

INF, NAN = float("inf"), float("nan")


def _poison(run, steps=(610, 620, 630)):
    """Append train/eval records with inf/NaN values as Python's json writes them (Infinity, NaN) and a
    null (what the trainer writes for them)."""
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"type": "train", "step": steps[0], "tokens": 1, "loss": INF, "ppl": INF,
                            "lr": 1e-3, "grad_norm": NAN, "tokens_per_s": INF}) + "\n")
        f.write(json.dumps({"type": "train", "step": steps[1], "tokens": 2, "loss": NAN, "ppl": None,
                            "lr": 1e-3, "grad_norm": INF, "tokens_per_s": 40000.0}) + "\n")
        f.write(json.dumps({"type": "eval", "step": steps[1], "val_loss": INF, "val_ppl": INF, "val_bpb": NAN})
                + "\n")
        f.write(json.dumps({"type": "train", "step": steps[2], "tokens": 3, "loss": 2.5, "ppl": 12.2,
                            "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 40000.0}) + "\n")


def test_the_series_keeps_non_finite_values_apart_as_marks():
    s = MinMaxSeries(max_points=8)
    s.extend([(i, i) for i in range(6)], [1.0, INF, 2.0, NAN, 3.0, -INF])
    s.append((6, 6), NAN)
    assert s.non_finite == 4 and s.marks() == [1, 3, 5, 6]
    assert s.minimum() == 1.0 and s.maximum() == 3.0
    xs, ys = s.means()
    assert all(math.isfinite(y) for y in ys) and len(s) == 7
    # Many marks stay bounded (evenly thinned), the count stays exact.
    for i in range(100):
        s.append((7 + i, 7 + i), INF)
    assert s.non_finite == 104 and len(s.marks()) <= 4


def test_sparkline_cells_show_a_mark_where_a_value_was_not_finite():
    cells = spark_cells([0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, 5.0], [2.0], 5)
    assert cells == [0, 2, MARK, 5, 7]
    assert spark_cells([], [], [], 4) == [None] * 4
    assert spark_cells([5], [1.0], [], 3) == [3, 3, 3]
    assert spark_text([], [], [1.0, 2.0], 4).plain == f"{MARK}  {MARK}"
    text = spark_text([0, 10], [1.0, 1.0], [5.0], 11)
    assert text.plain[5] == MARK and len(text.plain) == 11


def test_a_chart_line_breaks_at_a_non_finite_value_and_marks_it():
    pts = [(0, 1.0), (1, 2.0), (3, 3.0), (4, 4.0)]
    assert segments(pts, [2.0]) == [[(0, 1.0), (1, 2.0)], [(3, 3.0), (4, 4.0)]]
    assert segments(pts, []) == [pts]
    chart = render_chart([ChartCurve("loss", [0, 1, 3, 4], [1.0, INF, 3.0, NAN], marks=[2.0])], 60, 12)
    assert MARK in chart.plain and "non-finite (1)" in chart.plain
    only_bad = render_chart([ChartCurve("loss", [1, 2], [INF, NAN], marks=[1, 2])], 40, 10)
    assert "2 non-finite values" in only_bad.plain


def test_numbers_read_as_people_write_them():
    assert format_number(2.33e16 * 1e9) == "2.33e+25"
    assert format_number(2.33e16) == "2.33e+16"
    assert format_number(2.33e13) == "23.3T" and format_number(40000.0) == "40K"
    assert format_number(INF) == "inf" and format_number(-INF) == "-inf" and format_number(NAN) == "nan"
    assert format_number(None) == "-" and format_number(2.5, ".3g") == "2.5"
    assert all(t == int(t) for t in nice_ticks(0, 25, 5, integer=True))
    assert nice_ticks(0, 25, 5, integer=True) == [0, 5, 10, 15, 20, 25]
    assert nice_ticks(5.47, 5.9, 5) == [5.5, 5.6, 5.7, 5.8, 5.9]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]  # never a step of 0.5
    assert tick_label(12000, integer=True) == "12K" and tick_label(500, integer=True) == "500"
    assert tick_label(0.25) == "0.25" and tick_label(3e-4) == "3e-04"


def test_chart_step_ticks_are_whole_numbers():
    chart = render_chart([ChartCurve("loss", [1, 2, 3], [3.0, 2.0, 1.5])], 60, 12)
    lines = chart.plain.splitlines()
    axis = lines[next(i for i, line in enumerate(lines) if "└" in line) + 1]  # the x tick labels
    assert "." not in axis and axis.split() == ["1", "2", "3"]


def test_the_console_keeps_running_on_inf_and_nan_metrics(tmp_path):
    from lab.tui.app import LabApp

    runs = tmp_path / "runs"
    run = make_run(runs, "boom-20250101-000000", state="diverged", steps=600, total=1000)
    _poison(run)
    make_run(runs, "fine-20250101-010000", state="done", started_offset=-10)
    app = LabApp(runs, cwd=tmp_path, poll_interval=0.3, initial_tab="monitor")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#monitor-pane")
            await wait_for(pilot, lambda: pane.runs, what="the run list")
            pane.select(run)
            await wait_for(pilot, lambda: pane.displayed_step == 630, what="the poisoned run's frame")
            for _ in range(3):  # several polls: the next frames draw too
                await pilot.pause(0.35)
            assert app.is_running and app.return_code is None
            spark = app.query_one("#spark-loss")
            assert MARK in spark.render().plain
            assert MARK in app.query_one("#spark-grad_norm").render().plain
            assert "non-finite" in text_of(app.query_one("#run-chart"))
            await pilot.press("l", "m", "x")  # log axis, smoothing and tokens with marks
            await pilot.pause(0.5)
            assert app.is_running
            await pilot.press("4")  # the queue tab compares finished runs; switch back and forth
            await pilot.press("2")
            await pilot.pause(0.3)
            assert app.is_running

    asyncio.run(main())


def test_lab_runs_and_compare_print_non_finite_values(tmp_path, capsys):
    from lab.cli import main

    runs = tmp_path / "runs"
    bad = make_run(runs, "boom-20250101-000000", state="diverged", steps=600, total=1000)
    _poison(bad)
    make_run(runs, "fine-20250101-010000", state="done")
    st = json.loads((bad / "status.json").read_text())
    (bad / "status.json").write_text(json.dumps(dict(st, best_val_loss=None)))
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    assert "boom" in capsys.readouterr().out
    assert main(["compare", "boom", "fine", "--runs-dir", str(runs), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "inf" in out  # the final val loss of the diverged run
    assert main(["compare", "boom", "fine", "--runs-dir", str(runs), "--plot", "--metric", "loss", "--raw"]) == 0
    assert MARK in capsys.readouterr().out
