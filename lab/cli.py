"""The ``lab`` command: a thin dispatcher over subcommand modules.

Each subcommand lives in ``lab/commands/<name>.py`` with two functions:
``add_parser(subparsers)`` (argparse only; must not import torch so that
``lab --help`` stays fast) and ``run(args) -> int``. Heavy imports happen
inside ``run``. User errors (``lm.errors.LabError``) are printed as one
paragraph on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module; order is the order shown in --help.
COMMANDS = {
    "run": "lab.commands.run",
    "runs": "lab.commands.runs",
    "config": "lab.commands.config",
    "sample": "lab.commands.sample",
    "chat": "lab.commands.chat",
    "serve": "lab.commands.serve",
    "calc": "lab.commands.calc",
    "bench": "lab.commands.bench",
    "data": "lab.commands.data",
    "tokenizer": "lab.commands.tokenizer",
    "queue": "lab.commands.queue",
    "sweep": "lab.commands.sweep",
    "scale": "lab.commands.scale",
    "compare": "lab.commands.compare",
    "model": "lab.commands.model",
    "export": "lab.commands.export",
    "import": "lab.commands.import_model",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab",
        description="Train and study small transformer LMs. With no command, opens the console (TUI).",
    )
    parser.add_argument("--version", action="version", version="lab 0.1.0")
    parser.add_argument("--runs-dir", dest="console_runs_dir", default=None, metavar="DIR",
                        help="runs folder of the console and of every command that reads runs "
                             "(default: runs, or $LAB_RUNS_DIR); a command's own --runs-dir beats it")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "runs_dir", "") is None:  # the command's own --runs-dir was not given
        args.runs_dir = args.console_runs_dir or os.environ.get("LAB_RUNS_DIR") or "runs"
    if args.command is None:
        from lab.tui.launch import open_console

        return _guard(lambda: open_console(runs_dir=args.console_runs_dir))
    return _guard(lambda: args._run(args))


def _guard(fn) -> int:
    from lm.compile_workers import release_compile_workers
    from lm.errors import LabError

    try:
        code = fn()
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lab config docs | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        # The process exits next: whatever command compiled (`lab run`, `lab bench --compile on`),
        # don't wait seconds in Inductor's exit handler for its worker pool to shut down.
        release_compile_workers()
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
