"""``lab bench``: time forward, forward+backward and training steps over a grid of configurations.

The measuring is done by :mod:`lm.bench` (torch only); this command adds the
argument parsing and a rich table. ``--compare-calculator`` puts the
calculator's predictions (:mod:`lm.calc`) next to the measurements;
``--profile`` writes a profiler trace with named ranges and a CUDA memory snapshot.
"""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="benchmark step time, tokens/s, MFU and peak memory over a grid of configurations",
        description="Time forward, forward+backward and a full training step (AdamW) for presets or an\n"
                    "experiment: warm-up excluded, device synchronised, median over repeats. Examples:\n"
                    "  lab bench --preset small --dtype fp32 --dtype bf16\n"
                    "  lab bench --preset small --preset medium --context-length 256 --context-length 512 --compile on --compile off\n"
                    "  lab bench experiments/tinystories.toml --compare-calculator\n"
                    "  lab bench --preset tiny --attention naive --profile runs/bench/profile",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT.toml",
                   help="benchmark this experiment's model and training settings")
    p.add_argument("--preset", dest="presets", action="append", default=[], metavar="NAME",
                   help="model preset (repeatable; default: tiny when no experiment is given)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.norm=post (repeatable)")
    p.add_argument("--batch-size", type=int, metavar="N", help="sequences per batch (default: the experiment's, or 4)")
    p.add_argument("--context-length", dest="context_lengths", action="append", type=int, default=[], metavar="T",
                   help="tokens per sequence (repeatable; default: the model's context_length)")
    p.add_argument("--dtype", dest="dtypes", action="append", default=[], choices=("fp32", "bf16"),
                   help="fp32 (TF32 matmuls on CUDA) or bf16 autocast (repeatable; default: the device's choice)")
    p.add_argument("--compile", dest="compiles", action="append", default=[], choices=("on", "off"),
                   help="torch.compile on/off (repeatable; default off)")
    p.add_argument("--attention", dest="attentions", action="append", default=[], choices=("sdpa", "naive"),
                   help="attention implementation (repeatable; default: the model's)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing on every block")
    p.add_argument("--grad-accum", type=int, default=None, metavar="K", help="micro-batches per step")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--modes", default="forward,forward_backward,step",
                   help="what to time, comma-separated from forward, forward_backward, step")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed calls before timing (default 2)")
    p.add_argument("--repeats", type=int, default=5, metavar="N", help="timed blocks per mode (default 5)")
    p.add_argument("--compare-calculator", action="store_true",
                   help="show the calculator's predicted step time, peak memory and FLOPs next to the measured")
    p.add_argument("--efficiency", action="append", default=[], metavar="NAME=VALUE",
                   help="efficiency factors for the prediction (see lab calc --help)")
    p.add_argument("--profile", nargs="?", const="", default=None, metavar="DIR",
                   help="write a profiler trace (Chrome/Perfetto JSON) with named ranges and, on CUDA, a memory "
                        "snapshot per case into DIR (default runs/bench/profile-<time>)")
    p.add_argument("--out", metavar="FILE.json", help="where to write the results (default runs/bench/bench-<time>.json)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--no-tf32", action="store_true", help="fp32 matmuls in full fp32 on CUDA (the trainer uses TF32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's); on a busy machine 1 avoids spinning threads")
    return p


