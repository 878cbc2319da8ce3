"""Checking a queue entry (base experiment + overrides) before it is queued.

A typo in an override should fail at ``lab queue add`` time, in front of the
user, not an hour later when a runner reaches the entry.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_entry(experiment: str | os.PathLike, overrides: list[str]):
    """The resolved ExperimentConfig of ``experiment`` with ``--set`` overrides.

    Raises :class:`lm.errors.ConfigError` naming the file, key and value for a
    missing file, an unknown key, a wrong type, a bad value, or a named dataset
    that is not downloaded yet (with the ``lab data get NAME`` that fetches it).
    """
    from lm.config.loader import load_experiment
    from lm.errors import ConfigError

    cfg = load_experiment(Path(experiment), list(overrides))
    problems = dataset_problems(cfg)
    if problems:
        raise ConfigError(problems, source=str(experiment))
    return cfg


def dataset_problems(cfg) -> list[str]:
    """A problem per named dataset the config trains or validates on that is not downloaded, saying
    which ``lab data get NAME`` fetches it (a run would otherwise fail only when it starts)."""
    from lm.data.registry import DATASETS, dataset_dir, dataset_files
    from lm.errors import DataError

    out = []
    for key, name in (("data.source", cfg.data.source), ("data.val_source", cfg.data.val_source)):
        if name in DATASETS:
            try:
                dataset_files(name)
            except DataError:
                out.append(f"{key} = {name!r}: the dataset is not downloaded yet (nothing in {dataset_dir(name)}); "
                           f"run `lab data get {name}` first")
    return out


def resolve_all(items: list[tuple[str, list[str]]]) -> list:
    """Resolve every (experiment, overrides) pair, reporting all failures together."""
    from lm.errors import ConfigError, LabError

    if len(items) == 1:  # its own error already names the file
        return [resolve_entry(*items[0])]
    configs, problems = [], []
    for experiment, overrides in items:
        try:
            configs.append(resolve_entry(experiment, overrides))
        except ConfigError as e:
            where = f"{e.source}: " if e.source else f"{experiment}: "
            problems += [where + p for p in e.problems]
        except LabError as e:
            problems.append(f"{experiment}: {e}")
    if problems:
        raise ConfigError(problems, source="the experiments to queue (nothing was added)")
    return configs
