"""Running a scaling study through the queue, and what it found.

Every point of a study is an ordinary queue entry, tagged ``scale:NAME`` in the
entry's ``sweep`` field (so a plain ``lab queue run`` leaves it to ``lab scale``)
with the point's index as its ``trial``, run as an ordinary ``lab run`` in an
ordinary run directory, one GPU per worker. Running ``lab scale`` again after a
crash, a ``kill -9`` or a Ctrl-C adds only the points that are missing and
resumes interrupted ones from their checkpoints (the queue's orphan recovery).

The result, ``<runs>/scaling/NAME/scaling.json``, holds every point (size,
N, tokens, FLOPs, final validation loss, fit error, warnings) and the fits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from lab.queue.store import QueueStore
from lab.scale.fit import fit_power_law, isoflop_optimum, power_fit
from lab.scale.spec import CHINCHILLA_TOKENS_PER_PARAM, ScaleSpec
from lm.errors import ConfigError

RESULT_FILE = "scaling.json"


def result_path(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir) / "scaling" / name / RESULT_FILE


def enqueue(spec: ScaleSpec, store: QueueStore) -> tuple[int, int]:
    """Add the study's missing points to the queue; (added, already there).

    A point already queued with other overrides means the file changed under the
    same name: refuse, naming the point, rather than mix two studies in one fit.
    """
    added = kept = 0
    with store.transaction() as state:
        mine = {e.trial: e for e in state.entries if e.sweep == spec.tag}
        for p in spec.points:
            e = mine.get(p.index)
            if e is None:
                state.append(spec.base, p.overrides, name=f"{spec.name}-{p.label}", sweep=spec.tag, trial=p.index)
                added += 1
            elif list(e.overrides) != list(p.overrides) or Path(e.experiment) != Path(spec.base).absolute():
                raise ConfigError([f"point {p.label} (#{p.index}) of study {spec.name!r} is already queued as entry "
                                   f"{e.id} with different settings ({e.label()}); the study file changed. Give the "
                                   f"study a new name (--name), or remove its entries: lab queue remove {e.id}"])
            else:
                kept += 1
        extra = [e for t, e in mine.items() if t is not None and t >= len(spec.points)]
        if extra:
            raise ConfigError([f"study {spec.name!r} has queue entries beyond its {len(spec.points)} points "
                               f"(ids {', '.join(str(e.id) for e in extra)}); the study file changed. Give it a "
                               f"new name (--name), or remove those entries with lab queue remove"])
    return added, kept


def run_study(spec: ScaleSpec, store: QueueStore, workers: int = 1, gpus: list[str] | None = None,
              log=print) -> None:
    """Queue the points and run them until none is left (resuming any that were interrupted)."""
    from lab.queue.runner import QueueRunner

    enqueue(spec, store)
    runner = QueueRunner(store, workers, gpus=gpus, sweep=spec.tag, log=log)
    if runner.has_more(store.read()):
        runner.run()


def _final_val_loss(run_dir: str | None) -> tuple[float | None, str]:
    """The last evaluation's val_loss of a run and its state."""
    if not run_dir or not Path(run_dir).is_dir():
        return None, "not started"
    from lm.runs import RunDir

    rd = RunDir(run_dir)
    try:
        state = rd.status().state
    except Exception as e:  # an unreadable status names itself; the point is left out of the fit
        return None, f"unreadable: {e}"
    evals = [r for r in rd.metrics("eval") if isinstance(r.get("val_loss"), (int, float))]
    if not evals:
        return None, state
    return float(evals[-1]["val_loss"]), state