def _cases(args, device):
    from lm.bench.harness import BenchCase, grid
    from lm.config.loader import load_experiment, load_experiment_text
    from lm.config.schema import PRESETS
    from lm.errors import ConfigError

    problems = []
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("forward", "forward_backward", "step")]
    if bad or not modes:
        problems.append(f"--modes takes forward, forward_backward, step; got {args.modes!r}")
    for name, value in (("--batch-size", args.batch_size), ("--grad-accum", args.grad_accum)):
        if value is not None and value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if args.warmup < 0 or args.repeats < 1:
        problems.append("--warmup must be >= 0 and --repeats >= 1")
    if args.experiment and args.presets:
        problems.append("give an experiment file or --preset, not both")
    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        problems.append(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    if problems:
        raise ConfigError(problems, source="lab bench")

    exps = {}
    if args.experiment:
        exp = load_experiment(args.experiment, args.overrides, check_paths=False)
        exps[exp.name] = exp
    else:
        for name in args.presets or ["tiny"]:
            exps[name] = load_experiment_text(f'[model]\npreset = "{name}"\n', f"--preset {name}", args.overrides,
                                                check_paths=False)
    auto_dtype = "bf16" if device.type == "cuda" and _bf16_ok(device) else "fp32"
    cases: list[BenchCase] = []
    for label, exp in exps.items():
        tr = exp.training
        for T in args.context_lengths or [exp.model.context_length]:
            if not 1 <= T <= exp.model.context_length:
                raise ConfigError([f"--context-length {T} must be between 1 and model.context_length "
                                   f"({exp.model.context_length}) of {label}"], source="lab bench")
        if args.dtypes:
            dtypes = args.dtypes
        elif args.experiment and tr.dtype != "auto":
            dtypes = [tr.dtype]
        else:
            dtypes = [auto_dtype]
        if args.compiles:
            compiles = [c == "on" for c in args.compiles]
        elif args.experiment:
            compiles = [tr.compile == "on" or (tr.compile == "auto" and device.type == "cuda")]
        else:
            compiles = [False]
        batch = args.batch_size or (tr.batch_size if args.experiment else 4)
        cases += grid({label: exp.model}, batch_sizes=batch, context_lengths=args.context_lengths or [None],
                      dtypes=dtypes, compiles=compiles, attentions=args.attentions or [None],
                      checkpointing=args.checkpointing,
                      grad_accum=args.grad_accum or (tr.grad_accum if args.experiment else 1),
                      grad_clip=exp.optimizer.grad_clip)
    return cases, modes


def _bf16_ok(device) -> bool:
    from lm.device import bf16_supported

    return bf16_supported(device)


def run(args) -> int:
    import torch

    from lab.commands.calc import _parse_efficiency
    from lm.bench.harness import run_case, write_json
    from lm.device import resolve_device
    from lm.errors import LabError

    if args.out:
        from lm.atomic import refuse_overwrite

        refuse_overwrite(args.out, force=args.force)
    try:
        device = resolve_device(args.device, "--device")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise LabError(f"--device {args.device!r} is not usable here: {e}") from None
    eff = _parse_efficiency(args.efficiency)
    cases, modes = _cases(args, device)
    if args.threads is not None:
        if args.threads < 1:
            raise LabError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from rich.console import Console

    con = Console()
    results = []
    with con.status("benchmarking") as status:
        for i, case in enumerate(cases, 1):
            status.update(f"[{i}/{len(cases)}] {case.label} {case.batch_size}x{case.context_length} {case.dtype}"
                          f"{' compiled' if case.compile else ''} {case.model.attention}")
            res = run_case(case, device, modes=modes, warmup=args.warmup, repeats=args.repeats,
                           flops=args.compare_calculator, with_prediction=args.compare_calculator,
                           tf32=not args.no_tf32, efficiency={k: getattr(eff, k) for k in eff.field_names()})
            results.append(res)
            if args.profile is not None and res.error is None:
                _profile(case, device, args.profile or f"runs/bench/profile-{stamp}", i, con, not args.no_tf32)
    con.print(_table(results, modes, args.compare_calculator, device))
    if args.compare_calculator:
        _print_comparisons(con, results)
    out = write_json(results, args.out or f"runs/bench/bench-{stamp}.json", device,
                     extra={"argv": {k: v for k, v in vars(args).items() if not k.startswith("_")}})
    con.print(f"results written to {out}")
    return 0


def _profile(case, device, out_dir: str, index: int, con, tf32: bool) -> None:
    from lm.bench.profiling import profile_workload
    from lm.bench.steps import build_workload

    work = build_workload(case.model, batch_size=case.batch_size, context_length=case.context_length,
                          dtype=case.dtype, device=device, compile=False, checkpointing=case.checkpointing,
                          grad_clip=case.grad_clip, grad_accum=case.grad_accum, tf32=tf32,
                          meta_init=device.type != "cpu")
    tag = f"{index:02d}-{case.label}-{case.batch_size}x{case.context_length}-{case.dtype}-{case.model.attention}"
    try:
        paths = profile_workload(work, out_dir, tag=tag)
    except OSError as e:
        from lm.errors import LabError

        raise LabError(f"cannot write the profile into {out_dir}: {e.strerror or e}") from None
    note = "" if case.model.attention == "naive" else " (sdpa: attention is one range; use --attention naive for scores/softmax/weighted_sum)"
    con.print(f"profile of {tag}: " + ", ".join(f"{k} {v}" for k, v in paths.items()) + note)


def _ms(m) -> str:
    return f"{m.median_s * 1e3:.2f} ±{m.spread:.0%}" if m else "-"


def _case_label(c) -> str:
    return (f"{c.label} {c.batch_size}x{c.context_length} {c.dtype} {c.model.attention}"
            f"{' compiled' if c.compile else ''}{' ckpt' if c.checkpointing else ''}")


def _table(results, modes, compare: bool, device):
    from rich.table import Table

    from lm.calc.units import fmt_bytes, fmt_count

    short = {"forward": "fwd", "forward_backward": "fwd+bwd", "step": "step"}
    t = Table(title=f"lab bench on {results[0].device if results else device}: ms per call, median "
                    f"±(max-min)/median", title_justify="left")
    heads = ["case"] + [short[m] for m in modes] + ["tok/s", "MFU", "peak mem"]
    if compare:
        heads += ["pred step", "step ratio", "mem ratio"]
    for h in heads:
        t.add_column(h, justify="left" if h == "case" else "right")
    for r in results:
        if r.error:
            t.add_row(_case_label(r.case), r.error, *[""] * (len(heads) - 2))
            continue
        row = [_case_label(r.case)] + [_ms(r.times.get(m)) for m in modes]
        row += [fmt_count(r.tokens_per_s) if r.tokens_per_s else "-", f"{r.mfu:.1%}" if r.mfu else "-",
                fmt_bytes(r.peak_memory) if r.peak_memory else "-"]
        if compare:
            p = r.prediction or {}
            step = r.times.get("step")
            row += [f"{p['step_s'] * 1e3:.2f}" if p else "-",
                    f"{step.median_s / p['step_s']:.2f}" if step and p else "-",
                    f"{r.peak_memory / p['peak_memory']:.2f}" if r.peak_memory and p else "-"]
        t.add_row(*row)
    t.caption = _mfu_caption(results)
    return t


def _mfu_caption(results) -> str:
    """Which MFU convention the table uses (the trainer's and bench/train_mfu.py's)."""
    from lm.calc import peak_flops

    measured = [r for r in results if r.mfu]
    if not measured:
        return ""
    r = measured[0]
    peak, estimated = peak_flops(r.device, r.case.dtype)
    source = "an estimate" if estimated else "the device profile's figure (measured where it says so)"
    return (f"MFU: dense matmul FLOPs per token (6 x parameters except the input embeddings + 12 x layers x "
            f"d_model x context) x tokens/s / {peak / 1e12:.3g} TFLOP/s {r.case.dtype} peak, {source}; "
            "the trainer's convention (lab calc --list-devices shows the profile)")


def _print_comparisons(con, results) -> None:
    from rich.table import Table

    from lm.bench.calc_comparison import _fmt, comparison

    for r in results:
        if r.error or not r.prediction:
            continue
        c = r.case
        t = Table(title=f"{_case_label(c)}: measured vs predicted (device profile {r.prediction['device_profile']})",
                  title_justify="left")
        for h in ("quantity", "measured", "predicted", "measured/predicted"):
            t.add_column(h, justify="left" if h == "quantity" else "right")
        for row in comparison(r):
            t.add_row(row["quantity"], _fmt(row["measured"], row["unit"]), _fmt(row["predicted"], row["unit"]),
                      f"{row['ratio']:.2f}" if row["ratio"] is not None else "-")
        con.print(t)
        if r.case.model.attention == "sdpa" and r.device == "cpu":
            con.print("[dim]FlopCounterMode does not see the CPU sdpa kernel: the FLOPs row leaves attention out "
                      "on both sides.[/]")
