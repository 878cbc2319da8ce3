"""lab scale: the power-law fit against known values, study files, and a 3-size CPU study end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lab.scale.fit import fit_power_law, fit_surface, isoflop_optimum, power_fit, surface_optimum
from lab.scale.spec import load_scale
from lm.calc import count_params
from lm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("seed", range(10))
def test_fit_recovers_known_law_from_noisy_points(seed):
    """8 sizes over 3 decades, 0.5% multiplicative noise: alpha within 20%, c within 4%, a within 2x.

    (Over 200 seeds the worst misses were alpha 22% and a 104% at 6 points; a and alpha trade off along
    a ridge, so a is the loosest. The noiseless fit is exact: see the next test.)
    """
    rng = np.random.default_rng(seed)
    a, alpha, c = 20.0, 0.3, 1.5
    n = np.geomspace(1e5, 1e8, 8)
    loss = (a * n ** -alpha + c) * (1 + 0.005 * rng.standard_normal(len(n)))
    law = fit_power_law(n, loss)
    assert abs(law.alpha / alpha - 1) < 0.20
    assert abs(law.c / c - 1) < 0.04
    assert 0.5 < law.a / a < 2.0
    assert law.max_rel_error < 0.02  # the fitted curve passes within the noise of every point


def test_fit_is_exact_without_noise_and_checks_its_input():
    n = np.array([3e4, 1e5, 4e5, 2e6, 1e7])
    law = fit_power_law(n, 7.59 * n ** -0.032 + 0.0)
    assert law.alpha == pytest.approx(0.032, rel=1e-4) and law.a == pytest.approx(7.59, rel=1e-3)
    assert law.c == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([1e5, 1e6], [3.0, 2.5])


def _isoflop_grid(law, budgets=(1e12, 3e12, 1e13), sizes=(3e4, 1e5, 3e5, 1e6)):
    """Points of an isoFLOP grid (D = C / 6N) with the losses of a known surface ``law(n, d)``."""
    n = np.array([s for _ in budgets for s in sizes])
    d = np.array([c / (6 * s) for c in budgets for s in sizes])
    return n, d, law(n, d)


@settings(max_examples=15, deadline=None)
@given(e=st.floats(0.5, 2.5), a=st.floats(5, 80), alpha=st.floats(0.15, 0.6), b=st.floats(5, 200),
       beta=st.floats(0.15, 0.6))
def test_surface_fit_recovers_a_known_chinchilla_law_exactly(e, a, alpha, b, beta):
    """Noiseless points of L = e + a N^-alpha + b D^-beta on a 4 x 3 isoFLOP grid give the law back:
    the exponents within 1% and every point's loss within 0.1%. (Where a term changes the loss by
    less than 0.05 nats across the grid, the grid cannot see its exponent: such laws are skipped.)"""
    n, d, loss = _isoflop_grid(lambda n, d: e + a * n ** -alpha + b * d ** -beta)
    size_term, data_term = a * n ** -alpha, b * d ** -beta
    assume(np.ptp(size_term) > 0.05 and np.ptp(data_term) > 0.05)
    law = fit_surface(n, d, loss)
    assert law.alpha == pytest.approx(alpha, rel=0.01) and law.beta == pytest.approx(beta, rel=0.01)
    assert law.max_rel_error < 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_surface_fit_passes_within_the_noise_and_its_optimum_follows_chinchilla(seed):
    """0.5% noise: every point within 2%; the law's compute-optimal N at a budget within 2x of the true
    one (for D = C / 6N the true optimum has the closed form of Chinchilla's approach 3)."""
    rng = np.random.default_rng(seed)
    e, a, alpha, b, beta = 1.5, 40.0, 0.3, 60.0, 0.3
    n, d, loss = _isoflop_grid(lambda n, d: e + a * n ** -alpha + b * d ** -beta)
    law = fit_surface(n, d, loss * (1 + 0.005 * rng.standard_normal(len(loss))))
    assert law.max_rel_error < 0.02
    c = 3e12
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    true_n = g * (c / 6) ** (beta / (alpha + beta))
    n_opt, d_opt, _ = surface_optimum(law, c, lambda n: 6 * n, (3e4, 1e6))
    assert 0.5 < n_opt / true_n < 2 and d_opt == pytest.approx(c / (6 * n_opt))


def test_surface_fit_checks_its_input_and_an_optimum_at_the_search_edge_is_none():
    with pytest.raises(ValueError, match="at least 5"):
        fit_surface([1, 2, 3, 4], [1, 2, 3, 4], [3, 2, 1, 0.5])
    with pytest.raises(ValueError, match="2 distinct N"):
        fit_surface([1e5] * 6, [1e6, 2e6, 3e6, 4e6, 5e6, 6e6], [3, 2.9, 2.8, 2.7, 2.6, 2.5])
    from lab.scale.fit import SurfaceLaw

    no_size_term = SurfaceLaw(e=1.0, a=0.0, alpha=0.3, b=50.0, beta=0.3, rmse=0.0, max_rel_error=0.0)
    assert surface_optimum(no_size_term, 1e12, lambda n: 6 * n, (1e5, 1e6)) is None  # smaller is always better


def test_isoflop_optimum_of_a_parabola_and_power_fit():
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    u = np.log(n)
    loss = 3.0 + 0.1 * (u - np.log(1e6)) ** 2  # minimum at N = 1e6
    d = 1e15 / (6 * n)
    opt = isoflop_optimum(1e15, n, d, loss)
    assert opt.n_opt == pytest.approx(1e6, rel=1e-6) and opt.inside
    assert opt.d_opt == pytest.approx(1e15 / 6e6, rel=1e-6) and opt.loss_opt == pytest.approx(3.0)
    assert isoflop_optimum(1e15, n, d, -loss) is None  # no minimum
    k, e = power_fit([1e15, 1e16, 1e17], [1e6, 10 ** 6.5, 1e7])
    assert e == pytest.approx(0.5) and k == pytest.approx(1e6 / 1e15 ** 0.5, rel=1e-6)


def _write_study(tmp_path: Path, budget: str, sizes: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and then it ran to the red door where a dog lay in the sun".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 12)) + "." for _ in range(3000)))
    (tmp_path / "base.toml").write_text("""name = "tinyscale"
[data]
source = "corpus.txt"
cache_dir = "cache"
[tokenizer]
vocab_size = 257
[model]
context_length = 32
d_model = 32
num_layers = 1
num_heads = 2
[optimizer]
lr = 3e-3
[schedule]
warmup_steps = 5
[training]
steps = 40
batch_size = 8
device = "cpu"
threads = 1
log_every = 5
[eval]
every = 0
batches = 4
[checkpoint]
every = 4
keep_last = 1
""")
    sizes = sizes or "[{ d_model = 16, num_layers = 1 }, { d_model = 32, num_layers = 1 }, { preset = 'tiny' }]"
    path = tmp_path / "study.toml"
    path.write_text(f'base = "base.toml"\nsizes = {sizes}\n[budget]\n{budget}\n')
    return path


def test_study_file_plans_sizes_and_budgets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data paths are relative to where lab runs, as at a prompt
    spec = load_scale(_write_study(tmp_path, 'rule = "isoflop"\nflops = [1e9, 4e9]'))
    assert spec.rule == "isoflop" and len(spec.points) == 6 and spec.tag == "scale:study"
    for p in spec.points:
        assert p.tokens == p.steps * 8 * 32
        assert abs(p.flops - p.budget) / p.budget < 0.2  # rounded to whole steps
    from lm.config.schema import ModelConfig

    small = ModelConfig(vocab_size=257, context_length=32, d_model=16, num_layers=1, num_heads=1, d_ff=64)
    assert spec.points[0].n == count_params(small).non_embedding  # N from the calculator
    per = load_scale(_write_study(tmp_path, 'rule = "per_param"\ntokens_per_param = 2'))
    assert all(abs(p.tokens - 2 * p.n) <= 256 for p in per.points)


def test_study_file_errors_name_every_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write_study(tmp_path, 'rule = "isoflops"\ntoken = 5', sizes="[{ d_model = 16 }]")
    with pytest.raises(ConfigError) as e:
        load_scale(path)
    text = str(e.value)
    assert "budget.rule must be one of" in text and "did you mean 'tokens'" in text and "at least 3" in text
    bad = _write_study(tmp_path, 'rule = "fixed"\ntokens = 1000', sizes="[{ d_modl = 16 }, { d_model = 16 }, "
                       "{ d_model = 15, num_heads = 2 }]")
    with pytest.raises(ConfigError) as e:
        load_scale(bad)
    assert "sizes[0].d_modl" in str(e.value) and "sizes[2]" in str(e.value)


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def _queue(runs: Path) -> list[dict]:
    try:
        return json.loads((runs / "queue.json").read_text())["entries"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_lab_scale_runs_end_to_end_and_resumes_after_kill_9(tmp_path):
    study = _write_study(tmp_path, 'rule = "fixed"\ntokens = 10240')  # 40 steps of 256 tokens per size
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lab", "scale", str(study), "--runs-dir", str(runs)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    victim = None
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        for e in _queue(runs):
            rd = e.get("run_dir")
            if e["status"] == "running" and e.get("pid") and rd and (Path(rd) / "checkpoints/latest.pt").is_file():
                victim = e
                break
        if victim:
            break
        time.sleep(0.2)
    assert victim is not None, first.communicate()[0].decode()[-2000:]
    os.kill(first.pid, signal.SIGKILL)  # the runner, with no chance to clean up
    try:
        os.kill(victim["pid"], signal.SIGKILL)  # and its run, mid-training
    except ProcessLookupError:
        pass
    first.wait()
    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    result = json.loads((runs / "scaling/study/scaling.json").read_text())
    assert [p["status"] for p in result["points"]] == ["done"] * 3
    assert all(p["val_loss"] is not None and p["fit_error"] is not None for p in result["points"])
    assert result["fit"] is not None and result["fit"]["alpha"] > 0
    entries = {e["trial"]: e for e in _queue(runs) if e.get("sweep") == "scale:study"}
    assert len(entries) == 3 and entries[victim["trial"]]["attempts"] == 2  # resumed, not re-added
    events = [json.loads(x) for x in (Path(victim["run_dir"]) / "events.jsonl").read_text().splitlines()]
    assert any(ev["event"] == "resume" for ev in events)
    assert "L(N) =" in again.stdout and "scaling.json" in again.stdout
    # Running it once more trains nothing and reports the same fit.
    report = subprocess.run(cmd + ["--report"], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "started entry" not in report.stdout


def _fake_finished_runs(tmp_path: Path, spec, store, law) -> None:
    """Mark every queued point of ``spec`` done, with a run directory whose final eval has ``law(N, D)``."""
    with store.transaction() as state:
        for e in state.entries:
            p = spec.points[e.trial]
            rd = tmp_path / "runs" / e.name
            rd.mkdir(parents=True)
            (rd / "status.json").write_text(json.dumps({"state": "done", "step": p.steps, "total_steps": p.steps}))
            (rd / "metrics.jsonl").write_text(json.dumps({"type": "eval", "step": p.steps, "tokens": p.tokens,
                                                          "time": 1.0, "val_loss": law(p.n, p.tokens)}) + "\n")
            e.status, e.run_dir = "done", str(rd)


def test_isoflop_study_collects_optima_fit_and_past_optimal_warnings(tmp_path, monkeypatch):
    """collect() on an isoFLOP study whose runs 'finished' with losses from a known surface.

    L(N, D) = 1.5 + 40 N^-0.3 + 60 D^-0.3 has a compute-optimal N per budget; the runs
    are faked as done with those losses, so the optima and warnings can be checked.
    """
    from lab.queue.store import QueueStore
    from lab.scale.study import collect, enqueue, report_plot

    monkeypatch.chdir(tmp_path)
    sizes = ("[{ d_model = 16, num_layers = 1 }, { d_model = 32, num_layers = 1 }, { d_model = 48, num_layers = 2 }, "
             "{ d_model = 64, num_layers = 3 }]")
    spec = load_scale(_write_study(tmp_path, 'rule = "isoflop"\nflops = [2e9, 8e9]', sizes=sizes))
    store = QueueStore(tmp_path / "runs")
    assert enqueue(spec, store) == (8, 0) and enqueue(spec, store) == (0, 8)  # again: nothing added twice
    _fake_finished_runs(tmp_path, spec, store, lambda n, d: 1.5 + 40 * n ** -0.3 + 60 * d ** -0.3)
    result = collect(spec, store)
    assert len(result["isoflop"]) == 2 and "optimal_scaling" in result
    for o in result["isoflop"]:
        qs = [q for q in result["points"] if q["budget"] == o["flops"]]
        best = min(qs, key=lambda q: q["val_loss"])
        ns = sorted(q["n"] for q in qs)
        assert ns[0] < o["n_opt"] < ns[-1]  # an interior optimum, near the best point of the budget
        assert abs(np.log(o["n_opt"] / best["n"])) < np.log(ns[-1] / ns[0]) / 2
    assert result["optimal_scaling"]["n_opt"]["exponent"] > 0  # more compute, bigger optimal model
    assert result["fit"]["kind"] == "L(N, D)" and all(q["fit_error"] is not None for q in result["points"])
    assert result["fit"]["alpha"] == pytest.approx(0.3, rel=0.01) and result["fit"]["max_rel_error"] < 1e-3
    assert all(o["method"] == "parabola" and o["inside"] for o in result["isoflop"])
    assert any(q["past_optimal"] for q in result["points"]) == any("past optimal" in w or "x this budget" in w
                                                                   for w in result["warnings"])
    assert "val loss" in report_plot(result, width=80, height=20, color=False)
    # A changed study file under the same name is refused, naming the point.
    changed = load_scale(_write_study(tmp_path, 'rule = "isoflop"\nflops = [2e9, 9e9]', sizes=sizes))
    with pytest.raises(ConfigError, match="different settings"):
        enqueue(changed, store)


def _queued_four_size_grid(tmp_path: Path, monkeypatch):
    """An isoFLOP study of 4 sizes (21K..332K non-embedding) at 1e11 and 1e13 FLOPs, its points queued."""
    from lab.queue.store import QueueStore
    from lab.scale.study import enqueue

    monkeypatch.chdir(tmp_path)
    sizes = ("[{ d_model = 32, num_layers = 2 }, { d_model = 48, num_layers = 2 }, { d_model = 64, num_layers = 3 }, "
             "{ d_model = 96, num_layers = 3 }]")
    spec = load_scale(_write_study(tmp_path, 'rule = "isoflop"\nflops = [1e11, 1e13]', sizes=sizes))
    store = QueueStore(tmp_path / "runs")
    enqueue(spec, store)
    return spec, store


def test_an_isoflop_budget_whose_best_point_is_the_smallest_size_says_so_and_extrapolates_only_by_the_law(
        tmp_path, monkeypatch):
    """Sizes all above a budget's optimum (the shipped TinyShakespeare grid at 1e12 FLOPs did this): the
    budget's parabola has no interior vertex, so its optimum comes from the surface law, marked as an
    extrapolation below the grid, with a warning that says to add smaller sizes, and the plot's axis
    stays on the sizes trained (an optimum at N = 0.03 once squeezed every point into one column)."""
    from lab.scale.study import collect, report_plot

    spec, store = _queued_four_size_grid(tmp_path, monkeypatch)
    # Chinchilla's closed form puts this law's optimum near N = 8K at 1e11 FLOPs (below the 21K smallest
    # size) and near 80K at 1e13 (inside the grid).
    _fake_finished_runs(tmp_path, spec, store, lambda n, d: 1.5 + 10 * n ** -0.3 + 53 * d ** -0.3)
    result = collect(spec, store)
    low, high = sorted(result["isoflop"], key=lambda o: o["flops"])
    ns = sorted({q["n"] for q in result["points"]})
    assert low["edge"] == "below" and low["method"] == "surface law" and not low["inside"]
    assert 0 < low["n_opt"] < ns[0]
    assert any("1e+11 FLOPs" in w and "below the sizes trained" in w and "add smaller sizes" in w
               for w in result["warnings"])
    assert high["method"] == "parabola" and high["inside"] and ns[0] < high["n_opt"] < ns[-1]
    plot = report_plot(result, width=100, height=24, color=False)
    axis = [float(t) for t in plot.splitlines()[-2].split()]  # the x tick labels
    assert min(axis) >= ns[0] / 4


def test_an_isoflop_budget_without_a_clear_minimum_says_so_instead_of_guessing_an_edge(tmp_path, monkeypatch):
    """Best point inside the grid but losses that do not curve up around it (noise): the budget gets no
    measured optimum, and the warning says why and what would show one, not 'add smaller sizes'."""
    from lab.scale.study import collect

    spec, store = _queued_four_size_grid(tmp_path, monkeypatch)
    ns = sorted({p.n for p in spec.points})
    zigzag = dict(zip(ns, (1.9, 1.80, 1.95, 1.81)))  # the 1e11 budget: lowest at the 2nd size, no parabola minimum
    _fake_finished_runs(tmp_path, spec, store, lambda n, d: zigzag[n] if d < 1e6 else 1.5 + 10 * n ** -0.3 + 53 * d ** -0.3)
    result = collect(spec, store)
    low = min(result["isoflop"], key=lambda o: o["flops"])
    assert low["edge"] is None and not low.get("inside")
    warning = next(w for w in result["warnings"] if w.startswith("budget 1e+11"))
    assert "no clear minimum" in warning and "more sizes near its best point" in warning
    assert "add smaller" not in warning and "add larger" not in warning
