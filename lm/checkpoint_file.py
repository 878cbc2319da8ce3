"""One checkpoint file: model, optimizer and iteration, to a path or a binary file object.

(A training run's folder of checkpoints, and the resumable state in them, is
:mod:`lm.train.run_checkpoints`.)

Writes to a path are atomic (temp file in the same directory, fsync, rename),
so a crash or kill -9 mid-write never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import IO, Any, BinaryIO

import torch

from lm.atomic import atomic_write
from lm.errors import CheckpointError

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]
_UNSAFE_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", re.IGNORECASE)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (:func:`lm.atomic.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _legacy_numpy_globals() -> list:
    """What an lm checkpoint written before plain-type RNG states needs: numpy's array rebuild.

    Those checkpoints hold ``np.random.get_state()`` (a uint32 array). The
    functions listed rebuild a numeric array and run nothing else, so they are
    allowed, for these loads only, next to torch's own weights-only set.
    """
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    if core.__name__ == "numpy._core":  # numpy 2 reading a file pickled under numpy 1
        allowed.append((core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [dtypes.UInt32DType, dtypes.Float64DType, dtypes.Int64DType]
    return allowed


def torch_load(src: PathOrFile, map_location="cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain Python values only.

    A checkpoint is data, never code: a file holding anything else (a pickled
    object whose loading would run code) is refused with a CheckpointError
    naming the file and what it holds, as is a missing, truncated or foreign file.
    """
    name = src if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<file object>")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(src, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name} does not exist") from None
    except pickle.UnpicklingError as e:
        found = _UNSAFE_GLOBAL.search(str(e))
        if found is None:  # not an object torch refused: a torn or foreign file
            raise CheckpointError(_unreadable(name, _short(e))) from None
        what = f" ({found.group(1)})"
        raise CheckpointError(
            f"checkpoint {name} holds Python objects other than tensors and plain values{what}; loading it "
            "could run code, so it is refused. lm checkpoints hold only tensors, numbers, strings, lists and "
            "dicts: use a checkpoint written by lab, or one from a source you trust converted to that form."
        ) from None
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(_unreadable(name, e)) from None


def _short(e: Exception) -> Exception:
    """torch's weights-only errors are a page of advice; keep the line that says what was wrong."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n", 1)[0].strip()
        return type(e)(detail or text)
    return e


def _unreadable(name, e: Exception) -> str:
    return (f"checkpoint {name} cannot be read ({type(e).__name__}: {e}); it may be truncated or not a "
            "checkpoint written by lm. Use another checkpoint: `--checkpoint best`, `latest` or `step_N` "
            "(`lab run --resume DIR --checkpoint step_N` continues from one).")


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


def check_tokenizer(ckpt: dict, tokenizer, ckpt_path, tokenizer_dir) -> None:
    """Refuse a tokenizer other than the one the checkpoint was trained with (its recorded fingerprint).

    A model reads token ids; with another tokenizer (a retrained or edited
    ``tokenizer/``) the same ids mean other text, and training or sampling
    goes on silently on garbage. Checkpoints without a fingerprint (written
    before it was recorded) are not checked.
    """
    recorded = ckpt.get("tokenizer_fingerprint")
    if not isinstance(recorded, str) or tokenizer is None or not hasattr(tokenizer, "fingerprint"):
        return
    actual = tokenizer.fingerprint()
    if actual != recorded:
        raise CheckpointError(
            f"the tokenizer in {tokenizer_dir} (fingerprint {actual[:12]}...) is not the one {ckpt_path} was "
            f"trained with (fingerprint {recorded[:12]}...): its vocab.json, merges.txt or special tokens were "
            "changed or replaced. Put the run's original tokenizer files back, or start a new run directory."
        )


# Sharded (DCP) checkpoints: torch's FileSystemReader unpickles ``.metadata`` with plain pickle,
# which would run whatever a hostile run directory put there. This reader allows only the
# classes that metadata is made of.
_DCP_ALLOWED = {
    "torch.distributed.checkpoint.metadata": None,  # its dataclasses and enums, any of them
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},  # and dtypes, checked by type below
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


def _safe_find_class(source, module: str, name: str):
    import importlib

    allowed = _DCP_ALLOWED.get(module, set())
    ok = module in _DCP_ALLOWED and (allowed is None or name in allowed)
    if module == "torch" and not ok:
        ok = isinstance(getattr(torch, name, None), torch.dtype)
    if ok and allowed is None:
        import dataclasses as _dc
        import enum

        obj = getattr(importlib.import_module(module), name, None)
        ok = isinstance(obj, type) and (_dc.is_dataclass(obj) or issubclass(obj, enum.Enum))
    if not ok:
        raise CheckpointError(
            f"sharded checkpoint metadata {source} holds {module}.{name}, which is not part of a DCP checkpoint; "
            "loading it could run code, so it is refused. Use a checkpoint written by lab.")
    return getattr(importlib.import_module(module), name)


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, source):
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str):
        return _safe_find_class(self.source, module, name)


def dcp_reader(directory: str | os.PathLike):
    """A ``torch.distributed.checkpoint`` storage reader for ``directory`` whose metadata load runs no code."""
    from torch.distributed.checkpoint import FileSystemReader

    class _SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            path = self._get_metadata_path(rank) if hasattr(self, "_get_metadata_path") else \
                os.path.join(str(self.path), ".metadata")
            try:
                with open(path, "rb") as f:
                    metadata = _MetadataUnpickler(f, path).load()
            except FileNotFoundError:
                raise CheckpointError(f"sharded checkpoint {directory} has no metadata file ({path})") from None
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(f"sharded checkpoint metadata {path} cannot be read ({type(e).__name__}: "
                                      f"{e}); use another checkpoint") from None
            from torch.distributed.checkpoint.metadata import StorageMeta

            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = getattr(self, "load_id", None)
            return metadata

    return _SafeReader(str(directory))
