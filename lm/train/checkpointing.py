"""Training checkpoints: what goes in one, where it is written, how a resume reads it.

A checkpoint is a dict (``CHECKPOINT_FORMAT``)::

    {"format": "lm-checkpoint/1", "model": state dict (CS336 names), "optimizer": ...,
     "iteration": step, "config": resolved experiment as a dict, "sampler": batch sampler state,
     "rng": {"torch", "cuda", "mps", "numpy", "python"}, "trainer": {"time", "tokens", "best_val_loss", ...}}

Every RNG a step can draw from is in it (dropout uses torch's generator, the
batch sampler its own numpy generator), so a resumed run continues bit for
bit. Files are written with :func:`lm.checkpoint.atomic_torch_save`; the
other names (``latest.pt``, ``best.pt``) are hard links to the file just
written, swapped in with a rename, so no name ever points at half a file and
no checkpoint is serialized twice.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lm.checkpoint import atomic_torch_save, torch_load
from lm.errors import CheckpointError

CHECKPOINT_FORMAT = "lm-checkpoint/1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_filename(step: int) -> str:
    return f"step_{step:06d}.pt"


def capture_rng(device: torch.device) -> dict:
    """Every RNG state a training step can use."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng(state: dict, device: torch.device) -> list[str]:
    """Restore what ``capture_rng`` saved; returns the names of states that were missing."""
    missing = []
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    else:
        missing.append("torch")
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if device.type == "cuda":
        cuda = state.get("cuda")
        if cuda is not None and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif cuda is not None and len(cuda):
            torch.cuda.set_rng_state(cuda[0], device)
        else:
            missing.append("cuda")
    elif device.type == "mps":
        if "mps" in state:
            torch.mps.set_rng_state(state["mps"])
        else:
            missing.append("mps")
    return missing


def load_training_checkpoint(path: Path) -> dict:
    """Read a checkpoint for resuming; CheckpointError if it is not one of ours."""
    obj = torch_load(path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not an lm checkpoint (it has no 'model' entry)")
    fmt = obj.get("format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
    return obj


class CheckpointDir:
    """The ``checkpoints/`` folder of a run: step files, latest.pt, best.pt."""

    def __init__(self, path: str | os.PathLike, keep_last: int = 3):
        self.path = Path(path)
        self.keep_last = max(0, int(keep_last))
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def latest(self) -> Path:
        return self.path / "latest.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed writer left behind (they were never renamed into place)."""
        for p in self.path.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def step_files(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.path.iterdir():
            m = _STEP_FILE.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out)

    def save(self, obj: dict, step: int, *, keep_step_file: bool, best: bool) -> list[Path]:
        """Write ``obj`` once and point latest.pt (and best.pt if ``best``) at it.

        With ``keep_step_file`` the file is ``step_NNNNNN.pt`` and old step files
        beyond ``keep_last`` are deleted. Returns the paths written or updated.
        """
        written = []
        if keep_step_file and self.keep_last > 0:
            primary = self.path / step_filename(step)
            atomic_torch_save(obj, primary)
            _replace_with_link(primary, self.latest)
            written += [primary, self.latest]
        else:
            primary = self.latest
            atomic_torch_save(obj, primary)
            written.append(primary)
        if best:
            _replace_with_link(primary, self.best)
            written.append(self.best)
        self._rotate()
        return written

    def _rotate(self) -> None:
        files = self.step_files()
        for _, p in files[: max(0, len(files) - self.keep_last)]:
            try:
                p.unlink()
            except OSError:
                pass


def _replace_with_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src``, atomically (hard link, or a copy where links fail)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # filesystems without hard links (exFAT, some network mounts)
        shutil.copyfile(src, tmp)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
