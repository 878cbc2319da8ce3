"""``lab scale STUDY.toml``: run a scaling study through the queue and fit L(N) = a N^-alpha + c."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scale", help="scaling study: model sizes x token budgets through the queue, fit L(N), isoFLOP optima",
        description="Run a scaling-study file (experiments/scaling/NAME.toml): every size/budget is a queue "
                    "entry and a run directory, one GPU per worker. Run it again after a stop or a crash and it "
                    "resumes. Then it fits L(N) = a N^-alpha + c to the final validation losses (N: "
                    "non-embedding parameters, from the calculator), finds each isoFLOP budget's compute-optimal "
                    "N and D, prints a table and a plot, and writes <runs>/scaling/NAME/scaling.json.\n"
                    "  lab scale experiments/scaling/builtin.toml --workers 2\n"
                    "  lab scale experiments/scaling/builtin.toml --report   (fit what has finished; run nothing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", metavar="STUDY.toml")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="runs folder (queue, run directories, runs/scaling/NAME; default: runs, or $LAB_RUNS_DIR)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="runs at once (one GPU each if several)")
    p.add_argument("--gpus", default=None, metavar="IDS", help="comma-separated GPU ids (default: all visible)")
    p.add_argument("--name", default=None, help="study name (default: the file's `name`, else its file name)")
    p.add_argument("--dry-run", action="store_true", help="check the file and print the plan; run nothing")
    p.add_argument("--report", action="store_true", help="only fit and report the points that have finished")
    p.add_argument("--width", type=int, default=None, help="plot width in columns")
    p.add_argument("--height", type=int, default=None, help="plot height in rows")
    return p


def run(args) -> int:
    import sys

    from lab.run_comparison import text_console
    from lab.queue.store import QueueStore
    from lab.scale.spec import load_scale
    from lab.scale.study import collect, report_plot, report_table, result_path, run_study
    from lm.atomic import atomic_write
    from lm.calc.units import fmt_count
    from lm.errors import LabError

    if args.workers < 1:
        raise LabError(f"--workers must be at least 1, got {args.workers}")
    spec = load_scale(args.study, name=args.name)
    ns = [p.n for p in spec.points]
    print(f"scaling study {spec.name}: {len(spec.points)} runs of {spec.base.name}, rule {spec.rule}, "
          f"N {fmt_count(min(ns))} .. {fmt_count(max(ns))} non-embedding parameters ({max(ns) / min(ns):.1f}x)")
    if args.dry_run:
        for p in spec.points:
            print(f"  {p.label:>18}  N {fmt_count(p.n):>7}  {p.steps:>6} steps  {fmt_count(p.tokens):>7} tokens  "
                  f"{p.flops:.2e} FLOPs")
        return 0
    store = QueueStore(args.runs_dir)
    if not args.report:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        run_study(spec, store, args.workers, gpus)
    result = collect(spec, store)
    out = result_path(store.runs_dir, spec.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    import json

    atomic_write(out, json.dumps(result, indent=1, default=float) + "\n")
    console = text_console()
    console.print(report_table(result))
    if result["fit"]:
        f = result["fit"]
        console.print(f"fit: {f['text']}  (rmse {f['rmse']:.4f}, worst point {f['max_rel_error']:.2%})")
    for o in result["isoflop"]:
        if "n_opt" not in o:
            console.print(f"C = {o['flops']:.2e}: no compute-optimal size: the lowest loss is at the edge of the "
                          f"grid ({o['best']})")
            continue
        how = "parabola through the budget's points" if o["inside"] else "the surface law, extrapolated: " + \
            ("below" if o["edge"] == "below" else "above") + " the sizes trained"
        console.print(f"C = {o['flops']:.2e}: compute-optimal N = {fmt_count(o['n_opt'])}, D = {fmt_count(o['d_opt'])} "
                      f"tokens ({o['d_opt'] / o['n_opt']:.1f} tokens/param), loss {o['loss_opt']:.4f} ({how})")
    scaling = result.get("optimal_scaling")
    if scaling:
        console.print(f"N_opt ~ C^{scaling['n_opt']['exponent']:.2f}, D_opt ~ C^{scaling['d_opt']['exponent']:.2f} "
                      f"({scaling['from']})")
    if len([q for q in result["points"] if q["val_loss"] is not None]) >= 2:
        print(report_plot(result, width=args.width, height=args.height, color=sys.stdout.isatty()))
    for w in result["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    print(f"wrote {out}")
    unfinished = [q for q in result["points"] if q["status"] != "done"]
    return 0 if not unfinished or args.report else 1
