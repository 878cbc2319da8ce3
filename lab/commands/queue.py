"""``lab queue``: queue experiments (base file + overrides) and run them, N at a time.

The queue lives in ``<runs>/queue.json``; every command edits it under a lock,
so ``lab queue add`` works while a runner is running, and several runners (one
per GPU box sharing a disk, or ``--workers N`` in one) never take the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

RUNS_DIR_HELP = "runs folder holding queue.json and the run directories (default: runs)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "queue", help="queue experiments and ablations and run them one after another (or N at once)",
        description="A persistent queue of runs in <runs>/queue.json. Examples:\n"
                    "  lab queue add experiments/ablations/*.toml\n"
                    "  lab queue add experiments/tinystories.toml --set model.norm=post\n"
                    "  lab queue run --workers 2\n"
                    "A runner that was killed resumes its interrupted runs from their checkpoints when restarted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs-dir", default=None, metavar="DIR", help=RUNS_DIR_HELP)
    sub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)

    a = sub.add_parser("add", help="add experiment files (each with the same --set overrides)")
    a.add_argument("experiments", nargs="+", metavar="EXPERIMENT.toml")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.norm=post (repeatable)")
    a.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    ls = sub.add_parser("list", help="show the queue with each run's progress")
    ls.add_argument("--json", action="store_true", help="print the entries as JSON")
    ls.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    r = sub.add_parser("run", help="run pending entries until the queue is empty")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="runs at once; with several GPUs each worker gets its own (CUDA_VISIBLE_DEVICES)")
    r.add_argument("--gpus", default=None, metavar="IDS",
                   help="comma-separated GPU ids to spread workers over (default: all visible GPUs)")
    r.add_argument("--gpus-per-run", type=int, default=1, metavar="K",
                   help="each run trains on K GPUs (lab run --gpus K; DDP or FSDP2), on GPUs no other run uses")
    r.add_argument("--follow", action="store_true", help="keep waiting for new entries when the queue is empty")
    r.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    rm = sub.add_parser("remove", help="remove entries (not running ones)")
    rm.add_argument("ids", nargs="*", type=int, metavar="ID")
    rm.add_argument("--finished", action="store_true", help="remove every finished entry (done, failed, stopped, diverged)")
    rm.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    mv = sub.add_parser("move", help="move an entry: top, bottom, up, down or a position (1 = next)")
    mv.add_argument("id", type=int, metavar="ID")
    mv.add_argument("position", metavar="POSITION")
    mv.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    rt = sub.add_parser("retry", help="put finished entries back to pending: stopped/failed runs resume "
                                      "from their checkpoint, done/diverged ones start over")
    rt.add_argument("ids", nargs="+", type=int, metavar="ID")
    rt.add_argument("--fresh", action="store_true", help="start over in a new run directory instead of resuming")
    rt.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)

    st = sub.add_parser("stop", help="stop the runners (their runs checkpoint and resume next time), or single runs")
    st.add_argument("ids", nargs="*", type=int, metavar="ID", help="stop only these running entries (status: stopped)")
    st.add_argument("--drain", action="store_true", help="let current runs finish, start no new ones")
    st.add_argument("--wait", action="store_true", help="wait until the runners have exited")
    st.add_argument("--runs-dir", default=argparse.SUPPRESS, help=RUNS_DIR_HELP)
    return p


def run(args) -> int:
    from lab.queue.store import QueueStore

    store = QueueStore(args.runs_dir)
    action = {"add": _add, "list": _list, "run": _run, "remove": _remove, "move": _move,
              "retry": _retry, "stop": _stop}[args.queue_command]
    return action(store, args)


def _add(store, args) -> int:
    from lab.queue.validate import resolve_all

    configs = resolve_all([(path, args.overrides) for path in args.experiments])
    for path, cfg in zip(args.experiments, configs):
        entry = store.add(path, args.overrides, name=cfg.name)
        print(f"queued {entry.id}: {entry.label()}")
    return 0


def _run(store, args) -> int:
    from lab.queue.runner import QueueRunner

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    if args.workers < 1:
        from lm.errors import LabError

        raise LabError(f"--workers must be at least 1, got {args.workers}")
    if args.gpus_per_run < 1:
        from lm.errors import LabError

        raise LabError(f"--gpus-per-run must be at least 1, got {args.gpus_per_run}")
    runner = QueueRunner(store, args.workers, gpus=gpus, follow=args.follow, gpus_per_run=args.gpus_per_run)
    if not args.follow and not runner.has_more(store.read()):
        sweeps = sorted({e.sweep for e in store.read().entries if e.sweep and e.status == "pending"})
        hint = (f"; pending sweep and scaling-study entries run only under their own command (`lab sweep FILE`, "
                f"`lab scale FILE`): {', '.join(sweeps)}"
                if sweeps else " (add runs with `lab queue add EXPERIMENT.toml`)")
        print(f"queue: nothing pending{hint}")
        return 0
    return runner.run()


def _remove(store, args) -> int:
    from lm.errors import LabError

    ids = list(args.ids)
    if args.finished:
        from lab.queue.store import FINISHED

        ids += [e.id for e in store.read().entries if e.status in FINISHED and e.id not in ids]
    if not ids:
        raise LabError("give the ids to remove (see `lab queue list`) or --finished")
    for entry in store.remove(ids):
        print(f"removed {entry.id}: {entry.label()} ({entry.status})")
    return 0


def _move(store, args) -> int:
    pos = store.move(args.id, args.position)
    print(f"moved {args.id} to position {pos}")
    return 0


def _retry(store, args) -> int:
    for entry in store.retry(args.ids, fresh=args.fresh):
        how = f"resumes {entry.run_dir}" if entry.run_dir else "starts in a new run directory"
        print(f"retry {entry.id}: {entry.label()} ({how})")
    return 0


def _stop(store, args) -> int:
    import signal

    from lab.queue.store import QueueError, pid_alive, this_host

    if args.ids:
        state = store.read()
        for entry_id in args.ids:
            entry = state.get(entry_id)
            if entry.status != "running" or not entry.pid:
                raise QueueError(f"entry {entry_id} is {entry.status}, not running; nothing to stop")
            if entry.runner_host != this_host():
                raise QueueError(f"entry {entry_id} runs on {entry.runner_host}; stop it from there")
            if pid_alive(entry.pid):
                os.kill(entry.pid, signal.SIGTERM)
                print(f"stopping {entry_id}: {entry.run_dir} checkpoints and exits (retry resumes it)")
        return 0
    runners = store.request_stop("drain" if args.drain else "now")
    if not runners:
        print("queue: no runner is running")
        return 0
    what = "finish their current runs" if args.drain else "checkpoint their runs and exit"
    print(f"queue: asked {len(runners)} runner(s) to {what}")
    if args.wait:
        while any(pid_alive(r.pid) for r in runners if r.host == this_host()):
            time.sleep(0.5)
        print("queue: runners exited")
    return 0


def _list(store, args) -> int:
    import json

    from lab.queue.store import is_orphan, pid_alive, this_host
    from lm.runs import RunDir

    state = store.read()
    rows = []
    for e in state.entries:
        # The run's status, type-checked (a broken status.json reads as what its records say).
        run_status = RunDir(e.run_dir).status().to_dict() if e.run_dir and Path(e.run_dir).is_dir() else {}
        rows.append((e, run_status))
    if args.json:
        print(json.dumps([dict(e.to_dict(), run_status=s) for e, s in rows], indent=1, default=str))
        return 0
    if not rows:
        print(f"queue: empty ({store.path})")
        return 0
    from lab.run_comparison import text_console
    from rich.table import Table

    colors = {"pending": "white", "running": "cyan", "done": "green", "failed": "red",
              "stopped": "yellow", "diverged": "magenta"}
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("ID", "STATUS", "STEP", "BEST VAL", "TRIES", "TIME", "RUN", "EXPERIMENT"):
        table.add_column(col, no_wrap=col != "EXPERIMENT", overflow="fold")
    for e, s in rows:
        status = e.status + (" (pruned)" if e.pruned else "") + (" (runner died)" if is_orphan(e) else "")
        step = f"{s.get('step', 0)}/{s.get('total_steps', '?')}" if s else ""
        best = f"{s['best_val_loss']:.4f}" if isinstance(s.get("best_val_loss"), (int, float)) else ""
        from lab.scale import entry_label

        what = entry_label(e) or (f"sweep {e.sweep} #{e.trial}" if e.sweep else Path(e.experiment).name)
        label = " ".join([what, *e.overrides])
        table.add_row(str(e.id), f"[{colors.get(e.status, 'white')}]{status}[/]", step, best,
                      str(e.attempts), _elapsed(e), Path(e.run_dir).name if e.run_dir else "", label)
    console = text_console()
    console.print(table)
    live = [r for r in state.runners if r.host != this_host() or pid_alive(r.pid)]
    if live:
        console.print("runners: " + ", ".join(f"pid {r.pid} on {r.host} ({r.workers} worker(s))" for r in live))
    return 0


def _elapsed(entry) -> str:
    if not entry.started or entry.status == "pending":
        return ""
    end = entry.finished or time.time()
    seconds = int(end - entry.started)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
