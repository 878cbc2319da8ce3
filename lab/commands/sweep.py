"""``lab sweep SWEEP.toml``: run a hyperparameter sweep; ``lab sweep report NAME``: what it found."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep", help="sweep hyperparameters (grid, random, TPE) with early stopping; `lab sweep report NAME`",
        description="Run a sweep file: every trial is a queue entry and a run directory, stopped early by "
                    "successive halving or Hyperband and killed at once if it diverges. Started again after "
                    "a stop or a crash, it continues the same study and resumes interrupted trials.\n"
                    "  lab sweep experiments/sweeps/lr.toml --workers 2\n"
                    "  lab sweep report lr",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", nargs="+", metavar="SWEEP.toml | report NAME")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="runs folder (queue, run directories, runs/sweeps/NAME; default: runs, or $LAB_RUNS_DIR)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="trials at once (one GPU each if several)")
    p.add_argument("--gpus", default=None, metavar="IDS", help="comma-separated GPU ids (default: all visible)")
    p.add_argument("--name", default=None, help="sweep name (default: the file's `name`, else its file name)")
    p.add_argument("--dry-run", action="store_true", help="check the file and print the plan; run nothing")
    p.add_argument("--curves", action="store_true", help="report: also overlay every trial's eval curve")
    p.add_argument("--width", type=int, default=None, help="report: plot width in columns")
    p.add_argument("--height", type=int, default=None, help="report: plot height in rows")
    return p


def run(args) -> int:
    from lm.errors import LabError

    if args.target[0] == "report":
        if len(args.target) != 2:
            raise LabError("usage: lab sweep report NAME (the sweep's name, e.g. lr for experiments/sweeps/lr.toml)")
        return _report(args, args.target[1])
    if len(args.target) != 1:
        raise LabError(f"give one sweep file, got {len(args.target)}: {' '.join(args.target)}")
    if args.workers < 1:
        raise LabError(f"--workers must be at least 1, got {args.workers}")
    return _run_sweep(args, args.target[0])


def _run_sweep(args, path: str) -> int:
    from lab.sweep.spec import load_sweep

    spec = load_sweep(path, name=args.name)
    _print_plan(spec)
    if args.dry_run:
        return 0
    from lab.queue.store import QueueStore
    from lab.sweep.driver import SweepRunner

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    runner = SweepRunner(spec, QueueStore(args.runs_dir), args.workers, gpus=gpus)
    if not runner.has_more(runner.store.read()):
        print(f"sweep {spec.name}: all {spec.trials} trials already ran")
    else:
        runner.run()
    from lab.sweep.report import build_report, params_text

    report = build_report(args.runs_dir, spec.name)
    counts = {}
    for t in report.trials:
        # The driver has returned: a trial still open was interrupted and resumes on the next start.
        outcome = "interrupted (resume: run this command again)" if t.outcome == "running" else t.outcome
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"sweep {spec.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if report.best is not None:
        b = report.best
        print(f"best: trial {b.number} ({params_text(b.params)}): {report.metric} {b.value:.4f}  {b.run_dir}")
    print(f"details: lab sweep report {spec.name}" + (f" --runs-dir {args.runs_dir}" if args.runs_dir != "runs" else ""))
    return 0


def _print_plan(spec) -> None:
    parts = []
    for p in spec.params:
        if p.values is not None:
            parts.append(f"{p.key} in {p.values}")
        else:
            parts.append(f"{p.key} in [{p.low}, {p.high}]" + (" (log)" if p.log else ""))
    stop = ("no early stopping" if spec.rule == "none"
            else f"{spec.rule.replace('_', ' ')} from step {spec.min_steps}, reduction factor {spec.reduction_factor}")
    print(f"sweep {spec.name}: {spec.method} over {'; '.join(parts)}; {spec.trials} trials of {spec.base.name} "
          f"({spec.total_steps} steps), {spec.direction} {spec.metric}; {stop}"
          + ("; diverging trials are killed" if spec.diverge else ""))


def _report(args, name: str) -> int:
    import sys
    from pathlib import Path

    from lab.run_comparison import text_console
    from rich.table import Table

    from lab.sweep.report import build_report, divergence_lines, metric_vs_param_plot, params_text

    report = build_report(args.runs_dir, name)
    console = text_console()
    color = sys.stdout.isatty()
    console.print(f"[bold]sweep {name}[/]: {len(report.trials)} trials, {report.direction} {report.metric}")
    if report.best is not None:
        b = report.best
        console.print(f"best: trial {b.number} ({params_text(b.params)}): {report.metric} {b.value:.4f}  {b.run_dir}")
    else:
        console.print("best: no trial has finished yet")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ["TRIAL", *report.params, "OUTCOME", report.metric.upper(), "LAST EVAL", "STEP", "RUN DIR"]:
        table.add_column(col)
    key = report.params[0] if report.params else None

    def by_first_param(r):
        v = r.params.get(key)
        return (0, v, r.number) if isinstance(v, (int, float)) else (1, 0, r.number)

    order = sorted(report.trials, key=by_first_param)
    for r in order:
        cells = [str(r.number)]
        cells += [f"{r.params[k]:.4g}" if isinstance(r.params.get(k), float) else str(r.params.get(k, "-"))
                  for k in report.params]
        cells += [r.outcome, f"{r.value:.4f}" if r.value is not None else "-",
                  f"{r.last_value:.4f}" if r.last_value is not None else "-",
                  str(r.diverged_step if r.outcome == "diverged" and r.diverged_step is not None else r.last_step or "-"),
                  Path(r.run_dir).name if r.run_dir else ""]
        table.add_row(*cells)
    console.print(table)
    print()
    print(metric_vs_param_plot(report, width=args.width, height=args.height, color=color))
    print()
    for line in divergence_lines(report):
        print(line)
    if args.curves:
        from lab.run_comparison import comparison_curves, load_run
        from lab.views.plots import render_plot

        runs = [load_run(r.run_dir) for r in report.trials if r.run_dir and Path(r.run_dir).is_dir()]
        print()
        print(render_plot(comparison_curves(runs, report.metric), title=f"{report.metric} of every trial",
                          xlabel="step", ylabel=report.metric, width=args.width, height=args.height, color=color))
    return 0
