"""``lab compare``: summary numbers, config differences, smoothing and plots, on hand-written run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.cli import main
from lab.run_comparison import (config_diff, ema, load_run, moving_average, resolve_run_paths, short_labels,
                         summarize)
from lab.views.plots import Curve, render_plot
from lm.errors import LabError


def make_run(root: Path, name: str, *, losses: list[float | None], vals: list[float], lr: float = 1e-3,
             norm: str = "pre", state: str = "done", warmup: int = 2, speed: float = 1000.0) -> Path:
    """A run directory as the engine writes it: config.toml, status.json, metrics.jsonl."""
    d = root / name
    d.mkdir(parents=True)
    config = {"name": name.split("-")[0], "runs_dir": str(root),
              "model": {"norm": norm, "d_model": 64}, "optimizer": {"lr": lr},
              "schedule": {"warmup_steps": warmup}, "training": {"steps": len(losses)}}
    (d / "config.toml").write_text(tomli_w.dumps(config))
    lines = []
    every = max(1, len(losses) // max(1, len(vals)))
    vi = 0
    for step, loss in enumerate(losses, start=1):
        lines.append({"type": "train", "step": step, "tokens": step * 128, "time": step * 0.1, "loss": loss,
                      "lr": lr, "tokens_per_s": speed + step})
        if step % every == 0 and vi < len(vals):
            lines.append({"type": "eval", "step": step, "tokens": step * 128, "time": step * 0.1,
                          "val_loss": vals[vi], "val_ppl": math.exp(vals[vi]), "val_bpb": vals[vi] / 2})
            vi += 1
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (d / "status.json").write_text(json.dumps({
        "state": state, "pid": None, "host": "elsewhere", "step": len(losses), "total_steps": len(losses),
        "tokens": len(losses) * 128, "best_val_loss": min(vals) if vals else None, "exit_code": 0, "message": ""}))
    return d


# ---- smoothing against slow, obviously correct references -----------------------------------------


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), span=st.integers(1, 12))
def test_ema_is_the_normalized_exponentially_weighted_mean(values, span):
    alpha = 2 / (span + 1)
    expected = []
    for t in range(len(values)):
        weights = [alpha * (1 - alpha) ** (t - i) for i in range(t + 1)]
        expected.append(sum(w * v for w, v in zip(weights, values)) / sum(weights))
    if span == 1:
        expected = values
    assert ema(values, span) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40), window=st.integers(1, 12))
def test_moving_average_is_the_trailing_mean(values, window):
    expected = [float(np.mean(values[max(0, i - window + 1): i + 1])) for i in range(len(values))]
    assert moving_average(values, window) == pytest.approx(expected, rel=1e-9, abs=1e-6)


# ---- summaries and differences ---------------------------------------------------------------------


def test_summary_numbers_come_from_the_records(tmp_path):
    run = load_run(make_run(tmp_path, "a-20250101-000000", losses=[5.0, 4.0, 3.0, 2.5], vals=[4.5, 3.2],
                            speed=1000.0))
    s = summarize(run)
    assert (s["final_val_loss"], s["best_val_loss"], s["best_val_bpb"]) == (3.2, 3.2, 1.6)
    assert s["tokens_per_s"] == 1002.5  # median of 1001..1004
    assert (s["steps"], s["total_steps"], s["diverged"]) == (4, 4, False)


def test_divergence_is_detected_from_the_loss_even_when_the_run_says_stopped(tmp_path):
    climbing = load_run(make_run(tmp_path, "hot", losses=[5.0, 5.5, 4.9, 6.0], vals=[5.0], state="stopped"))
    slow = load_run(make_run(tmp_path, "slow", losses=[5.0, 5.1, 5.2, 5.1], vals=[5.0]))  # within noise of its start
    nan = load_run(make_run(tmp_path, "nan", losses=[5.0, None], vals=[5.0], state="diverged"))
    warmup_spike = load_run(make_run(tmp_path, "ok", losses=[5.0, 5.5, 4.0, 3.0], vals=[4.0], warmup=2))
    assert summarize(climbing)["diverged"] and summarize(nan)["diverged"]
    assert not summarize(warmup_spike)["diverged"] and not summarize(slow)["diverged"]


def test_config_diff_shows_only_keys_that_differ(tmp_path):
    a = load_run(make_run(tmp_path, "a", losses=[1.0], vals=[1.0], lr=1e-3, norm="pre"))
    b = load_run(make_run(tmp_path, "b", losses=[1.0], vals=[1.0], lr=1e-3, norm="post"))
    c = load_run(make_run(tmp_path, "c", losses=[1.0], vals=[1.0], lr=3e-3, norm="pre"))
    diff = dict(config_diff([a, b, c]))
    assert diff == {"name": ["a", "b", "c"], "model.norm": ["pre", "post", "pre"],
                    "optimizer.lr": [1e-3, 1e-3, 3e-3]}
    (tmp_path / "c" / "config.toml").write_text(tomli_w.dumps({"name": "c", "extra": {"key": 1}}))
    diff = dict(config_diff([a, load_run(tmp_path / "c")]))
    assert diff["extra.key"] == [None, 1] and diff["model.norm"] == ["pre", None]


def test_runs_are_found_by_path_name_or_unique_prefix(tmp_path):
    a = make_run(tmp_path, "quick-20250101-000000", losses=[1.0], vals=[1.0])
    b = make_run(tmp_path, "quick-20250102-000000", losses=[1.0], vals=[1.0])
    assert resolve_run_paths([str(a), "quick-20250102-000000"], tmp_path) == [a, tmp_path / b.name]
    assert resolve_run_paths(["quick-20250101"], tmp_path) == [a]
    with pytest.raises(LabError, match="matches 2 runs"):
        resolve_run_paths(["quick"], tmp_path)
    c = make_run(tmp_path, "quick-nowarmup-20250103-000000", losses=[1.0], vals=[1.0])
    assert resolve_run_paths(["quick-nowarmup"], tmp_path) == [c]
    d = make_run(tmp_path, "qs-20250103-000000", losses=[1.0], vals=[1.0])
    make_run(tmp_path, "qs-post-20250103-000000", losses=[1.0], vals=[1.0])
    assert resolve_run_paths(["qs"], tmp_path) == [d]  # the exact name wins over longer names
    with pytest.raises(LabError, match="no run directory 'slow'.*quick-20250101-000000"):
        resolve_run_paths(["slow"], tmp_path)


def test_short_labels_drop_timestamps_only_when_names_stay_distinct():
    assert short_labels(["a-20250101-000000", "b-20250101-000000-2"]) == ["a", "b"]
    assert short_labels(["a-20250101-000000", "a-20250102-000000"]) == ["a-20250101-000000", "a-20250102-000000"]


# ---- the command ------------------------------------------------------------------------------------


def test_compare_command_prints_table_differences_and_smoothed_plot(tmp_path, capsys):
    make_run(tmp_path, "pre-20250101-000000", losses=[6.0 - 0.1 * i for i in range(40)], vals=[5.5, 4.5, 3.9, 3.0])
    make_run(tmp_path, "post-20250101-000000", losses=[6.0 - 0.05 * i for i in range(40)], vals=[5.7, 5.0, 4.6, 4.1],
             norm="post")
    code = main(["compare", "pre-2025", "post-2025", "--runs-dir", str(tmp_path), "--plot", "--metric", "loss",
                 "--smooth", "5", "--width", "80", "--height", "15"])
    out = capsys.readouterr().out
    assert code == 0
    pre_row = next(line for line in out.splitlines() if line.startswith("pre-"))
    assert "3.0000" in pre_row and "1.5000" in pre_row and "40/40" in pre_row and pre_row.rstrip().endswith("no")
    assert "model.norm" in out and "optimizer.lr" not in out  # only what differs
    assert "loss vs step (ema 5)" in out and "pre" in out.split("loss vs step")[1]

    assert main(["compare", "pre-2025", "post-2025", "--runs-dir", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["best_val_loss"] for r in data["runs"]] == [3.0, 4.1]
    assert data["differences"]["model.norm"] == ["pre", "post"]

    assert main(["compare", "pre-2025", "--runs-dir", str(tmp_path), "--plot", "--metric", "accuracy"]) == 2
    assert "unknown metric 'accuracy'" in capsys.readouterr().err


def test_plot_draws_each_curve_in_order_of_its_values():
    text = render_plot([Curve("low", [1, 2, 3], [1.0, 1.0, 1.0]), Curve("high", [1, 2, 3], [9.0, 9.0, 9.0])],
                       title="t", width=60, height=14, color=False, legend="bottom-right")
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("9┤"))
    bottom = next(i for i, line in enumerate(lines) if line.startswith("1┤"))
    assert top < bottom  # higher values are drawn higher up
    # Without colors each curve has its own marker: "low" is drawn with *, "high" with +, each at its value.
    assert "+++" in lines[top] and "***" not in lines[top]
    assert "***" in lines[bottom] and "+++" not in lines[bottom]
    assert "low" in text and "high" in text
    assert render_plot([Curve("empty", [], [])], color=False).startswith("(nothing to plot")
