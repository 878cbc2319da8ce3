"""``lab calc``: size an experiment before running it, on one or more devices side by side.

Parameters, FLOPs, memory (weights, gradients, AdamW, activations, logits,
overhead) and a roofline step time, from :mod:`lm.calc`; pure arithmetic, no
torch. Each device gets a verdict: fits or not, by how much, and which batch
size would.
"""

from __future__ import annotations

import argparse

DEFAULT_DEVICES = ("m4", "rtx4090", "h100")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calc", help="predict parameters, FLOPs, memory and step time of an experiment on devices",
        description="Size an experiment on one or more devices, side by side. Examples:\n"
                    "  lab calc experiments/tinystories.toml --device rtx4090 --device m4\n"
                    "  lab calc --preset small --device h100 --batch-size 16 --dtype bf16\n"
                    "  lab calc --preset xl --device rtx4090 --checkpointing --json\n"
                    "  lab calc --list-devices",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT.toml", help="experiment file (or use --preset)")
    p.add_argument("--preset", metavar="NAME", help="a model preset (tiny, tinystories, small ... 2.7B) instead of a file")
    p.add_argument("--device", dest="devices", action="append", default=[], metavar="NAME",
                   help=f"device profile (repeatable; default: {', '.join(DEFAULT_DEVICES)}); see --list-devices")
    p.add_argument("--devices", dest="devices_file", metavar="FILE",
                   help="extra device profiles (TOML, same format as lm/calc/devices.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=64 (repeatable)")
    p.add_argument("--batch-size", type=int, metavar="N", help="sequences per micro-batch (default: the experiment's)")
    p.add_argument("--context-length", type=int, metavar="T", help="tokens per sequence (default: model.context_length)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), help="default: the experiment's training.dtype")
    p.add_argument("--grad-accum", type=int, metavar="K", help="micro-batches per step (default: the experiment's)")
    p.add_argument("--compile", choices=("auto", "on", "off"), help="default: the experiment's training.compile")
    p.add_argument("--checkpointing", nargs="?", const="full",
                   choices=("auto", "none", "full", "selective", "weights"),
                   help="activation checkpointing: full (when given without a value; recompute each block), "
                        "selective, weights (recast the bf16 weight copies in backward), none, or auto "
                        "(weights for a compiled bf16 GPU step without CUDA graphs of 1.5B parameters or more, "
                        "else none); default: the experiment's training.activation_checkpointing")
    p.add_argument("--efficiency", dest="efficiency", action="append", default=[], metavar="NAME=VALUE",
                   help="tune the time model, e.g. --efficiency matmul=0.6 (names: matmul, attention, bandwidth, "
                        "launch_overhead_us, compile_bytes, compile_kernels, flash_backward)")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="also size DDP and FSDP2 on N GPUs: per-GPU memory, gradient communication over NVLink "
                        "or PCIe, step time and scaling efficiency (the batch is global, split over the GPUs)")
    p.add_argument("--detail", action="store_true", help="also show every op: FLOPs, intensity, bound, time")
    p.add_argument("--json", action="store_true", help="print the estimates as JSON")
    p.add_argument("--list-devices", action="store_true", help="list the known device profiles and exit")
    return p


def _parse_efficiency(items: list[str]):
    from lm.calc import Efficiency
    from lm.errors import ConfigError

    values, problems = {}, []
    names = Efficiency.field_names()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in names:
            problems.append(f"--efficiency expects NAME=VALUE with NAME one of {', '.join(names)}, got {item!r}")
            continue
        try:
            values[key] = float(raw)
        except ValueError:
            problems.append(f"--efficiency {key} must be a number, got {raw!r}")
    if problems:
        raise ConfigError(problems)
    return Efficiency(**values)


