"""``lab sample``: continue a prompt with a trained run's model and print the text.

Shares the model loading and the sampling options with ``lab chat``
(:func:`add_model_args`, :func:`add_sampling_args`, :func:`load_generator`).
"""

from __future__ import annotations

import argparse
import sys
import time

DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "max_new_tokens": 256}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """RUN_DIR, --checkpoint, --device, --dtype."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<name>-<time>)")
    p.add_argument("--checkpoint", default=None, metavar="WHICH",
                   help="best, latest, step_N or a checkpoint file (default: best, else latest, else the "
                        "newest step checkpoint that exists)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="weights' precision; auto is bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="decode step by step without CUDA graphs (slower; for comparison or debugging)")
    add_kernels_arg(p)


def add_kernels_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernels", default="auto", choices=("auto", "triton", "torch"),
                   help="the decode step: auto is the Triton step on CUDA (fastest; a seed gives the same text "
                        "with one slot or many, so `lab sample` matches `lab serve`), torch elsewhere; "
                        "triton insists and says why when it cannot run")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """--temperature, --top-p, --top-k, --max-tokens, --seed, --stop."""
    d = DEFAULTS
    p.add_argument("--temperature", "-t", type=float, default=d["temperature"], metavar="T",
                   help=f"divides the logits; 0 = greedy (default {d['temperature']})")
    p.add_argument("--top-p", type=float, default=d["top_p"], metavar="P",
                   help=f"nucleus sampling: keep the most likely tokens up to probability P; 1 = all "
                        f"(default {d['top_p']})")
    p.add_argument("--top-k", type=int, default=d["top_k"], metavar="K",
                   help="keep only the K most likely tokens; 0 = no limit (default 0)")
    p.add_argument("--max-tokens", "-n", type=int, default=d["max_new_tokens"], metavar="N",
                   help=f"generate at most N tokens (default {d['max_new_tokens']})")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible text")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the text contains TEXT (not printed); repeatable")


def sampling_params(args):
    """SamplingParams from the parsed options (LabError on invalid values)."""
    from lm.decode import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_new_tokens=args.max_tokens, seed=args.seed, stop=tuple(args.stop)).validate()


def checkpoint_choice(run_dir, which: str | None, log) -> str:
    """The checkpoint to load: the one named, else the newest that exists (best, else latest, else the
    newest step_N), saying which when it is not ``best`` (a run stopped before its first evaluation has none)."""
    if which is not None:
        return which
    from lm.runs import RunDir

    found = RunDir(run_dir).default_checkpoint()
    if found is None:
        return "best"  # an export folder, or a run without checkpoints: the loader explains which
    if found != "best":
        print(f"{run_dir} has no best checkpoint yet: using {found}", file=log, flush=True)
    return found


def load_generator(args, log=None):
    """Load the run named on the command line; returns (Generator, LoadedRun) and says what was loaded."""
    from lm.decode import Generator, load

    log = log or sys.stderr
    t0 = time.perf_counter()
    loaded = load(args.run_dir, checkpoint_choice(args.run_dir, args.checkpoint, log), args.device, args.dtype)
    gen = Generator(loaded.model, loaded.tokenizer, cuda_graphs=False if args.no_cuda_graphs else None,
                    kernels=args.kernels)
    p = next(loaded.model.parameters())
    step = f"step {loaded.iteration}, " if loaded.iteration is not None else ""
    print(f"loaded {loaded.checkpoint_path} ({step}{loaded.model.num_params() / 1e6:.2f}M parameters, "
          f"{p.device.type} {str(p.dtype).removeprefix('torch.')}) in {time.perf_counter() - t0:.1f}s",
          file=log, flush=True)
    return gen, loaded


def stats_line(result) -> str:
    """'[42 tokens, 310.5 tokens/s, first after 12 ms, finished: eos]', plus what happened on the way
    (a context overflow is said here rather than in the middle of the text)."""
    notes = ""
    for msg in dict.fromkeys(result.messages):
        count = result.messages.count(msg)
        notes += f"; {msg}" + (f" ({count} times)" if count > 1 else "")
    return (f"[{result.new_tokens} tokens, {result.tokens_per_s:.1f} tokens/s, "
            f"first after {result.first_token_seconds * 1000:.0f} ms, finished: {result.finish_reason}{notes}]")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sample", help="continue a prompt with a trained model",
        description="Load a run's checkpoint and print the prompt followed by the model's continuation, "
                    "streamed as it is generated. Statistics go to stderr.")
    add_model_args(p)
    p.add_argument("--prompt", "-p", default="", help="text to continue (default: start a new document)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="independent samples of the same prompt (seeds S, S+1, ... with --seed)")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    add_sampling_args(p)
    return p


def run(args) -> int:
    import dataclasses

    from lm.errors import LabError

    params = sampling_params(args)
    if args.num_samples < 1:
        raise LabError(f"--num-samples must be at least 1, got {args.num_samples}")
    gen, _ = load_generator(args)
    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write("\n")  # a blank line between samples
        if not args.no_echo:
            out.write(args.prompt)
        seed = None if params.seed is None else params.seed + i
        stream = gen.stream(args.prompt, dataclasses.replace(params, seed=seed))
        for item in stream:
            if item.text:
                out.write(item.text)
                out.flush()
        out.write("\n")
        out.flush()
        print(stats_line(stream.result), file=sys.stderr, flush=True)
    return 0
