"""``lab`` with no command: open the console.

Kept import-light: only argparse here, Textual and the app load inside
:func:`open_console`, so ``lab --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import os


def console_parser() -> argparse.ArgumentParser:
    """Options of the console (``python -m lab.tui --help``)."""
    p = argparse.ArgumentParser(prog="lab", description="The lab console (TUI): configure, launch, monitor, "
                                "size, queue and chat with runs. Runs are `lab run` processes that keep "
                                "training when the console closes.")
    p.add_argument("--runs-dir", default=os.environ.get("LAB_RUNS_DIR", "runs"),
                   help="runs folder to watch and launch into (default: runs, or $LAB_RUNS_DIR)")
    p.add_argument("--experiment", default=None, help="experiment file to open in the Config tab")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often run directories are re-read (default 1 s)")
    p.add_argument("--light", action="store_true", help="start with the light theme")
    return p


def open_console(argv: list[str] | None = None, *, runs_dir: str | None = None) -> int:
    """Run the console until it is closed; returns the exit code (0).

    ``argv`` are console options (``--runs-dir DIR`` ...); ``runs_dir`` beats them.
    """
    args = console_parser().parse_args(argv or [])
    from lab.tui.app import LabApp

    app = LabApp(runs_dir or args.runs_dir, experiment=args.experiment, poll_interval=max(0.2, args.poll),
                 theme="textual-light" if args.light else "textual-dark")
    code = app.run()
    return int(code or 0)
