"""Loading a trained model for decoding: :func:`load` is the one entry point.

A run directory (docs/run-directory.md) holds ``checkpoints/{best,latest}.pt``
(dicts ``{"format": "lm-checkpoint/1", "model": CS336 state dict, "config":
resolved experiment as a dict, ...}``) and ``tokenizer/``. :func:`load` turns
them into an eval-mode model on the chosen device (bf16 on CUDA), the tokenizer
and the experiment dict. The model is built on the meta device and the state
dict loaded with ``assign=True``: no initialisation that the checkpoint would
overwrite, no second copy of the weights. Other sources (an export folder)
plug in at :func:`load`. :func:`token_byte_table` and :func:`eos_token_id`
read what streaming text needs from a tokenizer.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from lm.checkpoint_file import check_tokenizer, torch_load
from lm.config.schema import ModelConfig
from lm.errors import CheckpointError, LabError

CHECKPOINT_FORMAT = "lm-checkpoint/1"
EOS_TEXT = "<|endoftext|>"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device of ``--device`` ('auto' picks cuda, then mps, then cpu): lm.device's one resolution."""
    from lm.device import resolve_device as resolve

    return resolve(device, "--device")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on CUDA (half the bytes to read per token) and fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise LabError(f"unknown dtype {dtype!r}; use 'auto', 'fp32', 'bf16' or 'fp16'")
    return DTYPES[name]


def model_config_from_dict(d: Any, source: str) -> ModelConfig:
    """The ModelConfig of a checkpoint's ``config["model"]``; CheckpointError naming bad keys."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source} has no model configuration (config['model'] is {type(d).__name__})")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"{source} has model settings this version does not know: {', '.join(unknown)}; "
                              "it was written by a newer lab")
    cfg = ModelConfig(**d)
    if problems := cfg.problems():
        raise CheckpointError(f"{source} has an invalid model configuration: " + "; ".join(problems))
    return cfg


def load_model(path: str | os.PathLike, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
               config: dict | None = None):
    """A checkpoint file -> (eval-mode TransformerLM, experiment dict, checkpoint dict without weights).

    ``config`` replaces the checkpoint's own config (for a bare CS336 checkpoint that has none).
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    obj = torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path} is not an lm checkpoint (it has no 'model' state dict)")
    fmt = obj.get("format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {fmt!r}; this version reads {CHECKPOINT_FORMAT!r}")
    exp = config if config is not None else obj.get("config")
    if not isinstance(exp, dict) or "model" not in exp:
        raise CheckpointError(f"{path} does not record the model configuration (no config['model']); "
                              "it cannot be loaded without knowing the model's shape")
    cfg = model_config_from_dict(exp["model"], str(path))
    # A checkpoint of a torch.compile'd model prefixes every name with _orig_mod.
    state = {k.removeprefix("_orig_mod."): v for k, v in obj.pop("model").items()}
    obj.pop("optimizer", None)
    return model_from_state(cfg, state, dev, dt), exp, obj


def model_from_state(cfg: ModelConfig, state: dict, device: torch.device, dtype: torch.dtype):
    """An eval-mode TransformerLM holding ``state`` (CS336 names), built on meta and loaded with assign."""
    from lm.model import TransformerLM, check_state_dict

    model = TransformerLM(cfg, device="meta", dtype=dtype)
    check_state_dict(model, state)
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor) or not v.is_floating_point())
    if bad:
        raise CheckpointError(f"state dict entries {', '.join(bad[:5])} are not floating-point tensors")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    model.tie_weights()  # assign replaced the shared table by two tensors
    model.init_buffers()  # RoPE tables: not in the state dict, still on meta
    return model.eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in directory ``path`` (vocab.json, merges.txt, special_tokens.json)."""
    try:
        from lm.tokenizer import Tokenizer
    except ImportError:  # the package may not re-export it
        from lm.tokenizer.tokenizer import Tokenizer

    path = Path(path)
    if not path.is_dir():
        parent = path.parent
        have = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
        raise CheckpointError(f"tokenizer directory {path} does not exist; {parent} holds: "
                              f"{', '.join(have) if have else 'nothing'}")
    return Tokenizer.from_dir(path)


@dataclasses.dataclass
class LoadedRun:
    """What :func:`load` loads: the model, its tokenizer and where they came from."""

    model: Any
    tokenizer: Any
    config: dict
    checkpoint_path: Path
    iteration: int | None


def load(path: str | os.PathLike, checkpoint: str | os.PathLike = "best", device: str | torch.device = "auto",
         dtype: str | torch.dtype = "auto") -> LoadedRun:
    """The model, tokenizer and config of a run directory (or an export folder), ready for decoding.

    ``checkpoint`` is ``best``, ``latest``, ``step_N`` or a path (absolute, relative to the
    current directory, or relative to the run directory). The model is in eval
    mode on ``device`` ('auto': cuda > mps > cpu) in ``dtype`` ('auto': bf16 on
    CUDA, fp32 elsewhere). Missing files raise CheckpointError listing what exists.
    """
    from lm.export import safetensors_dir
    from lm.runs import RunDir

    if (exported := safetensors_dir.load_if_exported(path, checkpoint, device, dtype)) is not None:
        return exported  # `lab export --format safetensors` output works wherever a run directory does
    run = RunDir(path)
    if not run.path.is_dir():
        raise CheckpointError(f"run directory {run.path} does not exist")
    ckpt_path = run.checkpoint(checkpoint)
    model, exp, rest = load_model(ckpt_path, device, dtype)
    tokenizer = load_tokenizer(run.tokenizer_dir)
    check_tokenizer(rest, tokenizer, ckpt_path, run.tokenizer_dir)
    n_tok = getattr(tokenizer, "vocab_size", None)
    if n_tok is not None and n_tok > model.cfg.vocab_size:
        raise CheckpointError(f"the tokenizer in {run.tokenizer_dir} has {n_tok} tokens but the model in "
                              f"{ckpt_path} only {model.cfg.vocab_size}; they do not belong together")
    iteration = rest.get("iteration")
    return LoadedRun(model, tokenizer, exp, Path(ckpt_path), int(iteration) if iteration is not None else None)


def token_byte_table(tokenizer, size: int) -> list[bytes]:
    """Bytes of every token id below ``size`` (ids the tokenizer lacks decode to nothing)."""
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict) and vocab and all(isinstance(v, bytes) for v in vocab.values()):
        return [vocab.get(i, b"") for i in range(size)]
    if hasattr(tokenizer, "decode_bytes"):
        n = getattr(tokenizer, "vocab_size", size)
        return [tokenizer.decode_bytes([i]) if i < n else b"" for i in range(size)]
    n = getattr(tokenizer, "vocab_size", size)
    return [tokenizer.decode([i]).encode("utf-8") if i < n else b"" for i in range(size)]


def eos_token_id(tokenizer) -> int | None:
    """Id of ``<|endoftext|>`` in ``tokenizer``, or None if it has no such token."""
    try:
        if hasattr(tokenizer, "special_token_id"):
            return int(tokenizer.special_token_id(EOS_TEXT))
        ids = tokenizer.encode(EOS_TEXT)
    except Exception:  # not a special token of this tokenizer: there is no EOS
        return None
    return ids[0] if len(ids) == 1 else None
