"""A training run's checkpoints: what goes in one, where it is written, how a resume reads it.

(Writing and reading one checkpoint file is :mod:`lm.checkpoint_file`.)

A checkpoint is a dict (``CHECKPOINT_FORMAT``)::

    {"format": "lm-checkpoint/1", "model": state dict (CS336 names), "optimizer": ...,
     "iteration": step, "config": resolved experiment as a dict, "sampler": batch sampler state,
     "rng": {"torch", "cuda", "mps", "numpy", "python"}, "trainer": {"time", "tokens", "best_val_loss", ...}}

Every RNG a step can draw from is in it (dropout uses torch's generator, the
batch sampler its own numpy generator), so a resumed run continues bit for
bit. Files are written with :func:`lm.checkpoint_file.atomic_torch_save`; the
other names (``latest.pt``, ``best.pt``) are hard links to the file just
written, swapped in with a rename, so no name ever points at half a file and
no checkpoint is serialized twice. ``best.safetensors`` holds the model
weights of ``best.pt`` once more, without pickle, for sharing the model.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lm.atomic import atomic_rename, atomic_write, is_disk_full, is_temp_file, write_error_message
from lm.checkpoint_file import atomic_torch_save, torch_load
from lm.errors import CheckpointError
from lm.model import check_state_dict

CHECKPOINT_FORMAT = "lm-checkpoint/1"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def step_filename(step: int) -> str:
    return f"step_{step:06d}.pt"


def capture_rng(device: torch.device) -> dict:
    """Every RNG state a training step can use, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [int(version), [int(x) for x in internal], gauss_next],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_numpy_state(state) -> None:
    if isinstance(state, dict):  # this version's plain form
        keys = np.asarray(state["keys"].numpy() if torch.is_tensor(state["keys"]) else state["keys"])
        np.random.set_state((state["kind"], keys.astype(np.uint32), int(state["pos"]), int(state["has_gauss"]),
                             float(state["cached_gaussian"])))
    else:  # a checkpoint from before: np.random.get_state()'s tuple
        np.random.set_state(tuple(state))


def _set_python_state(state) -> None:
    version, internal, gauss_next = state
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))


def restore_rng(state: dict, device: torch.device) -> list[str]:
    """Restore what ``capture_rng`` saved; returns the names of states that were missing."""
    missing = []
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    else:
        missing.append("torch")
    if "numpy" in state:
        _set_numpy_state(state["numpy"])
    if "python" in state:
        _set_python_state(state["python"])
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


