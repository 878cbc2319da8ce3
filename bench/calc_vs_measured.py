"""The calculator against a real GPU: peak memory and step time, predicted vs measured.

For the CS336 presets (small, medium, large, xl, 2.7B) at context 512, in bf16
autocast and fp32 (TF32 matmuls, as the trainer runs it), this times a full
training step (forward, fp32 cross-entropy, backward, gradient clipping,
lm.optim.AdamW) and forward+backward alone, measures the step's peak
``torch.cuda.max_memory_allocated``, counts FLOPs with FlopCounterMode, and puts
the calculator's predictions next to them. Targets: memory within 10%, step
time within 25%. It also prints the bf16-over-fp32 speed-up per size and
calibration: the matmul efficiency, bandwidth efficiency and launch overhead
implied by the measurements (paste them into ``--efficiency`` or the device
profile). Needs only torch, numpy, einx and regex (no rich).

    python3 bench/calc_vs_measured.py                 # about 3-5 minutes on an H100
    python3 bench/calc_vs_measured.py --compile --sizes small,medium   # also compiled (~1 min per model)
    python3 bench/calc_vs_measured.py --sizes small,medium --dtypes bf16

Writes calc_vs_measured.json into $OUT when it is set (or to --json FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from lm.bench.compare import plain_table  # noqa: E402
from lm.bench.harness import BenchCase, environment, run_case  # noqa: E402
from lm.bench.steps import device_name  # noqa: E402
from lm.calc import Efficiency, count_params  # noqa: E402
from lm.calc.devices import device_for_torch_name  # noqa: E402
from lm.config.schema import ModelConfig  # noqa: E402

BATCH = {"small": 8, "medium": 8, "large": 8, "xl": 4, "2.7B": 2}
MEMORY_TARGET, TIME_TARGET = 0.10, 0.25


def measure_matmul_peak(dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """FLOP/s of a large square matmul (the device's practical peak)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def measure_bandwidth(nbytes: int = 2 << 30, iters: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * nbytes * iters / (time.perf_counter() - t0)


def calibration(rows: list[dict], eff: Efficiency) -> dict:
    """Efficiency factors that would make the predictions match the measurements.

    matmul: matmul FLOPs / (peak x (measured forward+backward - predicted non-matmul time)), median
    over the three largest models (compute-bound). bandwidth: the optimizer's bytes / (bandwidth x
    measured optimizer time), median over the two largest (memory-bound). launch overhead: the
    smallest model's measured forward time / its forward launches (exact when it is launch-bound,
    an upper bound otherwise), and the backward's per-launch cost relative to it.
    """
    out: dict = {}
    mm, bw = [], []
    done = sorted((r for r in rows if not r.get("error")), key=lambda r: r["params"])
    for r in done:
        p = r["prediction_detail"]
        other = sum(o["time_s"] for o in p["ops"] if o["kind"] == "elementwise")
        mm_flops = sum(o["flops"] for o in p["ops"] if o["kind"] in ("matmul", "attention"))
        spare = r["measured"]["forward_backward_s"] - other
        if spare > 0:
            mm.append(mm_flops / (p["peak_tflops"] * 1e12 * spare))
        opt_bytes = sum(o["bytes"] for o in p["ops"] if o["group"] == "optimizer")
        opt_meas = r["measured"]["step_s"] - r["measured"]["forward_backward_s"]
        if opt_meas > 0:
            bw.append(opt_bytes / (p["bandwidth"] * opt_meas))
    if mm:
        out["matmul"] = round(statistics.median(mm[-3:]), 3)
    if bw:
        out["bandwidth"] = round(statistics.median(bw[-2:]), 3)
    if done:
        small = done[0]
        ops = [o for o in small["prediction_detail"]["ops"] if o["group"] != "optimizer"]
        fwd_equiv = sum(o["forward_launches"] for o in ops)
        bwd_launches = sum(o["backward_launches"] for o in ops)
        fwd = small["measured"]["forward_s"]
        bwd = small["measured"]["forward_backward_s"] - fwd
        launch_us = fwd / fwd_equiv * 1e6
        out["launch_overhead_us_upper_bound"] = round(launch_us, 2)
        out["backward_launch_upper_bound"] = round(bwd / bwd_launches * 1e6 / launch_us, 3)
    out["current"] = {"matmul": eff.matmul, "bandwidth": eff.bandwidth, "attention": eff.attention,
                      "backward_launch": eff.backward_launch}
    return out


def _ratios(res) -> dict:
    """measured / predicted for step time, forward+backward, optimizer and peak memory."""
    if res.error or not res.prediction:
        return {}
    p, t = res.prediction, res.times
    out = {"step": t["step"].median_s / p["step_s"],
           "forward_backward": t["forward_backward"].median_s / p["forward_backward_s"],
           "forward": t["forward"].median_s / p["forward_s"],
           "optimizer": (t["step"].median_s - t["forward_backward"].median_s) / p["optimizer_s"]}
    if res.peak_memory:
        out["peak_memory"] = res.peak_memory / p["peak_memory"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large,xl,2.7B")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--context-length", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", default="", help="override batch sizes, e.g. small=16,xl=2")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only as a smoke test of this script")
    ap.add_argument("--no-tf32", action="store_true",
                    help="run fp32 matmuls in full fp32 (the trainer uses TF32; public bf16-vs-fp32 figures often do not)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--json", metavar="FILE", help="write the JSON here when $OUT is not set")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("calc_vs_measured.py needs a CUDA GPU (or --device cpu for a smoke test)")
        return 2
    batch = dict(BATCH)
    for item in filter(None, args.batch.split(",")):
        k, v = item.split("=")
        batch[k] = int(v)
    eff = Efficiency()
    profile, fallback = device_for_torch_name(device_name(device))
    env = environment(device)
    print(f"device: {env['device']} -> profile {profile.key}{' (fallback!)' if fallback else ''}; "
          f"torch {env['torch']}, CUDA {env.get('cuda')}")
    peak_bf16 = peak_tf32 = bandwidth = None
    if device.type == "cuda":
        peak_bf16 = measure_matmul_peak(torch.bfloat16)
        torch.backends.cuda.matmul.allow_tf32 = True
        peak_tf32 = measure_matmul_peak(torch.float32)
        bandwidth = measure_bandwidth()
        print(f"measured now: bf16 matmul {peak_bf16 / 1e12:.0f} TFLOP/s (profile {profile.peak('bf16').value:.0f}), "
              f"tf32 matmul {peak_tf32 / 1e12:.0f} TFLOP/s (profile {profile.peak('fp32').value:.0f}), "
              f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (profile {profile.bandwidth_gbs.value:.0f})")
        torch.cuda.empty_cache()

    rows = []
    compiles = [False, True] if args.compile else [False]
    t_start = time.time()
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        cfg = ModelConfig.from_name(size)
        for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            for comp in compiles:
                case = BenchCase(size, cfg, batch.get(size, 4), min(args.context_length, cfg.context_length), dt, comp)
                res = run_case(case, device, warmup=args.warmup, repeats=args.repeats, min_block_s=0.0,
                               flops=not comp, with_prediction=True, tf32=not args.no_tf32)
                row = {"size": size, "dtype": dt, "compile": comp, "batch": case.batch_size,
                       "params": count_params(cfg).total, "error": res.error,
                       "result": res.to_dict(), "ratios": _ratios(res), "prediction_detail": res.prediction}
                if not res.error:
                    row["measured"] = {f"{m}_s": res.times[m].median_s for m in res.times}
                    row["measured"]["spread"] = {m: res.times[m].spread for m in res.times}
                    row["measured"]["peak_memory"] = res.peak_memory
                    row["measured"]["flops"] = res.measured_flops
                    row["measured"]["mfu"] = res.mfu
                rows.append(row)
                pm = res.prediction
                if res.error:
                    print(f"{size:>6} {dt} {'compiled' if comp else 'eager'}: {res.error}")
                else:
                    print(f"{size:>6} {dt} {'compiled' if comp else 'eager'} b{case.batch_size}: step "
                          f"{res.times['step'].median_s * 1e3:.1f} ms (pred {pm['step_s'] * 1e3:.1f}), peak "
                          f"{res.peak_memory / 2**30:.2f} GiB (pred {pm['peak_memory'] / 2**30:.2f}) "
                          f"[{time.time() - t_start:.0f}s]", flush=True)

    table = []
    ok_mem = ok_time = total = 0
    for r in rows:
        if r["error"]:
            table.append([r["size"], r["dtype"], "compiled" if r["compile"] else "eager", str(r["batch"]),
                          r["error"]] + [""] * 8)
            continue
        m, p = r["measured"], r["result"]["prediction"]
        mem_ratio = m["peak_memory"] / p["peak_memory"]
        step_ratio = m["step_s"] / p["step_s"]
        total += 1
        ok_mem += abs(mem_ratio - 1) <= MEMORY_TARGET
        ok_time += abs(step_ratio - 1) <= TIME_TARGET
        flops_ratio = f"{m['flops'] / p['flop_counter_flops']:.3f}" if m.get("flops") else "-"
        table.append([r["size"], r["dtype"], "compiled" if r["compile"] else "eager", str(r["batch"]),
                      f"{m['peak_memory'] / 2**30:.2f}", f"{p['peak_memory'] / 2**30:.2f}", f"{mem_ratio:.3f}",
                      f"{m['step_s'] * 1e3:.1f}", f"{p['step_s'] * 1e3:.1f}", f"{step_ratio:.2f}",
                      f"{(m['step_s'] - m['forward_backward_s']) * 1e3:.1f}/{p['optimizer_s'] * 1e3:.1f}",
                      flops_ratio, f"{m['mfu']:.1%}"])
    print()
    print(plain_table(["size", "dtype", "mode", "batch", "mem GiB", "pred", "mem ratio", "step ms", "pred",
                       "step ratio", "optim ms meas/pred", "FLOPs ratio", "MFU"], table))
    print(f"\nmemory within {MEMORY_TARGET:.0%}: {ok_mem}/{total}; step time within {TIME_TARGET:.0%}: "
          f"{ok_time}/{total}")

    speedups = []
    for size in dict.fromkeys(r["size"] for r in rows):
        for comp in compiles:
            by = {r["dtype"]: r for r in rows if r["size"] == size and r["compile"] == comp and not r["error"]}
            if "bf16" in by and "fp32" in by:
                s = by["fp32"]["measured"]["step_s"] / by["bf16"]["measured"]["step_s"]
                sp = by["fp32"]["result"]["prediction"]["step_s"] / by["bf16"]["result"]["prediction"]["step_s"]
                speedups.append([size, "compiled" if comp else "eager", f"{s:.2f}x", f"{sp:.2f}x"])
    if speedups:
        print(f"\nbf16 autocast over fp32 ({'full fp32' if args.no_tf32 else 'TF32'} matmuls) step time:")
        print(plain_table(["size", "mode", "measured", "predicted"], speedups))

    cal = calibration([r for r in rows if not r["compile"] and r["dtype"] == "bf16"], eff)
    print(f"\ncalibration from the bf16 eager runs: {json.dumps(cal)}")
    print("apply with: lab calc ... --efficiency matmul=<matmul> --efficiency bandwidth=<bandwidth>; "
          "launch_overhead_us goes into the device profile")

    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "calc_vs_measured.json"
    elif args.json:
        path = Path(args.json)
    else:
        print("set $OUT or pass --json FILE to keep the numbers")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": env, "measured_peaks": {"bf16_matmul": peak_bf16,
                                                                      "tf32_matmul": peak_tf32,
                                                                      "copy_bandwidth": bandwidth},
                                "rows": rows, "speedups": speedups, "calibration": cal}, indent=1, default=str))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
