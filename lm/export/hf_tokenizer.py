"""lab's byte-level BPE as a Hugging Face ``tokenizer.json`` (and back), written by hand.

The JSON is the ``tokenizers`` library's serialisation of the same algorithm
lab runs: special tokens split out first (``added_tokens``, longest match),
GPT-2's pre-tokenizer regex (the ``ByteLevel`` pre-tokenizer with
``use_regex``), then BPE by merge rank over GPT-2's byte-to-unicode alphabet,
and the ``ByteLevel`` decoder. Writing it needs no library; tests load it with
``tokenizers`` and ``transformers`` and compare ids with lab's on real text.
``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` so that
``AutoTokenizer`` reads ``tokenizer.json`` as is.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm.errors import ExportError
from lm.tokenizer.byte_unicode import bytes_to_printable, printable_to_bytes

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
EOS = "<|endoftext|>"
_BYTE_LEVEL = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _vocab_entries(tokenizer) -> dict[str, int]:
    """{printable token: id} with special tokens as themselves; ExportError if two ids print alike."""
    specials = {t.encode("utf-8"): t for t in tokenizer.special_tokens}
    entries: dict[str, int] = {}
    for idx in sorted(tokenizer.vocab):
        raw = tokenizer.vocab[idx]
        token = specials[raw] if raw in specials else bytes_to_printable(raw)
        if token in entries:
            raise ExportError(f"the tokenizer has two ids ({entries[token]} and {idx}) for {token!r}; a Hugging Face "
                              "vocabulary maps each token to one id")
        entries[token] = idx
    return entries


def tokenizer_json(tokenizer) -> dict:
    """The ``tokenizer.json`` of a lab :class:`~lm.tokenizer.Tokenizer`."""
    vocab = _vocab_entries(tokenizer)
    added = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in tokenizer.special_tokens]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": sorted(added, key=lambda a: a["id"]),
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **_BYTE_LEVEL},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **_BYTE_LEVEL},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            # "a b" strings, not pairs: every tokenizers version and llama.cpp's converter read them, and a
            # byte-level token never holds a plain space (it prints as Ġ).
            "merges": [f"{bytes_to_printable(a)} {bytes_to_printable(b)}" for a, b in tokenizer.merges],
        },
    }


def tokenizer_config(tokenizer, context_length: int) -> dict:
    """``tokenizer_config.json``: the fast tokenizer class, EOS (= BOS, as in GPT-2) and no added BOS."""
    specials = tokenizer.special_tokens
    vocab = _vocab_entries(tokenizer)
    eos = EOS if EOS in specials else None
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "bos_token": eos,
        "eos_token": eos,
        "unk_token": None,
        "added_tokens_decoder": {str(vocab[t]): {"content": t, "single_word": False, "lstrip": False,
                                                "rstrip": False, "normalized": False, "special": True}
                                 for t in specials},
    }
    others = [t for t in specials if t != eos]
    if others:
        cfg["additional_special_tokens"] = others
    return cfg


def write_hf_tokenizer(tokenizer, out: Path, context_length: int) -> list[Path]:
    """Write tokenizer.json and tokenizer_config.json into ``out``; returns their paths."""
    from lm.export.files import write_json

    return [write_json(out / TOKENIZER_JSON, tokenizer_json(tokenizer)),
            write_json(out / TOKENIZER_CONFIG, tokenizer_config(tokenizer, context_length))]


def read_hf_tokenizer(folder: Path):
    """The lab Tokenizer of a byte-level BPE ``tokenizer.json``; ExportError for anything else."""
    from lm.tokenizer import Tokenizer

    path = folder / TOKENIZER_JSON
    if not path.is_file():
        raise ExportError(f"{folder} has no {TOKENIZER_JSON}; lab needs the tokenizer to import a model "
                          "(a byte-level BPE like GPT-2's, as `lab export --format hf` writes)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"{path} cannot be read as JSON ({e})") from None
    model = data.get("model") if isinstance(data, dict) else None
    pre = (data or {}).get("pre_tokenizer") if isinstance(data, dict) else None
    problems = []
    if not isinstance(model, dict) or model.get("type") != "BPE":
        problems.append(f"model.type is {model.get('type') if isinstance(model, dict) else None!r}, not 'BPE'")
    if not (isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False)):
        problems.append("pre_tokenizer is not ByteLevel with GPT-2's regex and no added prefix space")
    if isinstance(data, dict) and data.get("normalizer") is not None:
        problems.append("it has a normalizer (lab's tokenizer reads text as it is)")
    if problems:
        raise ExportError(f"{path} is not a byte-level BPE tokenizer lab can import: " + "; ".join(problems))
    specials = [a["content"] for a in data.get("added_tokens", []) if a.get("special", True)]
    vocab: dict[int, bytes] = {}
    for token, idx in model.get("vocab", {}).items():
        raw = token.encode("utf-8") if token in specials else printable_to_bytes(token)
        if raw is None:
            raise ExportError(f"{path}: token {token!r} (id {idx}) is not in GPT-2's byte-to-unicode alphabet")
        vocab[int(idx)] = raw
    for a in data.get("added_tokens", []):
        vocab.setdefault(int(a["id"]), a["content"].encode("utf-8"))
    merges = []
    for i, m in enumerate(model.get("merges", [])):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        pair = [printable_to_bytes(p) for p in parts] if len(parts) == 2 else [None]
        if None in pair:
            raise ExportError(f"{path}: merge #{i} {m!r} is not two byte-level tokens")
        merges.append((pair[0], pair[1]))
    try:
        return Tokenizer(vocab, merges, specials)
    except Exception as e:
        raise ExportError(f"{path} does not make a valid byte-level BPE tokenizer: {e}") from None
