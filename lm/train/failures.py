"""Failures mid-run that are a setting or the machine, not a bug: each becomes a one-paragraph LabError.

The trainer records the returned error (exit 2) instead of printing a traceback (exit 1): an
out-of-memory step names the keys to shrink and what the calculator predicts; an op without a
deterministic implementation names the op and ``training.deterministic``; a full disk under the run
directory names the path and how to resume.
"""

from __future__ import annotations

from pathlib import Path

from lm.atomic import is_disk_full, write_error_message
from lm.config.schema import ExperimentConfig
from lm.device import nondeterministic_op
from lm.errors import LabError
from lm.train.memory_check import is_out_of_memory, oom_error


def explain(e: BaseException, cfg: ExperimentConfig, device_name: str, run_dir: Path) -> LabError | None:
    """The LabError that says what ``e`` means for this run, or None for an unexpected error (a bug)."""
    if is_out_of_memory(e):
        return oom_error(cfg, device_name, e)
    op = nondeterministic_op(e)
    if op is not None:
        return LabError(f"training.deterministic = true, but {op} has no deterministic implementation on "
                        f"{device_name}; set training.deterministic = false (`--set training.deterministic=false`) "
                        "to run this experiment")
    if is_disk_full(e):  # metrics, events or status could not be written
        return LabError(f"cannot write to {run_dir}: {write_error_message(run_dir / 'status.json', e)}"
                        f"; `lab run --resume {run_dir}` continues from the last checkpoint")
    return None
