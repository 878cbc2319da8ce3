"""``--format safetensors``: lab's own model in a folder that loads without pickle.

Layout::

    config.json        {"format": "lab-safetensors/1", "model": {ModelConfig}, "experiment": {...},
                        "iteration": N, "source": {"run": ..., "checkpoint": ...}}
    model.safetensors  the CS336-named state dict (a tied head stored once, see lm.export.weights)
    tokenizer/         vocab.json, merges.txt, special_tokens.json (as in a run directory)

Any lab model fits, whatever its switches. :func:`load` is what the model
loader calls when it is given such a folder instead of a run directory, so
``lab sample``, ``lab chat`` and ``lab serve`` take either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lm.config.schema import to_dict
from lm.errors import CheckpointError
from lm.export.files import write_json
from lm.export.weights import read_state_dict, write_state_dict

FORMAT = "lab-safetensors/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def write(model, tokenizer, out: Path, dtype: torch.dtype, *, experiment: dict, iteration: int | None,
          source: dict) -> list[Path]:
    """Write an eval-mode lab model, its tokenizer and config into ``out``."""
    written = [write_state_dict(out / WEIGHTS_FILE, model.state_dict(), {"format": "pt", "lab": FORMAT}, dtype)]
    cfg = {"format": FORMAT, "model": to_dict(model.cfg), "experiment": experiment, "iteration": iteration,
           "dtype": str(dtype).removeprefix("torch."), "tokenizer_fingerprint": tokenizer.fingerprint(),
           "source": source}
    written.append(write_json(out / CONFIG_FILE, cfg))
    tokenizer.save(out / TOKENIZER_DIR)
    written.append(out / TOKENIZER_DIR)
    return written


def _config_json(path: str | os.PathLike) -> dict | None:
    cfg = Path(path) / CONFIG_FILE
    try:
        data = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`write` (its config.json says so)."""
    return (_config_json(path) or {}).get("format") == FORMAT


def load_if_exported(path: str | os.PathLike, checkpoint="best", device="auto", dtype="auto"):
    """What the model loader calls first: :func:`load` for an export folder, None for anything else.

    A folder of another export format gets a CheckpointError saying what to do with it instead.
    """
    data = _config_json(path)
    if data is None:
        return None
    if data.get("format") == FORMAT:
        return load(path, checkpoint, device, dtype)
    if data.get("format") == "lab-onnx/1":
        raise CheckpointError(f"{path} is an ONNX export (model.onnx), which onnxruntime runs; lab loads a run "
                              "directory or a `lab export --format safetensors` folder")
    if "model_type" in data and not (Path(path) / "config.toml").exists():
        raise CheckpointError(f"{path} is a Hugging Face model folder; `lab import {path} --out RUN_DIR` makes "
                              "a run directory of it (Llama models of a shape lab's model has)")
    return None


def load(path: str | os.PathLike, checkpoint: str | os.PathLike = "best", device="auto", dtype="auto"):
    """The :class:`lm.decode.LoadedRun` of an export folder (eval mode, on ``device`` in ``dtype``).

    The folder holds one set of weights, so ``checkpoint`` may only be ``best`` or ``latest``.
    """
    from lm.checkpoint_file import check_tokenizer
    from lm.decode.load import (LoadedRun, load_tokenizer, model_config_from_dict, model_from_state, resolve_device,
                                resolve_dtype)

    path = Path(path)
    if str(checkpoint) not in ("best", "latest"):
        raise CheckpointError(f"{path} is an exported model with one set of weights; --checkpoint "
                              f"{str(checkpoint)!r} only applies to a run directory (use best or latest)")
    try:
        cfg_json = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} cannot be read ({e})") from None
    model_cfg = model_config_from_dict(cfg_json.get("model"), str(path / CONFIG_FILE))
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    state, _ = read_state_dict(path / WEIGHTS_FILE)
    model = model_from_state(model_cfg, state, dev, dt)
    tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    check_tokenizer(cfg_json, tokenizer, path / WEIGHTS_FILE, path / TOKENIZER_DIR)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise CheckpointError(f"the tokenizer in {path / TOKENIZER_DIR} has {tokenizer.vocab_size} tokens but the "
                              f"model only {model_cfg.vocab_size}; they do not belong together")
    experiment = cfg_json.get("experiment") or {"model": to_dict(model_cfg)}
    iteration = cfg_json.get("iteration")
    return LoadedRun(model.eval(), tokenizer, experiment, path / WEIGHTS_FILE,
                     int(iteration) if isinstance(iteration, int) else None)
