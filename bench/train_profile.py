"""Where a training step's GPU time goes: lab's step against the plain baseline of bench/train_mfu.py.

Profiles a few steady-state steps of each (after compile and warm-up) with
torch.profiler and prints, per implementation, the GPU time per step grouped
into matmuls, attention, the optimizer, the loss and everything else, and the
kernels that take the most time.

    python bench/train_profile.py --size small [--top 25]
    python bench/train_profile.py --size 2.7B --no-baseline     # lab only (the baseline's compile is slow there)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train_mfu  # noqa: E402  (bench/ is this script's directory)
from lm.config.schema import PRESETS  # noqa: E402

GROUPS = (("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),  # before matmul: cuDNN's names say sm90
          ("matmul", ("gemm", "sm90_xmma", "cutlass", "nvjet", "ampere_", "sm80_", "cublas")),
          ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel", "lerp")),
          ("loss", ("nll", "log_softmax", "cross_entropy", "softmax")))


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def profile(step, steps: int) -> tuple[dict[str, float], list[tuple[str, float, int]]]:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name]
            k[0] += ev.device_time / 1e3 / steps  # ms per step
            k[1] += 1
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        groups[group_of(name)] += ms
    top = sorted(((n, ms, c // steps) for n, (ms, c) in kernels.items()), key=lambda r: -r[1])
    return groups, top


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--checkpointing", default="auto", choices=("auto", "none", "full", "selective", "weights"),
                    help="lab's training.activation_checkpointing")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/train_profile.py needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    from lm.device import configure_backends

    configure_backends(device)
    cfg = dataclasses.replace(PRESETS[args.size], vocab_size=50304, context_length=1024)
    batch = args.batch or train_mfu.CS336.get(args.size, 16)
    cases = [("lab", lambda: train_mfu.build_lab(cfg, batch, device, checkpointing=args.checkpointing))]
    if not args.no_baseline:
        cases.append(("baseline", lambda: train_mfu.build_baseline(cfg, batch, device)))
    for name, builder in cases:
        built = builder()
        groups, top = profile(built[0], args.steps)
        total = sum(groups.values())
        print(f"\n== {name}, {args.size}, batch {batch}: GPU kernels {total:.1f} ms per step: "
              + ", ".join(f"{g} {ms:.1f}" for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])), flush=True)
        for kname, ms, calls in top[:args.top]:
            print(f"  {ms:7.2f} ms  x{calls:<4} {group_of(kname):>9}  {kname[:110]}")
        del built
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
