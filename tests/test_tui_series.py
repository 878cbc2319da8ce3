"""The monitor's data path without a UI: downsampled series, incremental run tails, the run lister."""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.views.monitor import ChartOptions, FrameBuilder, RunLister
from lab.views.run_tail import RunTail
from lab.views.series import MinMaxSeries
from test_tui_support import make_run

values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=0, max_size=700)


@settings(max_examples=60, deadline=None)
@given(values, st.integers(2, 64), st.integers(1, 50))
def test_extend_builds_the_same_buckets_as_appending_one_by_one(ys, max_points, split):
    xs = [(i, 10 * i) for i in range(len(ys))]
    one, bulk = MinMaxSeries(max_points), MinMaxSeries(max_points)
    for x, y in zip(xs, ys):
        one.append(x, y)
    bulk.extend(xs[:split], ys[:split])
    bulk.extend(xs[split:], ys[split:])
    assert (one.width, one.count, one._n, one._min, one._max, one._min_x, one._max_x, one._last) == \
           (bulk.width, bulk.count, bulk._n, bulk._min, bulk._max, bulk._min_x, bulk._max_x, bulk._last)
    assert one._sum == pytest.approx(bulk._sum, rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(values, st.integers(4, 80))
def test_points_are_bounded_and_keep_every_extreme(ys, max_points):
    s = MinMaxSeries(max_points)
    xs = [(i, 0) for i in range(len(ys))]
    s.extend(xs, ys)
    px, py = s.points()
    assert len(px) <= max_points
    assert px == sorted(px)  # x order, so lines are drawn left to right
    if ys:
        # Bucket min/max keeps the global extremes and the last value is the last one added.
        assert min(py) == min(ys) and max(py) == max(ys)
        assert s.last == ys[-1]
        # Every drawn point is a real (x, y) pair of the input.
        assert all(ys[int(x)] == y for x, y in zip(px, py))
        mx, my = s.means()
        assert sum(n * m for n, m in zip(s._n, my)) == pytest.approx(math.fsum(ys), rel=1e-6, abs=1e-3)


def test_smoothing_spans_records_not_buckets():
    s = MinMaxSeries(8)
    s.extend([(i, 0) for i in range(64)], [float(i % 2) for i in range(64)])  # width 16 buckets of 0,1,0,1...
    xs, ys = s.smoothed(10)
    assert ys == pytest.approx([0.5] * len(ys))  # each bucket's mean is 0.5 already


def _append(path, records):
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_run_tail_reads_only_new_complete_lines_and_restarts_after_a_rewrite(tmp_path):
    run = make_run(tmp_path, "r-20250101-000000", state="running", steps=100, total=1000, eval_every=50)
    tail = RunTail(run, max_points=100)
    assert tail.poll()
    assert tail.view().step == 100 and len(tail.series["loss"]) == 10 and len(tail.series["val_loss"]) == 2
    assert not tail.poll()  # nothing changed: one stat() per file, no reading
    with open(run / "metrics.jsonl", "a") as f:  # a half-written line waits for its newline
        f.write('{"type": "train", "step": 110, "tokens": 1, "time": 6.0, "loss": 1.5')
    tail.poll()
    assert len(tail.series["loss"]) == 10
    with open(run / "metrics.jsonl", "a") as f:
        f.write(', "lr": 0.001}\n')
    tail.poll()
    assert len(tail.series["loss"]) == 11 and tail.series["loss"].last == 1.5
    # A resume drops records after its checkpoint by rewriting the file: the tail starts over.
    from lm.records import truncate_jsonl_after_step

    truncate_jsonl_after_step(run / "metrics.jsonl", 50)
    tail.poll()
    assert len(tail.series["loss"]) == 5 and tail.last_train["step"] == 50


def test_eta_comes_from_the_records_own_clock(tmp_path):
    run = make_run(tmp_path, "r-20250101-000000", state="running", steps=200, total=1000)
    tail = RunTail(run)
    tail.poll()
    # make_run logs a step every 0.05 s of training time: 800 steps left take 40 s.
    assert tail.eta() == pytest.approx(40.0)
    st = json.loads((run / "status.json").read_text())
    st["state"] = "done"
    (run / "status.json").write_text(json.dumps(st))
    os.utime(run / "status.json", ns=(1, 1))  # a different mtime even on coarse clocks
    tail.poll()
    assert tail.eta() is None


def test_frame_builder_draws_only_when_something_changed(tmp_path):
    run = make_run(tmp_path, "r-20250101-000000", state="running", steps=100, total=1000, eval_every=50)
    builder = FrameBuilder(max_points=200)
    opts = ChartOptions(width=60, height=12)
    frame = builder.build(run, opts)
    assert frame is not None and frame.view.step == 100
    assert len(frame.sparklines["loss"].ys) == 10
    assert "train loss" in frame.chart.plain and "val loss" in frame.chart.plain
    assert [e["event"] for e in frame.new_events] == ["start", "eval", "eval"]
    assert builder.build(run, opts) is None
    _append(run / "metrics.jsonl", [{"type": "train", "step": 110, "tokens": 5, "time": 5.5, "loss": 2.0}])
    frame = builder.build(run, opts)
    assert frame.view.step == 110 and frame.new_events == []
    assert builder.build(run, ChartOptions(width=60, height=12, log_y=True)) is not None  # options redraw


def test_run_lister_sees_new_runs_and_state_changes(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a-20250101-000000", state="done")
    lister = RunLister(runs)
    assert [r.name for r in lister.list()] == ["a-20250101-000000"]
    make_run(runs, "b-20250101-000000", state="running", steps=10, started_offset=10)
    listed = lister.list()
    assert [r.state for r in listed] == ["running", "done"]
    # A running run whose pid is dead on this host reads as stopped (the contract's rule).
    st = json.loads((runs / "b-20250101-000000" / "status.json").read_text())
    import socket

    st.update(pid=2 ** 22 + 12345, host=socket.gethostname())
    (runs / "b-20250101-000000" / "status.json").write_text(json.dumps(st))
    assert [r.state for r in lister.list()] == ["stopped", "done"]
