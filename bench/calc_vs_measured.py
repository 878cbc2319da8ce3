"""The calculator against a real GPU: peak memory and step time, predicted vs measured.

For the CS336 presets (small, medium, large, xl, 2.7B) at context 512, in bf16
autocast and fp32 (TF32 matmuls, as the trainer runs it), this times a full
training step (forward, fp32 cross-entropy, backward, gradient clipping,
lm.optim.AdamW) and forward+backward alone, measures the step's peak
``torch.cuda.max_memory_allocated``, counts FLOPs with FlopCounterMode, and puts
the calculator's predictions next to them. Targets: memory within 10%, step
time within 25%. Besides the medians it records, per case, the host's share
(how long each call took to *return*, before synchronising: equal to the wall
time when the GPU waits on Python) and, per model, the efficiency of the
model's own GEMM shapes, and it fits the time model's host costs on the sizes
given by --fit-on (default small,medium), reporting the other sizes as the
held-out check. Needs only torch, numpy, einx and regex (no rich).

    python3 bench/calc_vs_measured.py                 # about 4-6 minutes on an H100
    python3 bench/calc_vs_measured.py --compile --sizes small,medium   # also compiled (~1 min per model)
    python3 bench/calc_vs_measured.py --sizes small,medium --dtypes bf16

Without a GPU, recompute the predictions for recorded measurements (current
model and device profiles) and print the same comparison:

    python3 bench/calc_vs_measured.py --from-json tests/data/calc_h100_2026-11-22.json
    python3 bench/calc_vs_measured.py --from-json run.json --fit-on small,medium --cross-validate
    python3 bench/calc_vs_measured.py --from-json run.json --write-fixture tests/data/calc_new.json

Writes calc_vs_measured.json into $OUT when it is set (or to --json FILE).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm.calc import calibration as cal  # noqa: E402  (torch-free)
from lm.calc.devices import device_for_torch_name, get_device  # noqa: E402
from lm.errors import LabError  # noqa: E402

BATCH = {"small": 8, "medium": 8, "large": 8, "xl": 4, "2.7B": 2}
GIB = 2**30


# ----------------------------------------------------------------------------- plain-text output (no rich)

def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """A fixed-width text table."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def report(records: list[cal.Recorded], device, fitted_on: tuple[str, ...], title: str) -> str:
    """The comparison table, the targets met (fitted and held-out apart) and the bf16-over-fp32 speed-ups."""
    comps = cal.compare(records, device, fitted_on=fitted_on)
    rows = []
    for c in comps:
        r, p = c.record, c.predicted
        mem = f"{r.peak_memory / GIB:.2f}/{p['peak_memory'] / GIB:.2f}" if r.peak_memory else "-"
        mem_ratio = f"{c.ratio('peak_memory'):.3f}" if r.peak_memory else "-"
        rows.append([r.label, r.dtype + (" compiled" if r.compile else ""), str(r.batch_size),
                     "fit" if c.fitted else "held out", mem, mem_ratio,
                     f"{r.forward_s * 1e3:.1f}/{p['forward_s'] * 1e3:.1f}",
                     f"{(r.step_s - r.forward_backward_s) * 1e3:.1f}/{p['optimizer_s'] * 1e3:.1f}",
                     f"{r.step_s * 1e3:.1f}/{p['step_s'] * 1e3:.1f}", f"{c.ratio('step_s'):.2f}",
                     f"{r.spread.get('step', 0):.0%}"])
    lines = [title, plain_table(["size", "dtype", "batch", "role", "peak GiB meas/pred", "mem ratio",
                                 "fwd ms meas/pred", "optim ms meas/pred", "step ms meas/pred", "step ratio",
                                 "step spread"], rows)]
    mem_known = [c for c in comps if c.memory_ok is not None]
    mem_ok = sum(bool(c.memory_ok) for c in mem_known)
    lines.append(f"memory within {cal.MEMORY_TARGET:.0%}: {mem_ok}/{len(mem_known)}; "
                 f"step time within {cal.TIME_TARGET:.0%}: {sum(c.time_ok for c in comps)}/{len(comps)}")
    for role, group in (("fitted", [c for c in comps if c.fitted]), ("held out", [c for c in comps if not c.fitted])):
        if group:
            mem = [c for c in group if c.memory_ok is not None]
            lines.append(f"{role}: step time within {cal.TIME_TARGET:.0%} for {sum(c.time_ok for c in group)}/"
                         f"{len(group)} (ratios {min(c.ratio('step_s') for c in group):.2f}-"
                         f"{max(c.ratio('step_s') for c in group):.2f}); peak memory within {cal.MEMORY_TARGET:.0%} "
                         f"for {sum(bool(c.memory_ok) for c in mem)}/{len(mem)}")
    speedups = []
    for label in dict.fromkeys(r.label for r in records):
        by = {c.record.dtype: c for c in comps if c.record.label == label and not c.record.compile}
        if "bf16" in by and "fp32" in by:
            speedups.append([label, f"{by['fp32'].record.step_s / by['bf16'].record.step_s:.2f}x",
                             f"{by['fp32'].predicted['step_s'] / by['bf16'].predicted['step_s']:.2f}x"])
    if speedups:
        lines += ["", "bf16 autocast over fp32 (TF32 matmuls), eager step time:",
                  plain_table(["size", "measured", "predicted"], speedups)]
    return "\n".join(lines)


