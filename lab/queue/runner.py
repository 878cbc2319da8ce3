"""The queue runner: takes pending entries and runs up to N of them at once.

One process, one poll loop, no threads: each poll it reaps finished runs,
claims new entries for free worker slots (under the queue lock, so two runners
never take the same entry), lets subclasses watch the live runs (the sweep
driver reports eval losses to optuna and prunes), and checks whether it was
asked to stop. Runs are ``lab run`` processes, so a runner can die at any time
without losing more than the work since each run's last checkpoint:

* killed (even ``kill -9``): on Linux its runs get SIGTERM and checkpoint; the
  next runner finds their entries ``running`` under a dead runner pid, stops
  any run process still alive, and resumes each with ``lab run --resume``;
* Ctrl-C, SIGTERM or ``lab queue stop``: runs get one SIGTERM, checkpoint and
  exit 5; their entries go back to pending so the next ``lab queue run``
  resumes them first (a second Ctrl-C kills them; they still resume from their
  previous checkpoint).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from lab import processes as process
from lab.queue.store import QueueEntry, QueueState, QueueStore, has_checkpoint, is_orphan, this_host

EXIT_STATUS = {0: "done", 1: "failed", 2: "failed", 4: "diverged", 5: "stopped"}
EXIT_MEANING = {0: "finished", 1: "crashed (see train.log)", 2: "bad input (see train.log)",
                4: "diverged", 5: "stopped after a checkpoint"}


@dataclass
class Job:
    """A run process this runner started, and why it was signalled if it was."""

    entry_id: int
    proc: subprocess.Popen
    run_dir: Path
    slot: int
    resumed: bool
    gpu: str | None = None
    stop_reason: str | None = None
    """Why the runner sent SIGTERM: 'queue' (stopping), 'pruned' or 'diverged' (sweep)."""
    stop_message: str = ""


def status_for_exit(code: int) -> tuple[str, str]:
    """Queue status and a short message for a ``lab run`` exit code."""
    if code in EXIT_STATUS:
        return EXIT_STATUS[code], EXIT_MEANING[code]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "failed", f"killed by {name}"
    return "failed", f"exited with code {code}"


def run_dir_message(run_dir: Path) -> str:
    """The run's own last message (status.json), to show why it ended."""
    from lm.runs import RunDir

    return RunDir(run_dir).status().message or ""


def reserve_run_dir(runs_dir: Path, name: str) -> Path:
    """Create ``runs/<name>-<YYYYmmdd-HHMMSS>`` (``-2`` ... on a clash) for an entry about to start."""
    from lm.runs import new_run_dir

    # new_run_dir reads only ``.name`` of the config; the queue knows the name, not the whole config.
    return new_run_dir(SimpleNamespace(name=name), runs_dir)


