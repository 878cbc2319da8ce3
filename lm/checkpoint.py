"""Checkpoints: model, optimizer and iteration, to a path or a binary file object.

Writes to a path are atomic (temp file in the same directory, fsync, rename),
so a crash or kill -9 mid-write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

from lm.errors import CheckpointError

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` via a temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def torch_load(src: PathOrFile, map_location="cpu") -> Any:
    """torch.load with a clear error for a missing, truncated or foreign file."""
    name = src if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<file object>")
    try:
        # weights_only=False: our checkpoints carry RNG states and plain Python config dicts.
        return torch.load(src, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name} does not exist") from None
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"checkpoint {name} cannot be read ({type(e).__name__}: {e}); it may be truncated or not a "
            "checkpoint written by lm. Use another checkpoint (for example the run's latest.pt or best.pt)."
        ) from None


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    out: PathOrFile) -> None:
    """Save model and optimizer state and the iteration number (CS336 semantics)."""
    obj = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": int(iteration)}
    if isinstance(out, (str, os.PathLike)):
        atomic_torch_save(obj, out)
    else:
        torch.save(obj, out)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore model (and optimizer) state from ``src``; return the saved iteration."""
    obj = torch_load(src)
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{src} is not an lm checkpoint (no 'model' entry)")
    from lm.model import check_state_dict

    check_state_dict(model, obj["model"])
    model.load_state_dict(obj["model"])
    if optimizer is not None and "optimizer" in obj:
        optimizer.load_state_dict(obj["optimizer"])
    return int(obj.get("iteration", 0))


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int) -> bytes:
    buf = io.BytesIO()
    save_checkpoint(model, optimizer, iteration, buf)
    return buf.getvalue()
