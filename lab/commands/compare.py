"""``lab compare RUN...``: final/best losses side by side, the config keys that differ, loss curves."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare", help="compare runs: losses, speed, config differences, overlaid curves",
        description="Compare run directories (paths, names in the runs folder, or unique name prefixes). "
                    "Shows final and best val loss, bits per byte, tokens/s, steps, divergence, and only the "
                    "config keys whose values differ. Example: lab compare runs/a runs/b --plot --smooth 20",
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="where run names are looked up (default: runs, or $LAB_RUNS_DIR)")
    p.add_argument("--metric", default="val_loss",
                   help="what --plot draws: val_loss, val_bpb, val_ppl (eval) or loss, lr, grad_norm ... (train)")
    p.add_argument("--plot", action="store_true", help="draw the metric of every run overlaid in the terminal")
    p.add_argument("--smooth", type=int, default=None, metavar="N",
                   help="smoothing window in records (default: none for eval metrics, 10 for train metrics)")
    p.add_argument("--smooth-kind", choices=("ema", "mean"), default="ema",
                   help="exponential moving average (span N) or trailing mean of N (default: ema)")
    p.add_argument("--raw", action="store_true", help="plot the raw values, no smoothing")
    p.add_argument("--x", choices=("step", "tokens"), default="step", help="x axis of the plot")
    p.add_argument("--width", type=int, default=None, help="plot width in columns (default: the terminal's)")
    p.add_argument("--height", type=int, default=None, help="plot height in rows")
    p.add_argument("--json", action="store_true", help="print the summary and the differences as JSON")
    return p


def run(args) -> int:
    import json
    import sys

    from lab.run_comparison import comparison_curves, config_diff, format_value, load_run, resolve_run_paths, summarize
    from lab.views.formats import format_value as format_metric
    from lab.views.plots import render_plot
    from lm.errors import LabError
    from lm.records import json_safe

    if args.smooth is not None and args.smooth < 0:
        raise LabError(f"--smooth must be 0 or more, got {args.smooth}")
    runs = [load_run(p) for p in resolve_run_paths(args.runs, args.runs_dir)]
    rows = [summarize(r) for r in runs]
    diffs = config_diff(runs)
    if args.json:
        payload = {"runs": rows, "differences": {k: v for k, v in diffs}}
        print(json.dumps(json_safe(payload), indent=1, default=str))  # strict JSON: inf/nan as null
        return 0

    from lab.run_comparison import text_console
    from rich.table import Table

    console = text_console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("RUN", "STATE", "STEPS", "FINAL VAL", "BEST VAL", "BEST BPB", "TOK/S", "DIVERGED"):
        table.add_column(col, justify="left" if col in ("RUN", "STATE") else "right")
    best = min((r["best_val_loss"] for r in rows if r["best_val_loss"] is not None), default=None)

    def loss(v) -> str:
        return format_metric(v, ".4f")  # 'inf' for a run that ended diverged

    for r in rows:
        best_cell = loss(r["best_val_loss"])
        if best is not None and r["best_val_loss"] == best and len(rows) > 1:
            best_cell = f"[bold green]{best_cell}[/]"
        steps = f"{r['steps']}/{r['total_steps']}" if r["total_steps"] else str(r["steps"])
        speed = format_metric(r["tokens_per_s"], ",.0f")
        table.add_row(r["run"], r["state"], steps, loss(r["final_val_loss"]), best_cell,
                      loss(r["best_val_bpb"]), speed, "[red]yes[/]" if r["diverged"] else "no")
    console.print(table)

    if len(runs) > 1:
        console.print()
        if diffs:
            dt = Table(title="config differences", box=None, header_style="bold", pad_edge=False, title_justify="left")
            dt.add_column("KEY")
            for run in runs:
                dt.add_column(run.label)
            for key, values in diffs:
                dt.add_row(key, *(format_value(v) for v in values))
            console.print(dt)
        else:
            console.print("config: identical" if not any(r.config_problem for r in runs)
                          else "config: " + "; ".join(f"{r.label}: {r.config_problem}" for r in runs if r.config_problem))
    if args.plot:
        curves = comparison_curves(runs, args.metric, x=args.x, window=args.smooth, kind=args.smooth_kind,
                                   raw=args.raw)
        how = "raw" if args.raw else (f"{args.smooth_kind} {args.smooth}" if args.smooth else "")
        title = f"{args.metric} vs {args.x}" + (f" ({how})" if how else "")
        print()
        print(render_plot(curves, title=title, xlabel=args.x, ylabel=args.metric, width=args.width,
                          height=args.height, color=sys.stdout.isatty()))
    return 0
