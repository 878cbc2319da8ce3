"""``--format hf``: a folder ``transformers`` loads with no custom code (``LlamaForCausalLM``).

Files: ``config.json`` (LlamaConfig), ``model.safetensors`` (HF names, q/k
rows permuted, see :mod:`lm.export.llama`), ``generation_config.json`` (EOS
and lab's default sampling), ``tokenizer.json`` + ``tokenizer_config.json``
(:mod:`lm.export.hf_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lm.export.files import write_json
from lm.export.hf_tokenizer import EOS, write_hf_tokenizer
from lm.export.llama import check_llama, hf_config, hf_state_dict
from lm.export.weights import write_state_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# lab sample's defaults (lab/commands/sample.py), so `generate(do_sample=True)` samples like lab.
SAMPLING = {"temperature": 0.8, "top_p": 0.95}


def eos_id(tokenizer) -> int | None:
    return tokenizer.special_token_id(EOS) if EOS in tokenizer.special_tokens else None


def write_hf(model, tokenizer, out: Path, dtype: torch.dtype, source: str) -> list[Path]:
    """Write the HF folder of an eval-mode lab model into ``out``; ExportError if Llama cannot hold it."""
    cfg = model.cfg
    check_llama(cfg, source)
    eos = eos_id(tokenizer)
    state = hf_state_dict(model.state_dict(), cfg)
    written = [write_state_dict(out / WEIGHTS_FILE, state, {"format": "pt"}, dtype)]
    written.append(write_json(out / CONFIG_FILE, hf_config(cfg, eos_token_id=eos, dtype=dtype)))
    gen = {"bos_token_id": eos, "eos_token_id": eos, "do_sample": True, **SAMPLING,
           "max_length": cfg.context_length}
    written.append(write_json(out / GENERATION_CONFIG_FILE, gen))
    written += write_hf_tokenizer(tokenizer, out, cfg.context_length)
    return written
