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
from lab.scale.fit import fit_power_law, fit_surface, isoflop_optimum, power_fit, surface_optimum
from lab.scale.spec import CHINCHILLA_TOKENS_PER_PARAM, ScaleSpec
from lm.errors import ConfigError

RESULT_FILE = "scaling.json"
BUDGET_MARKERS = ("o", "+", "#", "@", "%", "&")
"""Markers of the measured points, one per isoFLOP budget (the surface law's lines are dotted)."""


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
    optimum_d = _fit_isoflop(out, points, done) if spec.rule == "isoflop" else _fit_sizes(out, points, done)
    # Points trained far past their compute-optimal token count.
    for q in points:
        if q["budget"] in optimum_d:
            ref, why = optimum_d[q["budget"]], "this budget's compute-optimal D"
        else:
            ref, why = CHINCHILLA_TOKENS_PER_PARAM * q["n"], f"{CHINCHILLA_TOKENS_PER_PARAM:g} tokens per non-embedding parameter"
        q["tokens_over_optimal"] = q["tokens"] / ref if ref > 0 else None
        q["past_optimal"] = bool(q["tokens_over_optimal"] and q["tokens_over_optimal"] > spec.past_optimal)
        if q["past_optimal"]:
            moral = ("a larger model would have done better with the same compute" if spec.rule == "isoflop" else
                     "the law is fitted at equal tokens per size, so such a point measures data, not size")
            out["warnings"].append(f"{q['label']}: trained on {q['tokens']:,} tokens, {q['tokens_over_optimal']:.1f}x "
                                   f"{why} ({ref:,.0f}); {moral}")
    for q in points:
        if q["status"] not in ("done",):
            out["warnings"].append(f"{q['label']}: {q['status']} ({q['run_state']}); left out of the fit")
    return out


def _fit_sizes(out: dict, points: list[dict], done: list[dict]) -> dict:
    """L(N) = a N^-alpha + c through each size's lowest loss (the most tokens it saw in the study)."""
    by_n: dict[int, dict] = {}
    for q in done:
        if q["n"] not in by_n or q["val_loss"] < by_n[q["n"]]["val_loss"]:
            by_n[q["n"]] = q
    if len(by_n) < 3:
        out["warnings"].append(f"only {len(by_n)} sizes finished; a fit of L(N) = a N^-alpha + c needs 3")
        return {}
    ns = sorted(by_n)
    law = fit_power_law(ns, [by_n[n]["val_loss"] for n in ns])
    out["fit"] = {"kind": "L(N)", **law.to_dict(), "text": law.text(), "points": [by_n[n]["index"] for n in ns]}
    for q in points:
        if q["val_loss"] is not None:
            _fit_error(q, float(law(q["n"])))
    return {}


def _fit_error(q: dict, pred: float) -> None:
    q["fit_loss"] = pred
    q["fit_error"] = (pred - q["val_loss"]) / q["val_loss"]