def collect(spec: ScaleSpec, store: QueueStore) -> dict:
    """Every point with its outcome, the fits, and the warnings: the content of scaling.json."""
    entries = {e.trial: e for e in store.read().entries if e.sweep == spec.tag}
    points = []
    for p in spec.points:
        e = entries.get(p.index)
        loss, state = _final_val_loss(e.run_dir if e else None)
        points.append({**p.to_dict(), "entry": e.id if e else None, "status": e.status if e else "not queued",
                       "run_state": state, "run_dir": e.run_dir if e else None,
                       "val_loss": loss if (e and e.status == "done") else None})
    done = [q for q in points if q["val_loss"] is not None and math.isfinite(q["val_loss"])]
    out: dict = {"study": spec.name, "file": str(spec.path), "base": str(spec.base), "rule": spec.rule,
                 "written": time.time(), "points": points, "fit": None, "isoflop": [], "warnings": []}
    # L(N): one point per size, its lowest loss (the most tokens it saw in the study).
    by_n: dict[int, dict] = {}
    for q in done:
        if q["n"] not in by_n or q["val_loss"] < by_n[q["n"]]["val_loss"]:
            by_n[q["n"]] = q
    if len(by_n) >= 3:
        ns = sorted(by_n)
        law = fit_power_law(ns, [by_n[n]["val_loss"] for n in ns])
        out["fit"] = {**law.to_dict(), "text": law.text(), "points": [by_n[n]["index"] for n in ns]}
        for q in points:
            if q["val_loss"] is not None:
                pred = float(law(q["n"]))
                q["fit_loss"] = pred
                q["fit_error"] = (pred - q["val_loss"]) / q["val_loss"]
    else:
        out["warnings"].append(f"only {len(by_n)} sizes finished; a fit of L(N) = a N^-alpha + c needs 3")
    # isoFLOP: each budget's optimum, then N_opt and D_opt against C.
    optimum_d: dict[float, float] = {}
    if spec.rule == "isoflop":
        for b in sorted({q["budget"] for q in points}):
            qs = [q for q in done if q["budget"] == b]
            opt = isoflop_optimum(b, [q["n"] for q in qs], [q["tokens"] for q in qs], [q["val_loss"] for q in qs])
            if opt is None:
                out["warnings"].append(f"budget {b:.3g} FLOPs: no interior minimum among its {len(qs)} finished "
                                       f"points (need 3, curving up on both sides)")
                continue
            out["isoflop"].append(opt.to_dict())
            optimum_d[b] = opt.d_opt
            if not opt.inside:
                out["warnings"].append(f"budget {b:.3g} FLOPs: the optimum N = {opt.n_opt:.3g} lies outside the "
                                       f"sizes trained (extrapolated)")
        opts = out["isoflop"]
        if len(opts) >= 2:
            n_fit = power_fit([o["flops"] for o in opts], [o["n_opt"] for o in opts])
            d_fit = power_fit([o["flops"] for o in opts], [o["d_opt"] for o in opts])
            out["optimal_scaling"] = {"n_opt": {"k": n_fit[0], "exponent": n_fit[1]},
                                      "d_opt": {"k": d_fit[0], "exponent": d_fit[1]}}
    # Points trained far past their compute-optimal token count.
    for q in points:
        if spec.rule == "isoflop" and q["budget"] in optimum_d:
            ref, why = optimum_d[q["budget"]], "this budget's compute-optimal D"
        else:
            ref, why = CHINCHILLA_TOKENS_PER_PARAM * q["n"], f"{CHINCHILLA_TOKENS_PER_PARAM:g} tokens per non-embedding parameter"
        q["tokens_over_optimal"] = q["tokens"] / ref if ref > 0 else None
        q["past_optimal"] = bool(q["tokens_over_optimal"] and q["tokens_over_optimal"] > spec.past_optimal)
        if q["past_optimal"]:
            out["warnings"].append(f"{q['label']}: trained on {q['tokens']:,} tokens, {q['tokens_over_optimal']:.1f}x "
                                   f"{why} ({ref:,.0f}); the law is fitted at equal tokens per size, so such a "
                                   f"point measures data, not size")
    for q in points:
        if q["status"] not in ("done",):
            out["warnings"].append(f"{q['label']}: {q['status']} ({q['run_state']}); left out of the fit")
    return out


def report_table(result: dict):
    from rich.table import Table

    from lm.calc.units import fmt_count

    t = Table(box=None, header_style="bold", pad_edge=False, title=f"scaling study {result['study']}",
              title_justify="left")
    for col in ("POINT", "N (non-emb)", "PARAMS", "TOKENS", "TOK/N", "FLOPS", "VAL LOSS", "FIT", "ERROR", ""):
        t.add_column(col, justify="left" if col in ("POINT", "") else "right")
    for q in result["points"]:
        loss = q["val_loss"]
        t.add_row(q["label"], fmt_count(q["n"]), fmt_count(q["params_total"]), fmt_count(q["tokens"]),
                  f"{q['tokens'] / q['n']:.0f}", f"{q['flops']:.2e}", f"{loss:.4f}" if loss is not None else q["status"],
                  f"{q['fit_loss']:.4f}" if q.get("fit_loss") is not None else "-",
                  f"{q['fit_error']:+.2%}" if q.get("fit_error") is not None else "-",
                  "past optimal" if q.get("past_optimal") else "")
    return t


def report_plot(result: dict, *, width: int | None = None, height: int | None = None, color: bool = True) -> str:
    """val loss against N (log x), the fitted law through it, and the isoFLOP optima."""
    import numpy as np

    from lab.views.plots import Curve, render_plot

    done = sorted((q for q in result["points"] if q["val_loss"] is not None), key=lambda q: q["n"])
    curves = []
    budgets = sorted({q["budget"] for q in done if q["budget"] is not None})
    if budgets:
        for b in budgets:
            qs = [q for q in done if q["budget"] == b]
            curves.append(Curve(f"C = {b:.1e}", [q["n"] for q in qs], [q["val_loss"] for q in qs], lines=True))
    else:
        curves.append(Curve("val loss", [q["n"] for q in done], [q["val_loss"] for q in done], marker="o",
                            lines=False))
    fit = result.get("fit")
    if fit and done:  # drawn first, so the measured points stay visible on top of it
        xs = np.geomspace(min(q["n"] for q in done), max(q["n"] for q in done), 40)
        ys = fit["a"] * xs ** -fit["alpha"] + fit["c"]
        curves.insert(0, Curve(f"fit {fit['text']}", xs.tolist(), ys.tolist(), lines=True))
    if result.get("isoflop"):
        o = result["isoflop"]
        curves.append(Curve("compute-optimal", [x["n_opt"] for x in o], [x["loss_opt"] for x in o], marker="x",
                            lines=False))
    return render_plot(curves, title=f"scaling {result['study']}: val loss vs non-embedding params",
                       xlabel="N (non-embedding parameters)", ylabel="val loss", xlog=True, width=width,
                       height=height, color=color)
