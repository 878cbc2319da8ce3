"""The sweep driver: a queue runner that creates its own entries from an optuna study.

Each trial is an ordinary queue entry tagged with the sweep's name and trial
number, run as an ordinary ``lab run`` in an ordinary run directory, so
``lab queue list``, ``lab runs`` and the console show trials like any run. The
driver is the only runner that takes its sweep's entries (plain ``lab queue
run`` leaves them alone), because it must watch them:

* every eval record of a trial's metrics.jsonl is reported to optuna as an
  intermediate value; when the pruner (successive halving / Hyperband) says so,
  the run gets SIGTERM, checkpoints, exits 5 and is marked pruned;
* every train record goes through :class:`~lab.divergence.DivergenceWatch`;
  a diverged trial is stopped at once and marked diverged.

A killed driver started again continues the same study: interrupted trials
resume from their checkpoints and keep their optuna trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.queue.runner import Job, QueueRunner
from lab.queue.store import QueueEntry, QueueState, QueueStore
from lab.queue.validate import resolve_entry
from lab.divergence import DivergenceWatch
from lab.sweep.search import open_study, suggest, trial_overrides
from lab.sweep.spec import SweepSpec
from lm.errors import ConfigError


@dataclass
class TrialWatch:
    """What the driver knows about one live trial."""

    trial: object
    tail: object
    divergence: DivergenceWatch
    reported: set[int] = field(default_factory=set)
    last_value: float | None = None
    last_step: int | None = None
    diverged: str | None = None


def divergence_watch(spec: SweepSpec, entry: QueueEntry) -> DivergenceWatch:
    """The divergence rule of one trial: its own warmup, and its starting loss capped at ln(vocab_size)."""
    try:
        cfg = resolve_entry(entry.experiment, entry.overrides)
    except ConfigError:  # the base file changed since the sweep started; the run itself will say how
        return DivergenceWatch(spec.warmup_steps)
    return DivergenceWatch(cfg.schedule.warmup_steps, cfg.model.vocab_size)


class SweepRunner(QueueRunner):
    """Runs a sweep's trials through the queue until its trial budget is spent."""

    def __init__(self, spec: SweepSpec, store: QueueStore, workers: int = 1, **kw):
        super().__init__(store, workers, sweep=spec.name, **kw)
        self.spec = spec
        self.study = open_study(spec, store.runs_dir)
        self.trials: dict[int, object] = {}  # queue entry id -> optuna Trial
        self.watches: dict[int, TrialWatch] = {}
        self._adopt_trials()

    # ---- trials and queue entries ------------------------------------------------

    def _adopt_trials(self) -> None:
        """Reconnect RUNNING optuna trials to their queue entries; fail those whose entry is gone."""
        import optuna

        state = self.store.read()
        live = {e.trial: e for e in state.entries
                if e.sweep == self.spec.name and e.status in ("pending", "running")}
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            entry = live.get(t.number)
            if entry is not None:
                self.trials[entry.id] = optuna.trial.Trial(self.study, t._trial_id)
            else:
                self.study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def budget_left(self) -> int:
        return self.spec.trials - len(self.study.get_trials(deepcopy=False))

    def has_more(self, state: QueueState) -> bool:
        return super().has_more(state) or (self.stop_mode is None and self.budget_left() > 0)

    def select(self, state: QueueState) -> QueueEntry | None:
        entry = super().select(state)  # an interrupted or retried trial first
        if entry is not None:
            if entry.id not in self.trials:
                self._reattach(entry)
            return entry
        while self.stop_mode is None and self.budget_left() > 0:
            trial = self.study.ask()
            values = suggest(trial, self.spec.params)
            overrides = trial_overrides(self.spec, values)
            try:
                resolve_entry(self.spec.base, overrides)
            except ConfigError as e:  # a sampled value the loader rejects: record it, sample again
                trial.set_user_attr("message", str(e))
                self.study.tell(trial, state=self._state("FAIL"))
                self.log(f"sweep {self.spec.name}: trial {trial.number} {values} is invalid: {e}")
                continue
            entry = state.append(self.spec.base, overrides, name=self.spec.name, sweep=self.spec.name,
                                 trial=trial.number)
            trial.set_user_attr("entry", entry.id)
            trial.set_user_attr("overrides", overrides)
            self.trials[entry.id] = trial
            self.log(f"sweep {self.spec.name}: trial {trial.number}: " +
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
            return entry
        return None

    def _reattach(self, entry: QueueEntry) -> None:
        """A retried trial whose optuna trial was closed: open a new trial with the same values."""
        import optuna

        for t in self.study.get_trials(deepcopy=False):
            if t.number == entry.trial and t.state == optuna.trial.TrialState.RUNNING:
                self.trials[entry.id] = optuna.trial.Trial(self.study, t._trial_id)
                return
        old = next((t for t in self.study.get_trials(deepcopy=False) if t.number == entry.trial), None)
        self.study.enqueue_trial(old.params if old is not None else {})
        trial = self.study.ask()
        trial.set_user_attr("entry", entry.id)
        trial.set_user_attr("overrides", entry.overrides)
        entry.trial = trial.number
        self.trials[entry.id] = trial

    @staticmethod
    def _state(name: str):
        import optuna

        return getattr(optuna.trial.TrialState, name)

    # ---- watching live trials ------------------------------------------------------

    def on_started(self, job: Job, entry: QueueEntry) -> None:
        from lm.records import MetricsTail
        from lm.runs import RunDir

        trial = self.trials[entry.id]
        trial.set_user_attr("run_dir", str(job.run_dir))
        divergence = divergence_watch(self.spec, entry)
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        self.watches[entry.id] = TrialWatch(trial=trial, tail=MetricsTail(RunDir(job.run_dir).metrics_path),
                                            divergence=divergence, reported=set(frozen.intermediate_values))

    def watch(self, job: Job) -> None:
        w = self.watches.get(job.entry_id)
        if w is None:
            return
        records = w.tail.read()
        if w.tail.reset:  # a resume dropped records after its checkpoint: start the checks over
            w.divergence.reset()
        for rec in records:  # all of them, even after a stop, so the last value is known
            live = job.stop_reason is None and job.proc.poll() is None
            kind = rec.get("type")
            if kind == "train" and self.spec.diverge and live:
                reason = w.divergence.check(rec)
                if reason:
                    self._diverged(job, w, reason, int(rec.get("step", 0)))
            elif kind == "eval":
                self._eval(job, w, rec, live)

    def _diverged(self, job: Job, w: TrialWatch, reason: str, step: int) -> None:
        w.diverged = reason
        w.trial.set_user_attr("diverged", True)
        w.trial.set_user_attr("diverged_step", step)
        w.trial.set_user_attr("message", reason)
        self.log(f"sweep {self.spec.name}: trial {w.trial.number} diverged: {reason}; stopping it")
        self.terminate(job, "diverged", f"diverged: {reason}")

    def _eval(self, job: Job, w: TrialWatch, rec: dict, live: bool) -> None:
        """Report one eval record to optuna; stop a live trial if the pruner says so."""
        step, value = int(rec.get("step", 0)), rec.get(self.spec.metric)
        if value is None:
            if self.spec.diverge and live:
                self._diverged(job, w, f"non-finite {self.spec.metric} at step {step}", step)
            return
        w.last_value, w.last_step = float(value), step
        if step in w.reported:
            return
        w.reported.add(step)
        w.trial.report(float(value), step)
        if live and self.spec.rule != "none" and step < self.spec.total_steps and w.trial.should_prune():
            msg = f"pruned at step {step} ({self.spec.metric} {value:.4f})"
            w.trial.set_user_attr("pruned_step", step)
            self.log(f"sweep {self.spec.name}: trial {w.trial.number} {msg}")
            self.terminate(job, "pruned", msg)

    def on_finished(self, job: Job, entry: QueueEntry) -> None:
        self.watch(job)  # the records written after the last poll
        w = self.watches.pop(entry.id, None)
        if w is None:
            return
        if entry.status == "pending":
            return  # interrupted by a stop of the sweep: the trial stays open and resumes next time
        trial = self.trials.pop(entry.id)
        trial.set_user_attr("status", entry.status)
        if entry.status == "stopped" and not entry.pruned:
            trial.set_user_attr("message", f"stopped by hand; `lab queue retry {entry.id}` and run the sweep "
                                           "again to resume it")
            self.study.tell(trial, state=self._state("FAIL"))
            return
        if entry.status == "done" and w.last_value is not None:
            self.study.tell(trial, w.last_value)
            self.log(f"sweep {self.spec.name}: trial {trial.number} finished: {self.spec.metric} {w.last_value:.4f}")
        elif entry.pruned or entry.status == "diverged":
            if entry.status == "diverged" and not w.diverged:  # the engine's own halt (exit 4)
                from lm.runs import RunDir

                trial.set_user_attr("diverged", True)
                trial.set_user_attr("diverged_step", RunDir(job.run_dir).status().step)
                trial.set_user_attr("message", entry.message)
            # PRUNED, not FAIL: TPE still learns from a pruned trial that this region is bad.
            self.study.tell(trial, state=self._state("PRUNED"))
        else:
            trial.set_user_attr("message", entry.message or "no eval record")
            self.study.tell(trial, state=self._state("FAIL"))
