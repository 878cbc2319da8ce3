"""The optuna side of a sweep: the study, its sampler and pruner, and trial parameters.

The study lives in ``<runs>/sweeps/<name>/optuna.db`` (sqlite), so a sweep
that was stopped or killed continues where it was when started again, and
``lab sweep report`` reads it without the driver. Samplers: GridSampler (every
point, in a seeded order), RandomSampler, TPESampler (Bayesian). Pruners:
SuccessiveHalvingPruner and HyperbandPruner over eval steps, or none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lab.sweep.spec import ParamSpec, SweepSpec, override_text
from lm.errors import LabError

SPEC_FILE = "sweep.json"


def sweep_dir(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir).absolute() / "sweeps" / name


def storage_url(runs_dir: str | Path, name: str) -> str:
    return f"sqlite:///{sweep_dir(runs_dir, name) / 'optuna.db'}"


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def make_sampler(spec: SweepSpec):
    optuna = _quiet_optuna()
    if spec.method == "grid":
        return _ask_tell_grid_sampler(spec.grid(), spec.seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    # A few random trials first, then TPE; constant_liar keeps parallel workers from piling on one point.
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.trials // 3)),
                                      constant_liar=True)


def _ask_tell_grid_sampler(search_space: dict, seed: int | None):
    """A GridSampler without its end-of-grid ``study.stop()``.

    That call only works inside ``study.optimize`` and raises under the
    ask/tell interface the driver uses; the driver stops at the grid size itself.
    """
    optuna = _quiet_optuna()

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGridSampler(search_space, seed=seed)


def make_pruner(spec: SweepSpec):
    optuna = _quiet_optuna()
    if spec.rule == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_steps,
                                                      reduction_factor=spec.reduction_factor)
    if spec.rule == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_steps, max_resource=spec.total_steps,
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, runs_dir: str | Path):
    """Create the sweep's study, or load it if this sweep ran before with the same settings."""
    optuna = _quiet_optuna()
    folder = sweep_dir(runs_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / SPEC_FILE
    fingerprint = json.loads(json.dumps(spec.fingerprint()))
    if saved.is_file():
        before = json.loads(saved.read_text()).get("fingerprint")
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if fingerprint.get(k) != (before or {}).get(k))
            raise LabError(
                f"sweep '{spec.name}' already exists in {folder} with different settings ({', '.join(changed)} "
                f"changed); continue it with the original file, or start a new sweep with --name NEW_NAME")
    from lm.atomic import atomic_write

    atomic_write(saved, json.dumps({"fingerprint": fingerprint, "path": str(spec.path), "metric": spec.metric,
                                    "direction": spec.direction, "params": [p.key for p in spec.params],
                                    "trials": spec.trials, "total_steps": spec.total_steps}, indent=1))
    return optuna.create_study(storage=storage_url(runs_dir, spec.name), study_name=spec.name,
                               sampler=make_sampler(spec), pruner=make_pruner(spec), direction=spec.direction,
                               load_if_exists=True)


def load_study(runs_dir: str | Path, name: str):
    """An existing sweep's study, for reports (LabError listing the sweeps there if absent)."""
    optuna = _quiet_optuna()
    folder = sweep_dir(runs_dir, name)
    if not (folder / "optuna.db").is_file():
        root = folder.parent
        known = sorted(p.name for p in root.iterdir() if (p / "optuna.db").is_file()) if root.is_dir() else []
        have = f"sweeps in {root}: {', '.join(known)}" if known else f"there are no sweeps in {root}"
        raise LabError(f"no sweep named '{name}' ({folder / 'optuna.db'} does not exist); {have}")
    return optuna.load_study(study_name=name, storage=storage_url(runs_dir, name))


def suggest(trial, params: list[ParamSpec]) -> dict:
    """Ask the trial for a value of every swept key (what the sampler proposes)."""
    out = {}
    for p in params:
        if p.values is not None:
            out[p.key] = trial.suggest_categorical(p.key, p.values)
        elif p.is_int_range:
            out[p.key] = trial.suggest_int(p.key, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def trial_overrides(spec: SweepSpec, values: dict) -> list[str]:
    """The ``--set`` list of one trial: the sweep's fixed overrides, then its parameter values."""
    return list(spec.fixed) + [override_text(k, v) for k, v in values.items()]
