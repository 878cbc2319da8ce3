"""Tests for breaks in lab/ that once passed every test (issue 17's mutation pass).

Each test names the one-line break it catches: ``lab compare``'s tokens/s summary (median, not mean)
and config diff (ignored keys), the sweep driver's divergence ceiling, the chart downsampling (a spike
survives) and the run tail's best-val fallback (from the records when status.json has none).
"""

from __future__ import annotations

import json
import math

import pytest

from lab.run_comparison import IGNORED_KEYS, config_diff, load_run, summarize
from lab.views.charts import ChartCurve, render_chart
from lab.views.run_tail import RunTail
from lab.views.series import MinMaxSeries, downsample
from test_run_comparison import make_run as make_compare_run
from test_tui_support import make_run


def test_compare_summarises_tokens_per_s_by_the_median_not_the_mean(tmp_path):
    run = make_compare_run(tmp_path, "a-20250101-000000", losses=[5.0, 4.0, 3.0, 2.5, 2.4], vals=[3.0])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    speeds = iter([1000.0, 1000.0, 1000.0, 1000.0, 1_000_000.0])  # one record timed over a pause
    for r in recs:
        if r["type"] == "train":
            r["tokens_per_s"] = next(speeds)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert summarize(load_run(run))["tokens_per_s"] == 1000.0  # the mean would be 200,800


@pytest.mark.parametrize("key", IGNORED_KEYS)
def test_config_diff_leaves_out_the_keys_that_always_differ(tmp_path, key):
    import tomllib

    import tomli_w

    a = make_compare_run(tmp_path, "a", losses=[1.0], vals=[1.0])
    b = make_compare_run(tmp_path, "b", losses=[1.0], vals=[1.0])
    for run, value in ((a, "one"), (b, "two")):
        cfg = tomllib.loads((run / "config.toml").read_text())
        cfg.update({"name": "same", key: value})
        (run / "config.toml").write_text(tomli_w.dumps(cfg))
    assert config_diff([load_run(a), load_run(b)]) == []
    assert set(IGNORED_KEYS) == {"runs_dir", "description"}


def test_the_sweep_driver_caps_a_trials_starting_loss_at_ln_vocab(tmp_path):
    from lab.queue.store import QueueEntry
    from lab.sweep.driver import divergence_watch
    from lab.sweep.spec import SweepSpec

    exp = tmp_path / "e.toml"
    exp.write_text('name = "e"\n[model]\npreset = "tiny"\nvocab_size = 300\n[tokenizer]\nvocab_size = 300\n'
                   '[schedule]\nwarmup_steps = 7\n[training]\nsteps = 20\n')
    entry = QueueEntry(id=1, experiment=str(exp), overrides=["schedule.warmup_steps=3"])
    watch = divergence_watch(SweepSpec(name="s", path=exp, base=str(exp)), entry)
    assert watch.ceiling == pytest.approx(math.log(300)) and watch.warmup_steps == 3
    # The cap decides: a first record above ln(300) = 5.70 (after a too-high lr) must not become the bar.
    assert watch.check({"step": 1, "loss": 9.0}) is None
    assert "above the starting loss" in watch.check({"step": 5, "loss": 6.5})


def test_downsampling_keeps_a_one_point_spike():
    n = 10_000
    xs = [float(i) for i in range(n)]
    ys = [2.0 + 1e-4 * math.sin(i) for i in range(n)]
    ys[6543] = 50.0
    _, kept = downsample(xs, ys, 200)
    assert len(kept) <= 200 and max(kept) == 50.0
    series = MinMaxSeries(max_points=200)
    series.extend([(x, x) for x in xs], ys)
    assert max(series.points()[1]) == 50.0
    chart = render_chart([ChartCurve("loss", xs, ys)], 40, 10)  # 80 points drawn of 10,000
    assert "50" in chart.plain.splitlines()[1]  # the top tick is the spike's height


def test_the_run_tail_falls_back_to_the_records_for_the_best_val_loss(tmp_path):
    run = make_run(tmp_path, "r-20250101-000000", steps=300, eval_every=100)
    st = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps(dict(st, best_val_loss=None)))
    tail = RunTail(run)
    tail.poll()
    vals = [r["val_loss"] for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
            if r["type"] == "eval"]
    assert tail.view().best_val_loss == min(vals)
