"""``lab runs``: every run directory with its state, progress, best val loss and bits per byte."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("runs", help="list runs with status, steps, best val loss and bits/byte",
                              description="List the run directories under the runs folder, newest first.")
    p.add_argument("--runs-dir", default=os.environ.get("LAB_RUNS_DIR", "runs"), metavar="DIR", help="folder holding run directories (default: runs)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return p


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def run(args) -> int:
    from lm.runs import list_runs

    runs = list_runs(args.runs_dir)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {args.runs_dir}/ (start one with: lab run experiments/quickstart.toml)")
        return 0
    from rich.console import Console
    from rich.table import Table

    colors = {"running": "cyan", "done": "green", "failed": "red", "diverged": "magenta",
              "stopped": "yellow", "pending": "dim"}
    table = Table(title=f"runs in {args.runs_dir}/", title_justify="left")
    for col, justify in (("run", "left"), ("state", "left"), ("steps", "right"), ("best val loss", "right"),
                         ("bits/byte", "right"), ("tokens/s", "right"), ("started", "left")):
        table.add_column(col, justify=justify, no_wrap=col in ("run", "started"))
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        color = colors.get(r.state, "")
        table.add_row(r.name, f"[{color}]{r.state}[/]" if color else r.state, f"{r.step}/{r.total_steps}",
                      _num(r.best_val_loss, ".4f"), _num(r.best_val_bpb, ".4f"), _num(r.tokens_per_s, ",.0f"),
                      started)
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(table)
    return 0
