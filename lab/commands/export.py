"""``lab export``: a run's model as a Hugging Face Llama folder, an ONNX graph or lab's safetensors folder."""

from __future__ import annotations

import argparse
import sys
import time

FORMATS = ("hf", "onnx", "safetensors")  # lm.export.FORMATS (not imported: --help stays torch-free)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="write a run's model for transformers, onnxruntime, llama.cpp or sharing",
        description="Export a run's checkpoint. hf: a LlamaForCausalLM folder (config.json, model.safetensors, "
                    "tokenizer.json) that transformers loads with no custom code and llama.cpp's "
                    "convert_hf_to_gguf.py converts; onnx: the forward pass (token ids -> logits, dynamic batch "
                    "and length), checked with onnxruntime; safetensors: lab's own weights, config and tokenizer, "
                    "usable wherever a run directory is (lab sample/chat/serve). The run is not modified.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory (or an exported safetensors folder)")
    p.add_argument("--format", "-f", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write (new or empty)")
    p.add_argument("--checkpoint", default="best", metavar="WHICH",
                   help="best (default), latest, step_N or a checkpoint file")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="precision of the written weights (default fp32; onnx is fp32 only)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (same-named files replaced)")
    return p


def run(args) -> int:
    from lm.export import FORMAT_NAMES, export_run

    t0 = time.perf_counter()
    result = export_run(args.run_dir, args.format, args.out, checkpoint=args.checkpoint, dtype=args.dtype,
                        force=args.force)
    step = f"step {result.iteration}, " if result.iteration is not None else ""
    print(f"exported {result.checkpoint} ({step}{result.num_params / 1e6:.2f}M parameters) to {result.out} "
          f"({FORMAT_NAMES[args.format]}) in {time.perf_counter() - t0:.1f}s:", file=sys.stderr)
    for path in result.files:
        print(f"  {path}")
    print(NEXT_STEPS[args.format].format(out=result.out), file=sys.stderr)
    return 0


NEXT_STEPS = {
    "hf": "load it with: AutoModelForCausalLM.from_pretrained('{out}'), AutoTokenizer.from_pretrained('{out}')",
    "onnx": "run it with: onnxruntime.InferenceSession('{out}/model.onnx').run(['logits'], {{'input_ids': ids}})",
    "safetensors": "use it like a run: lab sample {out} --prompt 'The'",
}
