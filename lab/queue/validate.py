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
    missing file, an unknown key, a wrong type or a bad value.
    """
    from lm.config.loader import load_experiment

    return load_experiment(Path(experiment), list(overrides))


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