def cross_validate(records: list[cal.Recorded], device) -> str:
    """Leave one size out: fit on all the other sizes, predict the one left out."""
    labels = list(dict.fromkeys(r.label for r in records))
    rows = []
    for left_out in labels:
        others = tuple(lb for lb in labels if lb != left_out)
        try:
            fit = cal.fit_factors(records, device, others)
        except cal.DataError:
            continue
        dev = cal.with_fitted_profile(device, fit)
        for c in cal.compare([r for r in records if r.label == left_out], dev):
            rows.append([left_out, c.record.dtype, f"{fit['launch_overhead_us']:.1f}", f"{fit['backward_launch']:.2f}",
                         f"{fit.get('tf32_matmul_efficiency', float('nan')):.3f}", f"{c.ratio('step_s'):.2f}"])
    return "leave one size out (fit on the others, predict it):\n" + plain_table(
        ["left out", "dtype", "launch us", "bwd launch", "tf32 eff", "step ratio"], rows)


def offline(args) -> int:
    """--from-json: recompute predictions for recorded measurements; no GPU, no torch."""
    meta, records = cal.load_records(args.from_json)
    env = meta.get("environment", {})
    device = get_device(args.profile) if args.profile else device_for_torch_name(env.get("device", "cpu"))[0]
    fit_on = tuple(s for s in args.fit_on.split(",") if s)
    print(f"recorded on {env.get('device', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, "
          f"{env.get('time', '?')}; {len(records)} cases; profile {device.key}")
    if peaks := meta.get("measured_peaks"):
        print("measured in that run: " + ", ".join(
            f"{k} {v / 1e9:.0f} GB/s" if "bandwidth" in k else f"{k} {v / 1e12:.0f} TFLOP/s"
            for k, v in peaks.items() if v))
    print()
    print(report(records, device, fit_on, f"with the {device.key} profile as it stands (fitted on: "
                                          f"{', '.join(fit_on) or 'nothing'}):"))
    if args.refit:
        fit = cal.fit_factors(records, device, fit_on)
        print(f"\nrefit on {', '.join(fit_on)}: {json.dumps({k: v for k, v in fit.items() if k != 'fitted_cases'})}")
        print(report(records, cal.with_fitted_profile(device, fit), fit_on, "with the refit factors:"))
    if args.cross_validate:
        print()
        print(cross_validate(records, device))
    if args.write_fixture:
        path = Path(args.write_fixture)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta.setdefault("note", f"the measurements of {Path(args.from_json).name} (bench/calc_vs_measured.py), "
                                f"kept by --write-fixture: medians in seconds, peaks in bytes")
        path.write_text(json.dumps(cal.compact(meta, records), indent=1) + "\n", encoding="utf-8")
        print(f"\nwritten {path}")
    return 0


# ----------------------------------------------------------------------------- measuring (torch, GPU)

def measure_matmul_peak(torch, dtype, n: int = 8192, iters: int = 20) -> float:
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


def measure_bandwidth(torch, nbytes: int = 2 << 30, iters: int = 10) -> float:
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