def _fit_isoflop(out: dict, points: list[dict], done: list[dict]) -> dict[float, float]:
    """An isoFLOP grid: the loss surface L(N, D) through every point, and each budget's optimum.

    A budget's optimum is the vertex of a parabola in log N through its points when the vertex lies
    among the sizes trained (what the grid measured); otherwise the budget's lowest loss sits at an
    edge of the grid, and the optimum is the surface law's, marked as an extrapolation. Returns each
    budget's compute-optimal D (for the past-optimal warnings).
    """
    law = None
    if len(done) >= 5 and len({q["n"] for q in done}) >= 2 and len({q["tokens"] for q in done}) >= 2:
        law = fit_surface([q["n"] for q in done], [q["tokens"] for q in done], [q["val_loss"] for q in done])
        out["fit"] = {"kind": "L(N, D)", **law.to_dict(), "text": law.text(), "points": [q["index"] for q in done]}
        for q in done:
            _fit_error(q, float(law(q["n"], q["tokens"])))
    else:
        out["warnings"].append(f"only {len(done)} points finished; a loss surface L(N, D) needs 5, "
                               "with at least 2 sizes and 2 token counts")
    sizes = sorted({q["n"]: q["flops"] / q["tokens"] for q in points}.items())
    fpt = power_fit([n for n, _ in sizes], [f for _, f in sizes])  # FLOPs per token against N
    if fpt is not None:  # the plot draws the law along each budget with the same model
        out["flops_per_token"] = {"k": fpt[0], "exponent": fpt[1]}
    optimum_d: dict[float, float] = {}
    for b in sorted({q["budget"] for q in points}):
        qs = sorted((q for q in done if q["budget"] == b), key=lambda q: q["n"])
        if not qs:
            continue
        opt = isoflop_optimum(b, [q["n"] for q in qs], [q["tokens"] for q in qs], [q["val_loss"] for q in qs])
        best = min(qs, key=lambda q: q["val_loss"])
        edge = "below" if best is qs[0] else "above" if best is qs[-1] else None
        entry = {"flops": b, "points": len(qs), "best": best["label"], "edge": edge}
        if opt is not None and opt.inside:
            entry.update(n_opt=opt.n_opt, d_opt=opt.d_opt, loss_opt=opt.loss_opt, inside=True, method="parabola")
        else:
            at = law_opt = None
            if law is not None and fpt is not None:
                law_opt = surface_optimum(law, b, lambda n: fpt[0] * n ** fpt[1], (qs[0]["n"], qs[-1]["n"]))
            if law_opt is not None:
                n_opt, d_opt, loss_opt = law_opt
                entry.update(n_opt=n_opt, d_opt=d_opt, loss_opt=loss_opt, inside=False, method="surface law")
                at = f"; the surface law puts it at N = {n_opt:.3g}, D = {d_opt:.3g} tokens (extrapolated)"
            if edge is None:  # the best point is inside, but the losses do not curve up around it
                why = ("its losses have no clear minimum (the parabola through them has its vertex outside the "
                       "sizes trained)")
                fix = "more sizes near its best point, or longer evaluations (less noise), would show one"
            else:
                why = (f"the lowest loss is at the {'smallest' if edge == 'below' else 'largest'} size trained "
                       f"({best['label']}), so the optimum lies {edge} the sizes trained")
                fix = f"add {'smaller' if edge == 'below' else 'larger'} sizes to measure it"
            out["warnings"].append(f"budget {b:.3g} FLOPs: {why}{at or '; no optimum can be given'}; {fix}")
        out["isoflop"].append(entry)
        if "d_opt" in entry:
            optimum_d[b] = entry["d_opt"]
    measured = [o for o in out["isoflop"] if o.get("inside")]
    usable = measured if len(measured) >= 2 else [o for o in out["isoflop"] if "n_opt" in o]
    if len(usable) >= 2:
        n_fit = power_fit([o["flops"] for o in usable], [o["n_opt"] for o in usable])
        d_fit = power_fit([o["flops"] for o in usable], [o["d_opt"] for o in usable])
        out["optimal_scaling"] = {"n_opt": {"k": n_fit[0], "exponent": n_fit[1]},
                                  "d_opt": {"k": d_fit[0], "exponent": d_fit[1]},
                                  "from": "measured optima" if usable is measured else "optima incl. extrapolated"}
    return optimum_d


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
    surface = (result.get("fit") or {}).get("kind") == "L(N, D)"
    if budgets:
        for i, b in enumerate(budgets):
            qs = [q for q in done if q["budget"] == b]
            # Under a surface law's dotted lines the measured points stand alone, one marker per budget.
            curves.append(Curve(f"C = {b:.1e}", [q["n"] for q in qs], [q["val_loss"] for q in qs],
                                marker=BUDGET_MARKERS[i % len(BUDGET_MARKERS)] if surface else None,
                                lines=not surface))
    else:
        curves.append(Curve("val loss", [q["n"] for q in done], [q["val_loss"] for q in done], marker="o",
                            lines=False))
    fit = result.get("fit")
    lo, hi = (min(q["n"] for q in done), max(q["n"] for q in done)) if done else (1.0, 1.0)
    if fit and done and fit.get("kind") == "L(N, D)":  # the surface along each budget, under its points
        xs = np.geomspace(lo, hi, 40)
        fpt = result.get("flops_per_token") or {"k": 6.0, "exponent": 1.0}
        per_token = fpt["k"] * xs ** fpt["exponent"]
        for i, b in reversed(list(enumerate(budgets))):  # one legend entry for all: they share a marker
            ys = fit["e"] + fit["a"] * xs ** -fit["alpha"] + fit["b"] * (b / per_token) ** -fit["beta"]
            curves.insert(0, Curve("" if i else "law L(N, D), a line per C", xs.tolist(), ys.tolist(), marker=".",
                                   lines=True))
    elif fit and done:  # drawn first, so the measured points stay visible on top of it
        xs = np.geomspace(lo, hi, 40)
        ys = fit["a"] * xs ** -fit["alpha"] + fit["c"]
        curves.insert(0, Curve(f"fit {fit['text']}", xs.tolist(), ys.tolist(), lines=True))
    # Optima far outside the sizes trained would squeeze the measured points into a corner.
    shown = [o for o in result.get("isoflop", []) if "n_opt" in o and lo / 4 <= o["n_opt"] <= hi * 4]
    if shown:
        curves.append(Curve("compute-optimal", [x["n_opt"] for x in shown], [x["loss_opt"] for x in shown],
                            marker="x", lines=False))
    return render_plot(curves, title=f"scaling {result['study']}: val loss vs non-embedding params",
                       xlabel="N (non-embedding parameters)", ylabel="val loss", xlog=True, width=width,
                       height=height, color=color)