def load_config(args):
    """The ExperimentConfig to size: a file, or a preset with training defaults (overrides applied)."""
    from lm.config.loader import load_experiment, load_experiment_text
    from lm.errors import ConfigError

    if args.experiment and args.preset:
        raise ConfigError(["give an experiment file or --preset, not both"])
    if args.experiment:
        # Sizing does not need the data to exist yet.
        return load_experiment(args.experiment, args.overrides, check_paths=False)
    preset = args.preset or "tinystories"
    from lm.config.schema import PRESETS

    if preset not in PRESETS:
        raise ConfigError([f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}"])
    return load_experiment_text(f'[model]\npreset = "{preset}"\n', f"--preset {preset}", args.overrides,
                                check_paths=False)


def run(args) -> int:
    from lm.calc import estimate, list_devices

    if args.list_devices:
        devices = list_devices(args.devices_file)
        if args.json:
            import json

            print(json.dumps([d.to_dict() for d in devices], indent=2))
        else:
            print_devices(devices)
        return 0
    exp = load_config(args)
    eff = _parse_efficiency(args.efficiency)
    names = args.devices or list(DEFAULT_DEVICES)
    estimates = [estimate(exp, name, batch_size=args.batch_size, context_length=args.context_length,
                          dtype=args.dtype, grad_accum=args.grad_accum, compile=args.compile,
                          activation_checkpointing=args.checkpointing, efficiency=eff,
                          devices_file=args.devices_file) for name in names]
    multi = _distributed(exp, names, args, eff) if args.gpus is not None else []  # --gpus 0 is refused there
    if args.json:
        import json

        label = args.experiment or f"--preset {args.preset or 'tinystories'}"
        out = {"experiment": label, "overrides": list(args.overrides),
               "estimates": [e.to_dict() for e in estimates]}
        if multi:
            out["distributed"] = [d.to_dict() for d in multi]
        print(json.dumps(out, indent=2))
        return 0
    print_report(exp, estimates, args.experiment or f"--preset {args.preset or 'tinystories'}", detail=args.detail)
    if multi:
        print_distributed(multi)
    return 0


def _distributed(exp, names, args, eff):
    from lm.calc.distributed import estimate_distributed

    return [estimate_distributed(exp, name, args.gpus, mode, batch_size=args.batch_size,
                                 context_length=args.context_length, dtype=args.dtype, grad_accum=args.grad_accum,
                                 compile=args.compile, activation_checkpointing=args.checkpointing,
                                 efficiency=eff, devices_file=args.devices_file)
            for name in names for mode in ("ddp", "fsdp")]


def print_distributed(multi) -> None:
    """One row per (device, mode): per-GPU memory, communication, step time, throughput, scaling."""
    from rich.console import Console
    from rich.table import Table

    gib = 2 ** 30
    n = multi[0].world_size
    t = Table(title=f"{n} GPUs (global batch split: {multi[0].per_gpu_batch} per GPU)", title_justify="left")
    for col in ("device", "mode", "GiB/GPU", "link GB/s", "comm", "exposed", "step", "tok/s", "scaling"):
        t.add_column(col, justify="left" if col in ("device", "mode", "link") else "right")
    for d in multi:
        ms = (lambda x: "-" if x is None else f"{x * 1e3:.1f}ms")
        link = "none" if d.link == "none" else f"{d.link} {d.link_gbs:g} ({d.link_source[:1]})"
        mem = f"{d.total_bytes / gib:.1f}/{d.capacity_bytes / gib:.0f}"
        t.add_row(d.device, d.mode.upper(), f"[{'green' if d.fits else 'red'}]{mem}[/]", link, ms(d.comm_s),
                  ms(d.exposed_comm_s), ms(d.step_s), "-" if d.tokens_per_s is None else f"{d.tokens_per_s:,.0f}",
                  "-" if d.scaling_efficiency is None else f"{d.scaling_efficiency:.0%}")
    con = Console()
    con = Console(width=max(con.width, 104))  # nine numeric columns: narrower wraps every cell
    con.print(t)
    con.print("[dim]scaling: throughput on N GPUs / (N x one GPU at the same per-GPU batch); FSDP2 can pass 100% "
              "because each GPU updates only its shard of the optimizer state. Link figures: (d) datasheet, "
              "(m) measured, (e) estimate; see docs/distributed.md.[/]")


# ----------------------------------------------------------------------------- rendering (rich)

_SOURCE_MARK = {"measured": "m", "datasheet": "d", "estimate": "e"}


def _fig(fig, unit: str = "") -> str:
    v = fig.value
    text = f"{v:.3g}" if v < 1000 else f"{v:,.0f}"
    return f"{text}{unit} ({_SOURCE_MARK[fig.source]})"


def print_devices(devices) -> None:
    """Table of device profiles; (m) measured, (d) datasheet, (e) estimate."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="device profiles: (m) measured, (d) datasheet, (e) estimate", title_justify="left")
    for h in ("name", "device", "kind", "memory GiB", "bandwidth GB/s", "fp32 TFLOP/s", "tf32", "bf16", "from"):
        t.add_column(h, justify="right" if h not in ("name", "device", "kind", "from") else "left")
    for d in devices:
        peaks = [(_fig(d.peak_tflops[k]) if k in d.peak_tflops else "-") for k in ("fp32", "tf32", "bf16")]
        t.add_row(d.key, d.title, d.kind, _fig(d.usable_memory_gib or d.memory_gib), _fig(d.bandwidth_gbs),
                  *peaks, d.origin)
    Console().print(t)


def _model_table(exp, e):
    from rich.table import Table

    from lm.calc.units import fmt_count, fmt_flops

    p, f = e.params, e.flops
    per_tok = 1.0 / f.tokens
    comp = f.components
    t = Table(title="parameters and FLOPs (forward, per token; backward = 2x forward)", title_justify="left")
    for h in ("component", "parameters", "share", "matmul FLOPs/token", "causal-useful"):
        t.add_column(h, justify="left" if h == "component" else "right")

    def flops_of(*names):
        return sum(comp[n].forward for n in names if n in comp), sum(comp[n].forward_causal for n in names if n in comp)

    rows = [("embeddings", p.embeddings, (0.0, 0.0)),
            ("attention projections", p.attention, flops_of("qkv", "out_proj")),
            ("attention scores + weighted sum", 0, flops_of("attn_scores", "attn_values")),
            ("feed-forward", p.ffn, flops_of("ffn")),
            ("norms", p.norms, (0.0, 0.0)),
            ("LM head" + (" (tied)" if exp.model.tie_embeddings else ""), p.lm_head, flops_of("lm_head"))]
    for name, n, (fw, fc) in rows:
        t.add_row(name, f"{n:,}" if n else "-", f"{n / p.total:.1%}" if n else "",
                  fmt_flops(fw * per_tok) if fw else "-", fmt_flops(fc * per_tok) if fc else "-")
    t.add_row("total", f"{p.total:,}", fmt_count(p.total), fmt_flops(f.forward_matmul * per_tok),
              fmt_flops(f.forward_matmul_causal * per_tok), end_section=True)
    t.add_row("training (x3), MFU basis", "", "", fmt_flops(f.per_token), fmt_flops(f.training_matmul_causal * per_tok))
    return t


def _bound_summary(time_est) -> str:
    total = {"compute": 0.0, "memory": 0.0, "launch": 0.0}
    for o in time_est.ops:
        total[o.bound] += o.time_s
    s = sum(total.values()) or 1.0
    return ", ".join(f"{k} {v / s:.0%}" for k, v in sorted(total.items(), key=lambda kv: -kv[1]) if v > 0)


def _devices_table(estimates):
    from rich.table import Table

    from lm.calc.units import fmt_bytes, fmt_count, fmt_flops, fmt_seconds

    first = estimates[0]
    t = Table(title="per device (memory in GiB; (m) measured, (d) datasheet, (e) estimate)", title_justify="left")
    t.add_column("")
    for e in estimates:
        t.add_column(e.device.key, justify="right")

    def row(label, fn, end=False):
        t.add_row(label, *[fn(e) for e in estimates], end_section=end)

    def settings(e):
        s = e.settings
        accum = f" x{s.grad_accum}" if s.grad_accum > 1 else ""
        flags = [("bf16 autocast" if s.dtype == "bf16" else "fp32"), "compiled" if s.compile else "eager"]
        if s.activation_checkpointing:
            flags.append("ckpt")
        return f"{s.batch_size}x{s.context_length}{accum}, " + ", ".join(flags)

    m = lambda e: e.memory  # noqa: E731
    row("batch x context, mode", settings)
    row("peak matmul TFLOP/s", lambda e: f"{e.time.peak_tflops:.3g} {e.time.matmul_dtype} "
                                         f"({_SOURCE_MARK[e.time.peak_source]})")
    row("memory bandwidth", lambda e: _fig(e.device.bandwidth_gbs, " GB/s"), end=True)
    row("weights + grads + " + ("Muon/AdamW" if first.settings.optimizer == "muon" else "AdamW"),
        lambda e: fmt_bytes(m(e).params + m(e).grads + m(e).optimizer))
    row("activations", lambda e: f"{fmt_bytes(m(e).activations)} ({fmt_bytes(m(e).activations_per_layer)}/block)")
    row("bf16 weight copies", lambda e: fmt_bytes(m(e).weight_copies) if m(e).weight_copies else "-")
    row("logits + loss", lambda e: fmt_bytes(m(e).loss))
    row("peak allocated", lambda e: f"{fmt_bytes(m(e).peak)} at {m(e).peak_phase}")
    row("+ allocator slack, context", lambda e: f"{fmt_bytes(m(e).fragmentation)} + {fmt_bytes(m(e).overhead)}")
    row("total / capacity", lambda e: f"{fmt_bytes(m(e).total)} / {fmt_bytes(m(e).capacity)} "
                                      f"({m(e).total / m(e).capacity:.0%})")
    row("largest batch that fits", lambda e: str(e.verdict.max_batch_size), end=True)
    row("forward / backward", lambda e: f"{fmt_seconds(e.time.forward_s)} / {fmt_seconds(e.time.backward_s)}")
    row("optimizer (+ clip)", lambda e: fmt_seconds(e.time.optimizer_s))
    row("step time", lambda e: fmt_seconds(e.time.step_s))
    row("tokens/s", lambda e: fmt_count(e.time.tokens_per_s))
    row("MFU", lambda e: f"{e.time.mfu:.1%}")
    if first.settings.optimizer == "muon":
        row("Newton-Schulz (not in MFU)", lambda e: fmt_flops(e.to_dict()["optimizer"]["newton_schulz_flops_per_step"])
            + "/step")
    row("time bound by", lambda e: _bound_summary(e.time))
    return t


def _ops_table(e):
    from rich.table import Table

    from lm.calc.units import fmt_bytes, fmt_flops, fmt_seconds

    ridge = e.device.peak_flops(e.settings.dtype) / e.device.bandwidth
    t = Table(title=f"{e.device.key}: ops per micro-batch, forward + backward (ridge point {ridge:.0f} FLOP/byte)",
              title_justify="left")
    for h in ("op", "FLOPs", "bytes", "FLOP/byte", "launches", "bound", "time", "share"):
        t.add_column(h, justify="left" if h in ("op", "bound") else "right")
    total = sum(o.time_s for o in e.time.ops) or 1.0
    for o in e.time.ops:
        inten = "-" if o.intensity == float("inf") else f"{o.intensity:.1f}"
        t.add_row(o.name, fmt_flops(o.flops) if o.flops else "-", fmt_bytes(o.bytes), inten, f"{o.kernels:.0f}",
                  o.bound, fmt_seconds(o.time_s), f"{o.time_s / total:.1%}")
    return t


def print_report(exp, estimates, label: str, *, detail: bool = False) -> None:
    """The model's parameters and FLOPs, then every device side by side, then one verdict per device."""
    from rich.console import Console

    from lm.calc.units import fmt_count

    con = Console()
    c = exp.model
    con.print(f"[bold]{label}[/]: {fmt_count(estimates[0].params.total)} parameters "
              f"({fmt_count(estimates[0].params.non_embedding)} non-embedding), d_model {c.d_model}, "
              f"{c.num_layers} layers, {c.num_heads} heads, d_ff {c.ffn_dim}, vocab {c.vocab_size}, "
              f"context {c.context_length}, attention {c.attention}")
    con.print(_model_table(exp, estimates[0]))
    con.print(_devices_table(estimates))
    if detail:
        for e in estimates:
            con.print(_ops_table(e))
    for e in estimates:
        color = "green" if e.verdict.fits else "red"
        con.print(f"[bold {color}]{e.device.key}[/]: {e.verdict.text}")
    eff = estimates[0].efficiency
    con.print(f"[dim]MFU counts dense matmul FLOPs (the masked half of attention included, as FlopCounterMode "
              f"does). Times are roofline estimates (matmul efficiency {eff.matmul}, bandwidth {eff.bandwidth}, "
              f"per-launch overhead from the device profile); see docs/performance.md (Calculator).[/]")