def model_gemm_tflops(torch, cfg, tokens: int, dtype, device, iters: int = 20) -> dict[str, float]:
    """Achieved TFLOP/s of the model's own forward GEMM shapes ((tokens x k) @ (k x n)), by name."""
    from lm.bench.timing import synchronize

    d, f, V = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    shapes = {"qkv": (d, 3 * d), "out_proj": (d, d), "ffn_up": (d, f), "ffn_down": (f, d), "lm_head": (d, V)}
    out = {}
    for name, (k, n) in shapes.items():
        x = torch.randn(tokens, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        for _ in range(3):
            x @ w.t()
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            x @ w.t()
        synchronize(device)
        out[name] = 2 * tokens * k * n * iters / (time.perf_counter() - t0) / 1e12
    return out


def host_share(torch, case, device, tf32: bool, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per mode, median seconds until the call returns (host) and until the GPU is done (wall).

    host close to wall: the GPU waited on Python (or the launch queue was full); host much
    shorter: the GPU was the bottleneck.
    """
    from lm.bench.steps import build_workload
    from lm.bench.timing import synchronize

    work = build_workload(case.model, batch_size=case.batch_size, context_length=case.context_length,
                          dtype=case.dtype, device=device, compile=case.compile, grad_clip=case.grad_clip,
                          tf32=tf32, meta_init=device.type != "cpu")
    out = {}
    try:
        for mode in ("forward", "forward_backward", "step"):
            getattr(work, mode)()
            hosts, walls = [], []
            for _ in range(repeats):
                synchronize(device)
                t0 = time.perf_counter()
                getattr(work, mode)()
                t1 = time.perf_counter()
                synchronize(device)
                hosts.append(t1 - t0)
                walls.append(time.perf_counter() - t0)
            out[mode] = {"host_s": statistics.median(hosts), "wall_s": statistics.median(walls)}
    finally:
        del work
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _ratios(res) -> dict:
    """measured / predicted (the harness's prediction) for step, forward+backward, forward, optimizer, memory."""
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


def other_processes_bytes(torch, device) -> int | None:
    """GPU memory held outside this process (another job on the GPU disturbs every timing)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(total - free - torch.cuda.memory_reserved(device))


def measure(args) -> int:
    """Run the cases on the GPU, print the comparison, write the JSON."""
    import torch

    from lm.bench.harness import BenchCase, environment, run_case
    from lm.bench.steps import device_name
    from lm.calc import count_params
    from lm.config.schema import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("calc_vs_measured.py needs a CUDA GPU (or --device cpu for a smoke test; --from-json without one)")
        return 2
    batch = dict(BATCH)
    for item in filter(None, args.batch.split(",")):
        k, v = item.split("=")
        batch[k] = int(v)
    profile, fallback = device_for_torch_name(device_name(device))
    env = environment(device)
    env["tf32"] = not args.no_tf32
    print(f"device: {env['device']} -> profile {profile.key}{' (fallback!)' if fallback else ''}; "
          f"torch {env['torch']}, CUDA {env.get('cuda')}")
    others = other_processes_bytes(torch, device)
    env["other_processes_bytes"] = others
    if others and others > GIB:
        print(f"WARNING: other processes hold {others / GIB:.1f} GiB on this GPU: they compete for it and the "
              f"host's CPU, and every timing below is disturbed. Run this alone.")
    peaks = {"bf16_matmul": None, "tf32_matmul": None, "copy_bandwidth": None}
    if device.type == "cuda":
        peaks["bf16_matmul"] = measure_matmul_peak(torch, torch.bfloat16)
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32_matmul"] = measure_matmul_peak(torch, torch.float32)
        peaks["copy_bandwidth"] = measure_bandwidth(torch)
        print(f"measured now: bf16 matmul {peaks['bf16_matmul'] / 1e12:.0f} TFLOP/s "
              f"(profile {profile.peak('bf16').value:.0f}), tf32 matmul {peaks['tf32_matmul'] / 1e12:.0f} TFLOP/s "
              f"(profile {profile.peak('fp32').value:.0f}), copy {peaks['copy_bandwidth'] / 1e9:.0f} GB/s "
              f"(profile {profile.bandwidth_gbs.value:.0f})")
        torch.cuda.empty_cache()

    rows = []
    compiles = [False, True] if args.compile else [False]
    t_start = time.time()
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        cfg = ModelConfig.from_name(size)
        for dt in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            for comp in compiles:
                case = BenchCase(size, cfg, batch.get(size, 4), min(args.context_length, cfg.context_length), dt, comp)
                started = time.time()
                res = run_case(case, device, warmup=args.warmup, repeats=args.repeats, min_block_s=0.0,
                               flops=not comp, with_prediction=True, tf32=not args.no_tf32)
                row = {"size": size, "dtype": dt, "compile": comp, "batch": case.batch_size, "tf32": not args.no_tf32, "engine": "fused",
                       "params": count_params(cfg).total, "error": res.error, "started_s": started - t_start,
                       "result": res.to_dict(), "ratios": _ratios(res), "prediction_detail": res.prediction}
                if not res.error:
                    row["measured"] = {f"{m}_s": res.times[m].median_s for m in res.times}
                    row["measured"]["spread"] = {m: res.times[m].spread for m in res.times}
                    row["measured"]["peak_memory"] = res.peak_memory
                    row["measured"]["flops"] = res.measured_flops
                    row["measured"]["mfu"] = res.mfu
                    if not args.no_host and not comp:  # (a compiled model would compile a second time)
                        row["host"] = host_share(torch, case, device, not args.no_tf32)
                    if not args.no_gemms and not comp:
                        mm_dtype = torch.bfloat16 if dt == "bf16" else torch.float32
                        row["gemm_tflops"] = model_gemm_tflops(torch, cfg, case.tokens_per_step, mm_dtype, device)
                rows.append(row)
                if res.error:
                    print(f"{size:>6} {dt} {'compiled' if comp else 'eager'}: {res.error}")
                else:
                    pm, h = res.prediction, row.get("host", {}).get("step")
                    share = f", host {h['host_s'] / h['wall_s']:.0%} of wall" if h else ""
                    print(f"{size:>6} {dt} {'compiled' if comp else 'eager'} b{case.batch_size}: step "
                          f"{res.times['step'].median_s * 1e3:.1f} ms (pred {pm['step_s'] * 1e3:.1f}{share}), peak "
                          f"{res.peak_memory / GIB:.2f} GiB (pred {pm['peak_memory'] / GIB:.2f}) "
                          f"[{time.time() - t_start:.0f}s]", flush=True)

    payload = {"environment": env, "measured_peaks": peaks, "rows": rows}
    # The comparison and the fit read the rows back the way --from-json does, so what is printed
    # here is exactly what --from-json prints later for the same file.
    records = [r for r in map(cal.record_from_bench_row, json.loads(json.dumps(rows, default=str))) if r]
    fit_on = tuple(s for s in args.fit_on.split(",") if s)
    print()
    print(report(records, profile, fit_on, f"with the {profile.key} profile as it stands:"))
    try:
        fit = cal.fit_factors(records, profile, fit_on)
    except cal.DataError as e:
        payload["calibration"] = {"error": str(e)}
        print(f"\nno fit: {e}")
    else:
        payload["calibration"] = {**fit, "fit_on": list(fit_on)}
        print(f"\nfit on {', '.join(fit_on)} (paste into lm/calc/devices.toml [{profile.key}] as measured figures): "
              f"{json.dumps({k: v for k, v in fit.items() if k != 'fitted_cases'})}")
        print(report(records, cal.with_fitted_profile(profile, fit), fit_on, "with these fitted factors:"))
    gemms = [(r["size"], r["dtype"], r["gemm_tflops"]) for r in rows if r.get("gemm_tflops")]
    if gemms:
        print("\nthe models' GEMM shapes alone, TFLOP/s (forward, tokens x k @ k x n):")
        names = list(gemms[0][2])
        print(plain_table(["size", "dtype", *names], [[s, d, *(f"{g[n]:.3g}" for n in names)] for s, d, g in gemms]))
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "calc_vs_measured.json"
    elif args.json:
        path = Path(args.json)
    else:
        print("\nset $OUT or pass --json FILE to keep the numbers")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    print(f"\nwritten {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large,xl,2.7B")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--context-length", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="also measure with torch.compile")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per mode (the median is reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", default="", help="override batch sizes, e.g. small=16,xl=2")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only as a smoke test of this script")
    ap.add_argument("--no-tf32", action="store_true",
                    help="run fp32 matmuls in full fp32 (the trainer uses TF32; public bf16-vs-fp32 figures "
                         "often do not)")
    ap.add_argument("--no-host", action="store_true", help="skip the host-share timing (one more model build per case)")
    ap.add_argument("--no-gemms", action="store_true", help="skip timing the models' GEMM shapes alone")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--json", metavar="FILE", help="write the JSON here when $OUT is not set")
    ap.add_argument("--fit-on", default="small,medium", metavar="SIZES",
                    help="sizes whose cases fit the host costs and TF32 efficiency (the rest is held out)")
    offline_args = ap.add_argument_group("without a GPU")
    offline_args.add_argument("--from-json", metavar="FILE",
                              help="recompute predictions for a recorded run (this script's JSON or a compact fixture)")
    offline_args.add_argument("--profile", help="device profile to predict with (default: matched by the GPU's name)")
    offline_args.add_argument("--refit", action="store_true", help="also fit on --fit-on and show the refit table")
    offline_args.add_argument("--cross-validate", action="store_true", help="leave-one-size-out fits")
    offline_args.add_argument("--write-fixture", metavar="FILE", help="write the compact record (a test fixture)")
    args = ap.parse_args(argv)
    try:
        return offline(args) if args.from_json else measure(args)
    except LabError as e:  # a missing or malformed record, an unknown --profile
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
