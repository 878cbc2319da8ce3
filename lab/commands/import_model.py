"""``lab import``: a Hugging Face Llama folder (for example one `lab export --format hf` wrote) as a run directory."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import", help="turn a Hugging Face Llama folder into a run directory",
        description="Read a LlamaForCausalLM folder (config.json, model.safetensors, a byte-level BPE "
                    "tokenizer.json) of a shape lab's model has, and write a run directory that lab sample, "
                    "lab chat and lab serve load. An export by `lab export --format hf` comes back bit for bit.")
    p.add_argument("hf_dir", metavar="HF_DIR", help="the Hugging Face model folder")
    p.add_argument("--out", "-o", required=True, metavar="RUN_DIR", help="run directory to write (new or empty)")
    p.add_argument("--name", default=None, help="experiment name in its config.toml (default: the folder name)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (same-named files replaced)")
    return p


def run(args) -> int:
    from lm.export.importer import import_hf

    out, cfg = import_hf(args.hf_dir, args.out, force=args.force, name=args.name)
    print(f"imported {args.hf_dir} (d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads, "
          f"vocab {cfg.vocab_size}) into {out}", file=sys.stderr)
    print(out)
    return 0
