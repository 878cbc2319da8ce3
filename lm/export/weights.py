"""State dicts as safetensors files: no pickle, so loading one runs no code.

safetensors refuses two names for one tensor; a tied model's ``lm_head.weight``
is the embedding, so it is stored once and named in the metadata
(``"aliases"``: ``{"lm_head.weight": "token_embeddings.weight"}``) and
restored on reading. Writes are atomic (a reader never sees half a file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lm.errors import CheckpointError

ALIASES_KEY = "aliases"


def state_dict_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     dtype: torch.dtype | None = None) -> bytes:
    """A state dict (optionally cast to ``dtype``) as the bytes of a .safetensors file."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.device)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach()
        tensors[name] = (t if dtype is None else t.to(dtype)).to("cpu").contiguous()
    meta = dict(metadata or {})
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases)
    return save(tensors, metadata=meta or None)


def write_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``state`` to ``path`` as safetensors, atomically."""
    from lm.export.files import atomic_write_bytes

    return atomic_write_bytes(path, state_dict_bytes(state, metadata, dtype))


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict with aliases restored, metadata) of a .safetensors file; CheckpointError if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads(meta.pop(ALIASES_KEY, "{}"))
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        raise CheckpointError(f"weights file {path} cannot be read as safetensors ({type(e).__name__}: {e}); "
                              "it may be truncated or not a safetensors file") from None
    for name, target in aliases.items():
        if target not in state:
            raise CheckpointError(f"weights file {path} says {name} is {target}, which it does not hold")
        state[name] = state[target]
    return state, meta
