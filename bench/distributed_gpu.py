"""One GPU through torchrun's launcher against a plain run: the code path of multi-GPU training.

Runs the same TOML four ways, each a fresh `lab run` process:

  plain        lab run x.toml
  launcher     lab run x.toml --gpus 1                         (torchrun; one process is a plain run)
  ddp          lab run x.toml --gpus 1 --set training.parallel="ddp"   (NCCL process group, DDP wrap)
  fsdp         lab run x.toml --gpus 1 --set training.parallel="fsdp"  (FSDP2, bf16 mixed-precision policy,
                                                                        DCP checkpoint + consolidated latest.pt)

and prints each one's wall time, tokens/s and MFU (steady state: the last train record), the largest
per-step loss difference against the plain run and the final validation loss. `launcher` must equal
`plain` to the run-to-run noise of the GPU's kernels (`again`, the plain run repeated); `ddp` to bf16 noise; `fsdp` differs by its precision policy (bf16 weights in the
forward instead of autocast). Usage (on a CUDA machine):

  python bench/distributed_gpu.py [--steps 300] [--preset small] [--out DIR] [--deterministic]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TOML = """name = "dist-gpu"
runs_dir = "{runs}"
[data]
source = "builtin"
max_bytes = 4_000_000
[tokenizer]
vocab_size = 2048
train_bytes = 2_000_000
[model]
preset = "{preset}"
vocab_size = 2048
context_length = 512
[training]
steps = {steps}
batch_size = 16
log_every = {log_every}
[schedule]
warmup_steps = {warmup}
[eval]
every = 0
batches = 4
[checkpoint]
every = 0
"""


def train(exp: Path, run_dir: Path, *extra: str) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lab", "run", str(exp), "--run-dir", str(run_dir), *extra],
                         cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stderr[-2000:]


def records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind] if path.exists() else []


def final_weights(run_dir: Path) -> dict | None:
    """The consolidated final weights (latest.pt; FSDP2 runs write it too), or None if there are none."""
    from lm.checkpoint_file import torch_load

    path = run_dir / "checkpoints" / "latest.pt"
    return torch_load(path)["model"] if path.exists() else None


def weight_diff(a: dict | None, b: dict | None) -> float:
    """The largest elementwise |a - b| over every tensor (0.0 = bitwise equal), NaN if either is missing."""
    if a is None or b is None or a.keys() != b.keys():
        return float("nan")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temp folder)")
    ap.add_argument("--device", default=None, help="e.g. cpu, to try the script without a GPU (gloo)")
    ap.add_argument("--variants", default="plain,again,launcher,ddp,fsdp", help="which runs, comma-separated")
    ap.add_argument("--deterministic", action="store_true",
                    help="every run with training.deterministic = true: then again and launcher must equal "
                         "plain bitwise (losses and final weights)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="lab-dist-"))
    out.mkdir(parents=True, exist_ok=True)
    exp = out / "dist-gpu.toml"
    exp.write_text(TOML.format(runs=out / "runs", preset=args.preset, steps=args.steps,
                               log_every=max(1, min(25, args.steps // 4)), warmup=min(50, args.steps)))
    # "again" repeats the plain run: CUDA kernels with atomic adds (the embedding's backward) are not
    # bitwise deterministic, so plain vs again is the floor any other variant is compared with.
    variants = {"plain": (), "again": (), "launcher": ("--gpus", "1"),
                "ddp": ("--gpus", "1", "--set", 'training.parallel="ddp"'),
                "fsdp": ("--gpus", "1", "--set", 'training.parallel="fsdp"')}
    variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    if args.device:
        variants = {k: (*v, "--device", args.device) for k, v in variants.items()}
    if args.deterministic:
        variants = {k: (*v, "--set", "training.deterministic=true") for k, v in variants.items()}
    results = {}
    for name, extra in variants.items():
        wall, code, err = train(exp, out / name, *extra)
        results[name] = (wall, code, err)
        print(f"{name}: exit {code}, {wall:.1f} s", flush=True)
        if code:
            print(err, file=sys.stderr)
    base = {r["step"]: r["loss"] for r in records(out / "plain", "train")}
    base_weights = final_weights(out / "plain")
    print(f"\n{'variant':<10}{'exit':>5}{'wall s':>9}{'tok/s':>12}{'MFU':>8}{'max |dloss|':>13}{'max |dw|':>10}"
          f"{'val loss':>10}{'world':>7} parallel")
    for name, (wall, code, _) in results.items():
        train_recs = records(out / name, "train")
        last = train_recs[-1] if train_recs else {}
        losses = {r["step"]: r["loss"] for r in train_recs}
        common = sorted(set(base) & set(losses))
        diff = max((abs(base[s] - losses[s]) for s in common), default=float("nan"))
        ev = records(out / name, "eval")
        status = json.loads((out / name / "status.json").read_text()) if (out / name / "status.json").exists() else {}
        mfu = last.get("mfu")
        print(f"{name:<10}{code:>5}{wall:>9.1f}{last.get('tokens_per_s', float('nan')):>12,.0f}"
              f"{(mfu or float('nan')):>8.1%}{diff:>13.2e}{weight_diff(base_weights, final_weights(out / name)):>10.2e}"
              f"{(ev[-1]['val_loss'] if ev else float('nan')):>10.4f}"
              f"{status.get('world_size', 1):>7} {status.get('parallel', 'none')}")
    print(f"\nruns in {out}; torch {__import__('torch').__version__}, "
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'all GPUs visible')}")
    return 0 if all(code == 0 for _, code, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
