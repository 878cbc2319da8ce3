"""The console's processes: runs, the queue runner and sweeps it started, and the runs under its folder.

The console never trains in its own process. A run is ``python -m lab run``
started in its own session (``start_new_session=True``) with stdout and stderr
appended to ``<run_dir>/train.log``, so it keeps training when the console
closes and it is watched like any other run, through its directory. Stopping
a run is a SIGTERM to the pid in its ``status.json`` (the run writes a
checkpoint and exits 5); resuming is ``python -m lab run --resume DIR``. The
queue runner and sweeps are detached ``python -m lab queue run`` / ``python -m
lab sweep`` processes with their output in ``<runs>/console-queue.log``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.processes import lab_command, process_cmdline, spawn
from lm.errors import LabError

QUEUE_LOG = "console-queue.log"


@dataclass
class Started:
    """A process this console started, kept so it can be reaped and offered for stopping at exit."""

    proc: subprocess.Popen
    kind: str
    """'run', 'resume', 'queue' or 'sweep'."""
    run_dir: Path | None
    command: list[str]


class Supervisor:
    """The processes of one console session, and the run directories under ``runs_dir``."""

    def __init__(self, runs_dir: str | os.PathLike = "runs", cwd: str | os.PathLike | None = None):
        self.runs_dir = Path(runs_dir)
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.started: list[Started] = []

    @property
    def runs_label(self) -> str:
        """The runs folder as the user would type it (relative to the console's directory when inside it)."""
        try:
            return str(self.runs_dir.resolve().relative_to(self.cwd.resolve()))
        except ValueError:
            return str(self.runs_dir)

    # ---- spawning ------------------------------------------------------------

    def _spawn(self, args: list[str], log_path: Path, kind: str, run_dir: Path | None) -> Started:
        command = lab_command() + args
        # Detached and not tied to the console: closing it leaves the run training.
        proc = spawn(command, cwd=self.cwd, log_path=log_path, who="lab console", die_with_parent=False)
        started = Started(proc, kind, run_dir, command)
        self.started.append(started)
        return started

    def launch(self, cfg, experiment: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Path:
        """Start training ``cfg`` in a new run directory under ``runs_dir``; returns the directory.

        With ``experiment`` (the file ``cfg`` was loaded from, plus ``overrides``)
        the command is the one a user would type. Without, ``cfg`` (edited in
        the console) is written to the run's ``config.toml`` first and trained from there.
        """
        from lm.config.loader import write_resolved
        from lm.runs import CONFIG_FILE, TRAIN_LOG, new_run_dir

        run_dir = new_run_dir(cfg, self.runs_dir)
        if experiment is None:
            experiment = write_resolved(cfg, run_dir / CONFIG_FILE)
            overrides = ()
        args = ["run", str(experiment)]
        for o in overrides:
            args += ["--set", o]
        args += ["--run-dir", str(run_dir)]
        self._spawn(args, run_dir / TRAIN_LOG, "run", run_dir)
        return run_dir

    def resume(self, run_dir: str | os.PathLike) -> Started:
        """Continue a stopped (or crashed) run from its ``checkpoints/latest.pt``."""
        from lm.runs import TRAIN_LOG, RunDir

        rd = RunDir(run_dir)
        st = rd.status()
        if st.state == "running":
            raise LabError(f"{rd.name} is still running; stop it before resuming")
        if st.state == "done":
            raise LabError(f"{rd.name} finished all {st.total_steps} steps; there is nothing to resume")
        if not (rd.checkpoint_dir / "latest.pt").is_file():
            raise LabError(f"{rd.name} has no checkpoints/latest.pt to resume from (it stopped before its "
                           "first checkpoint); start it again from its experiment instead")
        return self._spawn(["run", "--resume", str(rd.path)], rd.path / TRAIN_LOG, "resume", rd.path)

    def stop(self, run_dir: str | os.PathLike) -> int:
        """Ask a live run to checkpoint and exit (SIGTERM to its pid); returns the pid."""
        from lm.runs import RunDir, pid_alive

        rd = RunDir(run_dir)
        st = rd.status()
        if st.state != "running" or not st.pid:
            own = next((s for s in self.started if s.run_dir == rd.path and s.proc.poll() is None), None)
            if own is not None:  # started here, still starting up: it has not written its pid yet
                own.proc.send_signal(signal.SIGTERM)
                return own.proc.pid
            raise LabError(f"{rd.name} is {st.state}, not running; nothing to stop")
        if st.host and st.host != socket.gethostname():
            raise LabError(f"{rd.name} runs on {st.host}; stop it from there (this is {socket.gethostname()})")
        pid = int(st.pid)
        if not pid_alive(pid):
            raise LabError(f"{rd.name}'s process {pid} has already exited")
        cmdline = process_cmdline(pid)
        if cmdline and "lab" not in cmdline and "python" not in cmdline:
            raise LabError(f"pid {pid} of {rd.name} is now another program ({cmdline[:60]}); not signalling it")
        os.kill(pid, signal.SIGTERM)
        return pid

    # ---- queue and sweeps ----------------------------------------------------

    def start_queue_runner(self, workers: int = 1) -> Started:
        """Start ``lab queue run`` detached (it exits when the queue is empty)."""
        args = ["queue", "--runs-dir", str(self.runs_dir), "run", "--workers", str(workers)]
        return self._spawn(args, self.runs_dir / QUEUE_LOG, "queue", None)

    def start_sweep(self, sweep_file: str | os.PathLike, workers: int = 1) -> Started:
        """Start ``lab sweep FILE`` detached: its trials become queue entries."""
        args = ["sweep", str(sweep_file), "--runs-dir", str(self.runs_dir), "--workers", str(workers)]
        return self._spawn(args, self.runs_dir / QUEUE_LOG, "sweep", None)

    def start_study(self, study_file: str | os.PathLike, workers: int = 1) -> Started:
        """Start ``lab scale FILE`` detached: its runs become queue entries, fitted when they finish."""
        args = ["scale", str(study_file), "--runs-dir", str(self.runs_dir), "--workers", str(workers)]
        return self._spawn(args, self.runs_dir / QUEUE_LOG, "scale", None)

    def stop_queue_runners(self) -> int:
        """Ask every live queue runner to checkpoint its runs and exit; returns how many."""
        from lab.queue.store import QueueStore

        return len(QueueStore(self.runs_dir).request_stop("now"))

    def queue_runners(self) -> list:
        """Live runner records of the queue in ``runs_dir``."""
        from lab.queue.store import QueueStore, pid_alive, this_host

        try:
            state = QueueStore(self.runs_dir).read()
        except LabError:
            return []
        return [r for r in state.runners if r.host != this_host() or pid_alive(r.pid)]

    # ---- bookkeeping ---------------------------------------------------------

    def reap(self) -> list[Started]:
        """Collect the exit status of finished children (no zombies); returns those that ended."""
        done = [s for s in self.started if s.proc.poll() is not None]
        self.started = [s for s in self.started if s not in done]
        return done

    def live_runs(self) -> list[Path]:
        """Run directories under ``runs_dir`` training right now on this host (any starter), plus
        runs this console started that have not written their status yet."""
        from lm.runs import RunDir, list_runs

        here = socket.gethostname()
        live = []
        for summary in list_runs(self.runs_dir):
            if summary.state != "running":
                continue
            st = RunDir(summary.path).status()
            if st.state == "running" and (not st.host or st.host == here):
                live.append(summary.path)
        self.reap()
        for s in self.started:
            if s.run_dir is not None and s.run_dir not in live and s.kind in ("run", "resume"):
                live.append(s.run_dir)
        return live

    def stop_all(self, run_dirs: list[Path]) -> list[str]:
        """SIGTERM each run (they checkpoint and exit 5); returns a line per run that could not be stopped."""
        problems = []
        for rd in run_dirs:
            try:
                self.stop(rd)
            except LabError as e:
                problems.append(str(e))
        return problems
