"""``lab runs``: every run directory with its state, progress, best val loss and bits per byte."""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("runs", help="list runs with status, steps, best val loss and bits/byte",
                              description="List the run directories under the runs folder, newest first. "
                                          "A run whose files cannot be read is listed as unreadable, with why.")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="folder holding run directories (default: runs, or $LAB_RUNS_DIR)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return p


def run(args) -> int:
    from lab.views.formats import format_number
    from lm.runs import list_runs

    runs = list_runs(args.runs_dir)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print(f"no runs in {args.runs_dir}/ (start one with: lab run experiments/quickstart.toml)")
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colors = {"running": "cyan", "done": "green", "failed": "red", "diverged": "magenta",
              "stopped": "yellow", "pending": "dim", "unreadable": "red"}
    table = Table(title=f"runs in {args.runs_dir}/", title_justify="left")
    for col, justify in (("run", "left"), ("state", "left"), ("steps", "right"), ("best val loss", "right"),
                         ("bits/byte", "right"), ("tokens/s", "right"), ("started", "left")):
        table.add_column(col, justify=justify, no_wrap=col in ("run", "started"))
    notes = []
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        color = colors.get(r.state, "")
        state = escape(r.state)
        if r.state == "unreadable" or (r.problem and not r.reconstructed):
            state = escape(f"unreadable: {r.problem}")
            color = "red"
        elif r.problem:  # status.json could not say it all: the rest comes from the run's records
            state += "*"
            notes.append(f"* {r.name}: {r.problem}; state and numbers reconstructed from its metrics and events")
        table.add_row(escape(r.name), f"[{color}]{state}[/]" if color else state, f"{r.step}/{r.total_steps}",
                      format_number(r.best_val_loss, ".4f"), format_number(r.best_val_bpb, ".4f"),
                      format_number(r.tokens_per_s, ",.0f"), started)
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
    from lab.views.serving import read_serving

    for r in runs:  # `lab serve` processes of these runs that are alive now
        for s in read_serving(r.path):
            console.print(f"{r.name}: serving {s.url} ({s.active}/{s.slots} slots busy, {s.requests:,} requests, "
                          f"{format_number(s.tokens_per_s, ',.0f')} tokens/s)", markup=False, highlight=False)
    return 0