class QueueRunner:
    """Runs the queue's entries, ``workers`` at a time, until it is empty or told to stop."""

    poll_interval = 0.5

    def __init__(self, store: QueueStore, workers: int = 1, *, gpus: list[str] | None = None,
                 follow: bool = False, sweep: str | None = None, log: Callable[[str], None] = print,
                 gpus_per_run: int = 1):
        self.store = store
        self.workers = max(1, int(workers))
        self.gpus = list(gpus) if gpus is not None else process.detect_gpus()
        self.gpus_per_run = max(1, int(gpus_per_run))
        if self.gpus_per_run > 1 and self.workers * self.gpus_per_run > len(self.gpus):
            from lm.errors import LabError

            have = f"{len(self.gpus)} ({', '.join(self.gpus)})" if self.gpus else "0"
            raise LabError(f"--gpus-per-run {self.gpus_per_run} with --workers {self.workers} needs "
                           f"{self.workers * self.gpus_per_run} GPUs, but {have} are available; use fewer "
                           "workers or GPUs per run")
        self.follow = follow
        self.sweep = sweep
        self.log = log
        self.jobs: list[Job] = []
        self.stop_mode: str | None = None  # None, 'drain' or 'now'
        self._signals = 0

    # ---- hooks for subclasses (the sweep driver) -------------------------------

    def select(self, state: QueueState) -> QueueEntry | None:
        """Inside the claim transaction: the next entry to start, or None."""
        for e in state.entries:
            if e.status == "pending" and e.sweep == self.sweep:
                return e
        return None

    def has_more(self, state: QueueState) -> bool:
        """Whether there is still work this runner would take (read without the lock).

        Pending entries count, and so do orphans: entries left ``running`` by a
        runner on this host that died, which the next claim resumes.
        """
        return any(e.sweep == self.sweep and (e.status == "pending" or is_orphan(e)) for e in state.entries)

    def watch(self, job: Job) -> None:
        """Called every poll for each live run."""

    def on_started(self, job: Job, entry: QueueEntry) -> None:
        """Called after a run process started."""

    def on_finished(self, job: Job, entry: QueueEntry) -> None:
        """Called after a run ended and its entry was updated."""

    # ---- the loop ---------------------------------------------------------------

    def run(self) -> int:
        """Run until the queue has nothing left for this runner; returns an exit code."""
        self.store.register_runner(self.workers, self.sweep)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                self._check_control()
                self._reap()
                if self.stop_mode is None:
                    self._fill_slots()
                for job in list(self.jobs):
                    if job.proc.poll() is None:
                        self.watch(job)
                if not self.jobs:
                    if self.stop_mode is not None:
                        break
                    if not self.follow and not self.has_more(self.store.read()):
                        break
                time.sleep(self.poll_interval)
        finally:
            self._shutdown()
            for s, h in previous.items():
                signal.signal(s, h)
            self.store.unregister_runner()
        return 0

    def terminate(self, job: Job, reason: str, message: str = "") -> None:
        """Send a run SIGTERM (it checkpoints and exits 5) and remember why."""
        if job.stop_reason is None:
            job.stop_reason = reason
            job.stop_message = message
            try:
                job.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1

    def _check_control(self) -> None:
        if self._signals >= 2 and self.stop_mode != "kill":
            self.log("queue: second interrupt, killing the runs (they resume from their previous checkpoint)")
            for job in self.jobs:
                job.stop_reason = job.stop_reason or "queue"
                job.proc.kill()
            self.stop_mode = "kill"
            return
        requested = "now" if self._signals else None
        if requested is None:
            me = self.store.read().runner(os.getpid(), this_host())
            requested = me.stop if me is not None else None
        if requested == "now" and self.stop_mode not in ("now", "kill"):
            self.stop_mode = "now"
            if self.jobs:
                self.log(f"queue: stopping; {len(self.jobs)} run(s) write a checkpoint and will resume next time")
            for job in self.jobs:
                self.terminate(job, "queue")
        elif requested == "drain" and self.stop_mode is None:
            self.stop_mode = "drain"
            self.log("queue: draining; finishing the current runs and taking no new ones")

    def _fill_slots(self) -> None:
        busy = {j.slot for j in self.jobs}
        for slot in range(self.workers):
            if slot in busy:
                continue
            if not self._start_next(slot):
                return

    def _gpu_for(self, slot: int) -> str | None:
        """The GPU (or, with gpus_per_run K, the K GPUs) of a worker slot: disjoint between slots."""
        if not self.gpus:
            return None
        k = self.gpus_per_run
        groups = max(1, len(self.gpus) // k)
        first = (slot % groups) * k
        return ",".join(self.gpus[first:first + k])

    def _start_next(self, slot: int) -> bool:
        gpu = self._gpu_for(slot)
        with self.store.transaction() as state:
            for e in self.store.recover(state):
                self.log(f"queue: entry {e.id} was running under a runner that died; it will resume")
            entry = self.select(state)
            if entry is None:
                return False
            orphan_pid, old_run_dir = entry.pid, entry.run_dir
            entry.status = "running"
            entry.runner_pid, entry.runner_host = os.getpid(), this_host()
            entry.pid, entry.gpu, entry.exit_code, entry.finished = None, gpu, None, None
            entry.attempts += 1
            entry.started = entry.started or time.time()
            entry.message = ""
            claimed = QueueEntry.from_dict(entry.to_dict())
        if process.stop_orphan(orphan_pid, old_run_dir):
            self.log(f"queue: stopped the old process {orphan_pid} of entry {claimed.id} (it checkpointed first)")
        resume = has_checkpoint(old_run_dir)
        run_dir = Path(old_run_dir) if resume else reserve_run_dir(self.store.runs_dir, self._run_name(claimed))
        args = process.run_command() + process.start_args(claimed.experiment, claimed.overrides, str(run_dir), resume)
        if self.gpus_per_run > 1:  # one distributed run over this slot's GPUs (lab run --gpus K)
            args += ["--gpus", str(self.gpus_per_run)]
        try:
            proc = process.spawn(args, cwd=claimed.cwd_or_here(), log_path=run_dir / "train.log", gpu=gpu,
                                 extra_env={"LAB_QUEUE_ENTRY": str(claimed.id)})
        except OSError as e:
            self._record(claimed.id, status="failed", message=f"could not start {args[0]}: {e}", run_dir=run_dir)
            return True
        job = Job(entry_id=claimed.id, proc=proc, run_dir=run_dir, slot=slot, resumed=resume, gpu=gpu)
        self.jobs.append(job)
        with self.store.transaction() as state:
            entry = state.get(claimed.id)
            entry.pid, entry.run_dir = proc.pid, str(run_dir)
            claimed = QueueEntry.from_dict(entry.to_dict())
        verb = "resumed" if resume else "started"
        where = f" on GPU {gpu}" if gpu is not None else ""
        self.log(f"queue: {verb} entry {claimed.id} ({claimed.label()}) in {run_dir}{where}")
        self.on_started(job, claimed)
        return True

    def _run_name(self, entry: QueueEntry) -> str:
        name = entry.name or Path(entry.experiment).stem
        return f"{name}-t{entry.trial:03d}" if entry.trial is not None else name

    def _reap(self) -> None:
        for job in list(self.jobs):
            code = job.proc.poll()
            if code is None:
                continue
            self.jobs.remove(job)
            status, message = status_for_exit(code)
            if job.stop_reason == "queue" and (code == 5 or code < 0):
                status, message = "pending", "interrupted by a queue stop; resumes from its last checkpoint"
            elif job.stop_reason == "pruned" and code in (0, 5):
                status, message = ("stopped", job.stop_message or "pruned by the sweep") if code == 5 else (status, message)
            elif job.stop_reason == "diverged" and code in (4, 5):
                status, message = "diverged", job.stop_message or "diverged"
            own = run_dir_message(job.run_dir)
            if own and status not in ("done", "pending") and job.stop_reason is None:
                message = f"{message}: {own}"
            entry = self._record(job.entry_id, status=status, message=message, exit_code=code,
                                 pruned=job.stop_reason == "pruned" and status == "stopped")
            self.log(f"queue: entry {job.entry_id} {status} ({message})")
            if entry is not None:
                self.on_finished(job, entry)

    def _record(self, entry_id: int, *, status: str, message: str, exit_code: int | None = None,
                pruned: bool = False, run_dir: Path | None = None) -> QueueEntry | None:
        with self.store.transaction() as state:
            try:
                entry = state.get(entry_id)
            except Exception:  # removed by hand while running: nothing to record
                return None
            entry.status, entry.message, entry.exit_code, entry.pruned = status, message, exit_code, pruned
            entry.pid = None
            if run_dir is not None:
                entry.run_dir = str(run_dir)
            if status != "pending":
                entry.finished = time.time()
            else:
                entry.runner_pid = None
            return QueueEntry.from_dict(entry.to_dict())

    def _shutdown(self) -> None:
        """On an unexpected exit of the loop: checkpoint and record every live run."""
        if not self.jobs:
            return
        for job in self.jobs:
            self.terminate(job, "queue")
        deadline = time.monotonic() + 600
        while self.jobs and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        for job in self.jobs:
            job.proc.kill()
        self._reap()

