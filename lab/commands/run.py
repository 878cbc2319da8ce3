"""``lab run``: train an experiment (or continue a run) headless, with a live line.

On a terminal the progress is a rich bar (step, loss, tokens/s, ETA); when the
output is a file or a pipe (the queue's train.log, CI) it is plain lines, at
most one every few seconds plus every evaluation. Either way the run ends with
a summary and the exit code of docs/run-directory.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run", help="train an experiment (or continue a run)",
        description="Train an experiment file into a new run directory, or continue an existing run. "
                    "Ctrl-C (or SIGTERM) writes a checkpoint and exits 5; `lab run --resume DIR` continues. "
                    "Exit codes: 0 done, 1 crashed, 2 bad input, 4 diverged, 5 stopped.")
    p.add_argument("experiment", nargs="?", help="experiment TOML file (or a name under experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.steps=200 (repeatable)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="write into DIR (continued from its checkpoint if it has one) instead of a new "
                        "runs/<name>-<time> directory")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR with its own config.toml (--set may change e.g. training.steps)")
    p.add_argument("--checkpoint", metavar="WHICH",
                   help="with --resume/--run-dir: continue from latest (default), best, step_N or a file "
                        "(for when latest.pt is damaged)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:N or mps (beats training.device)")
    d = p.add_argument_group("several GPUs (torch.distributed; docs/distributed.md)")
    d.add_argument("--gpus", type=int, metavar="N",
                   help="train on N local GPUs, one process each, through torchrun (DDP or FSDP2 by "
                        "training.parallel); with --device cpu, N CPU processes (gloo)")
    d.add_argument("--nnodes", default="1", metavar="N", help="machines taking part (torchrun --nnodes)")
    d.add_argument("--node-rank", type=int, default=0, metavar="I", help="this machine's index (torchrun --node-rank)")
    d.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                   help="rendezvous on the first machine, for --nnodes > 1 (torchrun --rdzv-endpoint)")
    d.add_argument("--rdzv-id", default="", metavar="ID", help="the job's id, the same on every machine")
    return p


def run(args) -> int:
    from lm.config.loader import load_experiment
    from lm.errors import ConfigError

    if args.resume and args.experiment:
        raise ConfigError([f"give either an experiment file ({args.experiment}) or --resume {args.resume}, not "
                           f"both; to continue a run with a changed config use {args.experiment} --run-dir "
                           f"{args.resume}"])
    if args.resume and args.run_dir:
        raise ConfigError(["--resume DIR already names the run directory; leave out --run-dir"])
    if not args.resume and not args.experiment:
        raise ConfigError(["give an experiment file (e.g. lab run experiments/quickstart.toml) or --resume RUN_DIR"])
    cfg = load_experiment(args.experiment, args.overrides) if args.experiment else None
    from lm.distributed.env import launched_by_torchrun

    if args.gpus is not None and not launched_by_torchrun():
        return _launch(args, cfg)
    if cfg is not None and not args.run_dir and int(os.environ.get("RANK", "0")) == 0:
        _hint_resumable(cfg)

    from lm.train.experiment import run_experiment

    if int(os.environ.get("RANK", "0")) > 0:  # rank 0 speaks for the run
        display = _Display()
        display.line = lambda text: None
    else:
        display = RichDisplay() if sys.stdout.isatty() else PlainDisplay()
    summary: dict = {}
    try:
        code = run_experiment(cfg, run_dir=args.run_dir, resume=args.resume, progress=display,
                              device=args.device, overrides=args.overrides if args.resume else (),
                              summary=summary, checkpoint=args.checkpoint)
    finally:
        display.close()
    if int(os.environ.get("RANK", "0")) == 0:
        display.print_summary(code, summary)
    elif code in (4, 5):
        # Every rank halted or stopped at the same step (they agree on it), and rank 0 records it and
        # exits with the code. Leaving 0 here keeps torchrun's agent from stopping rank 0 mid-write.
        return 0
    return code


def _launch(args, cfg) -> int:
    """``--gpus N``: choose the run directory here, then start the workers through torchrun."""
    from lm.distributed.data import check_batch_split
    from lm.distributed.launch import check_gpu_count, launch
    from lm.runs import RunDir, new_run_dir

    if cfg is None:
        cfg = RunDir(args.resume).config(args.overrides)
    check_gpu_count(args.gpus, args.device or cfg.training.device)
    nodes = int(args.nnodes) if str(args.nnodes).isdigit() else None
    if nodes:
        check_batch_split(cfg, args.gpus * nodes)
    run_dir = args.resume or args.run_dir
    if run_dir is None and nodes == 1:
        _hint_resumable(cfg)
        run_dir = str(new_run_dir(cfg))
    child = ["run"] + ([args.experiment] if args.experiment else [])
    for o in args.overrides:
        child += ["--set", o]
    if args.resume:
        child += ["--resume", args.resume]
    elif run_dir:
        child += ["--run-dir", run_dir]
    if args.device:
        child += ["--device", args.device]
    if getattr(args, "checkpoint", None):
        child += ["--checkpoint", args.checkpoint]
    # Only the first machine's launcher records a failure: the run directory is rank 0's.
    return launch(args.gpus, child, run_dir=run_dir if args.node_rank == 0 else None, nnodes=args.nnodes,
                  node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id)


def _hint_resumable(cfg) -> None:
    """Starting afresh while an interrupted run of the same experiment could continue: say how."""
    from lm.runs import list_runs

    for r in list_runs(cfg.runs_dir):  # newest first
        if not r.name.startswith(f"{cfg.name}-"):
            continue
        if r.state in ("stopped", "failed") and (r.path / "checkpoints" / "latest.pt").is_file() \
                and r.step < r.total_steps:
            print(f"note: {r.path} was {r.state} at step {r.step}/{r.total_steps}; `lab run --resume {r.path}` "
                  "continues it. Starting a new run.", flush=True)
        return


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(x, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


class _Display:
    """Turns run_experiment's progress records into output; subclasses decide how it looks."""

    def __init__(self):
        self.run_dir = ""
        self.total = 0
        self.step0 = 0
        self.t0 = time.perf_counter()
        self.last_train: dict = {}
        self.last_event: dict = {}
        self.messages: list[str] = []
        self._first: tuple[int, float] | None = None

    def eta(self, step: int) -> float | None:
        """Seconds left, from the wall-clock rate since the first train line (so not counting the
        compile of the first step); at the first line, from its tokens/s (which leaves it out too)."""
        if not self.total or step <= self.step0:
            return None
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        first_step, first_t = self._first
        if step > first_step:
            return (now - first_t) / (step - first_step) * (self.total - step)
        rec = self.last_train
        tps, tokens = rec.get("tokens_per_s"), rec.get("tokens")
        if tps and tokens and rec.get("step"):
            return (self.total - step) * (tokens / rec["step"]) / tps
        return (now - self.t0) / (step - self.step0) * (self.total - step)

    def __call__(self, kind: str, rec: dict) -> None:
        if kind == "event":
            kind = rec["event"]
            if kind == "eval":  # the eval metrics record already printed the numbers
                return
        if kind == "run_dir":
            self.run_dir = rec["run_dir"]
            self.line(f"run dir: {self.run_dir}" + (" (continuing from its checkpoint)" if rec["resume"] else ""))
        elif kind in ("start", "resume"):
            from lm.runs import RunDir

            self.step0, self.t0, self._first = rec["step"], time.perf_counter(), None
            self.total = RunDir(self.run_dir).status().total_steps
            self.line(rec["message"])
            self.started(rec)
        elif kind == "prepare":
            self.prepare(rec)
        elif kind == "train":
            self.last_train = rec
            self.train(rec)
        elif kind == "eval":
            bpb = f", {rec['val_bpb']:.4f} bits/byte" if rec.get("val_bpb") is not None else ""
            self.line(f"step {rec['step']}: val_loss {_fmt(rec['val_loss'])}, ppl {_fmt(rec['val_ppl'], '.2f')}{bpb}")
        elif kind in ("halt", "stop", "error", "finish"):
            self.last_event = rec

    def started(self, rec: dict) -> None:
        pass

    def prepare(self, rec: dict) -> None:
        pass

    def train(self, rec: dict) -> None:
        pass

    def line(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass

    def print_summary(self, code: int, summary: dict) -> None:
        ev = self.last_event
        run_dir = summary.get("run_dir") or self.run_dir
        if code == 0:
            head = f"done: {summary.get('steps', '?')}/{summary.get('total_steps', '?')} steps"
        elif code == 4:
            head = f"diverged: {ev.get('message', '')}"
        elif code == 5:
            head = f"stopped: {ev.get('message', '')}"
        else:
            head = f"failed (exit {code}): {ev.get('message', '')}"
        print(head, file=sys.stdout if code in (0, 5) else sys.stderr, flush=True)
        if not summary:
            return
        tps = summary.get("tokens_per_s")
        bpb = summary.get("val_bpb")
        print(f"  steps {summary['steps']}/{summary['total_steps']}  tokens {summary['tokens']:,}  "
              f"wall time {_fmt_duration(summary.get('wall_time'))}  "
              f"tokens/s {'-' if tps is None else f'{tps:,.0f}'}")
        print(f"  final val loss {_fmt(summary.get('val_loss'))}"
              f"  bits/byte {_fmt(bpb)}  best val loss {_fmt(summary.get('best_val_loss'))}")
        print(f"  run dir {run_dir}", flush=True)


class PlainDisplay(_Display):
    """Plain lines for logs and pipes: at most one train line every ``every`` seconds."""

    def __init__(self, every: float = 5.0):
        super().__init__()
        self.every = every
        self._last_line = 0.0
        self._last_stage = None

    def prepare(self, rec: dict) -> None:
        if rec["stage"] != self._last_stage:
            self._last_stage = rec["stage"]
            self.line(f"preparing data: {rec['stage']}")

    def train(self, rec: dict) -> None:
        now = time.perf_counter()
        if now - self._last_line < self.every and rec["step"] < self.total:
            return
        self._last_line = now
        self.line(f"step {rec['step']}/{self.total} loss {rec['loss']:.4f} lr {rec['lr']:.3g} "
                  f"grad_norm {_fmt(rec['grad_norm'], '.3f')} tokens/s {rec['tokens_per_s']:,.0f}"
                  f" eta {_fmt_duration(self.eta(rec['step']))}")



class RichDisplay(_Display):
    """A rich progress bar with step, loss, tokens/s and ETA, eval lines printed above it."""

    def __init__(self):
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

        self.console = Console()
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False)
        self.task = None
        self.prep_task = None
        self.progress.start()

    def line(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def prepare(self, rec: dict) -> None:
        total = rec.get("total") or None
        if self.prep_task is None:
            self.prep_task = self.progress.add_task("preparing data", total=total, info="")
        self.progress.update(self.prep_task, description=f"data: {rec['stage']}", completed=rec.get("done") or 0,
                             total=total)

    def started(self, rec: dict) -> None:
        if self.prep_task is not None:
            self.progress.remove_task(self.prep_task)
            self.prep_task = None
        self.task = self.progress.add_task("training", total=self.total, completed=rec["step"], info="")

    def train(self, rec: dict) -> None:
        if self.task is None:
            return
        info = (f"loss {rec['loss']:.4f}  {rec['tokens_per_s']:,.0f} tok/s  "
                f"eta {_fmt_duration(self.eta(rec['step']))}")
        self.progress.update(self.task, completed=rec["step"], info=info)

    def close(self) -> None:
        self.progress.stop()