def check_resumable_model(model: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """CheckpointError naming the first few differences if ``state_dict`` was written for another model."""
    try:
        check_state_dict(model, state_dict)
    except CheckpointError as e:
        # One line per layer would bury the point: show the first few differences.
        head, _, detail = str(e).rstrip(".").partition(": ")
        parts = detail.split("; ")
        shown = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
        raise CheckpointError(
            f"cannot resume from {path}: it was written for a different model than this config describes "
            f"({shown}). Resume with the run's own config.toml, or start a new run directory.") from None


def rng_to_continue(ckpt: dict, rank: int, world_size: int, parallel: bool) -> dict | None:
    """The RNG state a process continues from: its own rank's when the world size is unchanged."""
    ranks = ckpt.get("rng_ranks")
    if parallel and isinstance(ranks, list) and len(ranks) == world_size:
        return ranks[rank]
    return ckpt.get("rng")


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

    @property
    def best_weights(self) -> Path:
        """The model weights of best.pt as safetensors: shareable, loadable without pickle."""
        return self.path / "best.safetensors"

    def remove_stale_temp_files(self) -> None:
        """Delete temp files a killed writer left behind (they were never renamed into place)."""
        for p in self.path.glob(".*.tmp"):
            if not is_temp_file(p):
                continue
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
        primary = self.path / step_filename(step) if keep_step_file and self.keep_last > 0 else self.latest
        if primary != self.latest:
            # Make room first, so a kill at any point leaves at most keep_last step files: the newest
            # ones stay readable through latest.pt / best.pt, which are hard links of their own.
            self._rotate(room=1)
        try:
            atomic_torch_save(obj, primary)
            written.append(primary)
            if primary != self.latest:
                _replace_with_link(primary, self.latest)
                written.append(self.latest)
            if best:
                _replace_with_link(primary, self.best)
                written.append(self.best)
                if (weights := write_best_weights(obj, step, self.best_weights)) is not None:
                    written.append(weights)
        except (OSError, RuntimeError) as e:  # torch wraps a failed write in RuntimeError (inline_container.cc)
            if not isinstance(e, OSError) and not is_disk_full(e):
                raise
            kept = [p.name for p in (self.latest, self.best) if p.is_file()]
            left = f"{' and '.join(kept)} in {self.path} are intact" if kept else "no earlier checkpoint exists"
            raise CheckpointError(
                f"cannot write checkpoint {primary}: {write_error_message(primary, e)}. The run stopped; "
                f"{left}, and `lab run --resume {self.path.parent}` continues from the last one."
            ) from None
        self._rotate()
        return written

    def _rotate(self, room: int = 0) -> None:
        """Delete the oldest step files beyond keep_last (minus ``room`` for files about to be written)."""
        files = self.step_files()
        for _, p in files[: max(0, len(files) - (self.keep_last - room))]:
            try:
                p.unlink()
            except OSError:
                pass


def write_best_weights(obj: dict, step: int, path: Path) -> Path | None:
    """The checkpoint's model weights (and model config, in the metadata) as safetensors at ``path``.

    Skipped (None) for sharded tensors (DTensor): safetensors holds whole tensors only.
    """
    from lm.export.weights import write_state_dict

    state = {k.removeprefix("_orig_mod."): v for k, v in obj["model"].items()}
    if not all(type(v) is torch.Tensor for v in state.values()):
        return None
    model_cfg = (obj.get("config") or {}).get("model")
    meta = {"format": "pt", "lab": "lab-weights/1", "step": str(int(step)),
            "model_config": json.dumps(model_cfg, default=str)}
    return write_state_dict(path, state, meta)


def _replace_with_link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src``, atomically: a hard link renamed into place.

    Where links fail (exFAT, some network mounts) the file is copied with
    :func:`lm.atomic.atomic_write` instead.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        with open(src, "rb") as f:
            atomic_write(dst, lambda out: shutil.copyfileobj(f, out))
        return
    try:
        atomic_rename(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- writing in the background

BACKGROUND_MAX_BYTES = 2 * 2**30
"""Checkpoints up to this size are written in the background (their CPU copy costs host memory)."""


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in a nested checkpoint dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cpu_snapshot(obj):
    """A copy of a nested checkpoint dict that training cannot change: tensors copied to the CPU,
    numpy arrays copied, containers rebuilt, everything else (numbers, strings) shared."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_snapshot(v) for v in obj)
    return obj


class BackgroundWrite:
    """At most one checkpoint write in flight on a worker thread, so training does not wait for the disk.

    :meth:`submit` first settles the write before it (a second never overlaps the first), then
    starts ``write()`` on a thread. :meth:`settle` waits for it and returns ``(result, tag)`` of
    the finished write (None if there was none) or re-raises its exception on the calling thread;
    :meth:`done` says whether :meth:`settle` would not block. The files stay atomic (each write is
    :meth:`CheckpointDir.save`), so a crash during a background write leaves the previous checkpoint.
    """

    def __init__(self):
        import threading

        self._threading = threading
        self._thread = None
        self._outcome = None

    def submit(self, write, tag=None):
        finished = self.settle()

        def work():
            try:
                self._outcome = ("ok", write(), tag)
            except BaseException as e:  # handed to the training thread by settle()
                self._outcome = ("error", e, tag)

        self._thread = self._threading.Thread(target=work, name="lab-checkpoint-write")
        self._thread.start()
        return finished

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def settle(self):
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        kind, value, tag = self._outcome
        self._outcome = None
        if kind == "error":
            raise value
        return value, tag
