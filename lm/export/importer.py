"""``lab import``: a Hugging Face Llama folder into a run directory that lab samples, chats with and serves.

The folder needs ``config.json`` (a Llama lab's model can be: see
:func:`lm.export.llama.model_config_from_hf`), safetensors weights
(``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
pickled ``.bin`` files are refused, they run code when loaded) and a
byte-level BPE ``tokenizer.json``. The q/k rows go back from HF's halves to
lab's interleaved pairs, so a model exported with ``lab export --format hf``
comes back bit for bit. The run directory gets ``config.toml``,
``tokenizer/``, ``checkpoints/{latest,best}.pt`` (iteration 0) and a
``status.json`` of state ``done`` that says where the weights came from.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from lm.errors import ExportError
from lm.export.llama import lab_state_dict, model_config_from_hf

INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path.parent} has no {path.name}; {what}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path} does not hold a JSON object")
    return data


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s)."""
    from lm.export.weights import read_state_dict

    single = folder / "model.safetensors"
    if single.is_file():
        return read_state_dict(single)[0]
    if (folder / INDEX_FILE).is_file():
        index = _read_json(folder / INDEX_FILE, "")
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ExportError(f"{folder / INDEX_FILE} lists no weight files (no 'weight_map')")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(folder / shard)[0])
        return state
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    hint = (f" It has {', '.join(pickled)}: pickled weights run code when loaded, so lab does not read them; "
            "convert them first (in transformers: model.save_pretrained(DIR, safe_serialization=True))."
            if pickled else "")
    raise ExportError(f"{folder} has no model.safetensors (or {INDEX_FILE} with its shards).{hint}")


def import_hf(folder: str | os.PathLike, out: str | os.PathLike, *, force: bool = False, name: str | None = None):
    """Write the run directory ``out`` for the HF Llama folder ``folder``; returns (out, ModelConfig)."""
    from lm.config.loader import write_resolved
    from lm.config.schema import ExperimentConfig, TokenizerConfig, to_dict
    from lm.export.files import prepare_out_dir
    from lm.export.hf_tokenizer import read_hf_tokenizer
    from lm.model import TransformerLM, check_state_dict
    from lm.runs import CHECKPOINT_DIR, EVENTS_FILE, STATUS_FILE, TOKENIZER_DIR, atomic_write_json
    from lm.train.run_checkpoints import CHECKPOINT_FORMAT, CheckpointDir

    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; `lab import` reads a Hugging Face model folder "
                          "(config.json, model.safetensors, tokenizer.json)")
    hf_cfg = _read_json(folder / "config.json", "a Hugging Face model folder has one (LlamaConfig)")
    cfg = model_config_from_hf(hf_cfg, str(folder / "config.json"))
    state = lab_state_dict(read_hf_weights(folder), cfg, str(folder))
    with torch.device("meta"):
        shape_model = TransformerLM(cfg)  # shapes only, no memory
    try:
        check_state_dict(shape_model, state)
    except Exception as e:
        raise ExportError(f"{folder}: the weights do not fit the shape config.json gives: {e}") from None
    tokenizer = read_hf_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ExportError(f"{folder}: tokenizer.json has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                          f"{cfg.vocab_size}; they do not belong together")
    out = Path(out)
    if folder.resolve() == out.resolve():
        raise ExportError(f"--out {out} is the folder being imported; name a new folder for the run")
    out = prepare_out_dir(out, force, "run directory")
    exp = ExperimentConfig(name=name or out.name, description=f"imported from {folder.resolve()}", model=cfg,
                           tokenizer=TokenizerConfig(vocab_size=tokenizer.vocab_size,
                                                     special_tokens=tokenizer.special_tokens))
    write_resolved(exp, out / "config.toml")
    tokenizer.save(out / TOKENIZER_DIR)
    ckpt = {"format": CHECKPOINT_FORMAT, "model": state, "iteration": 0, "config": to_dict(exp),
            "tokenizer_fingerprint": tokenizer.fingerprint(), "imported_from": str(folder.resolve())}
    CheckpointDir(out / CHECKPOINT_DIR, keep_last=0).save(ckpt, 0, keep_step_file=False, best=True)
    now = time.time()
    message = f"imported from {folder.resolve()}"
    atomic_write_json(out / STATUS_FILE, {"state": "done", "step": 0, "total_steps": 0, "tokens": 0,
                                          "started": now, "updated": now, "exit_code": 0, "message": message})
    with open(out / EVENTS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "event", "event": "import", "step": 0, "time": 0.0, "wall": now,
                            "message": message}) + "\n")
    return out, cfg
