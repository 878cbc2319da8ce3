"""``lab model``: build a model from a preset, count its parameters, run a real forward pass.

The first thing to try after installing: it shows where the parameters of a
transformer go (embeddings, attention, FFN, norms, LM head) and proves the
model runs, with the loss on random tokens next to the ln(vocab) expected of
an untrained model.
"""

from __future__ import annotations

import argparse

SECTION = "model"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "model", help="build a model preset, show its parameter counts and run a forward pass",
        description="Build a model from a preset, print its parameter counts by component and run one\n"
                    "forward pass on random tokens. Examples:\n"
                    "  lab model\n"
                    "  lab model --preset small --set model.norm=post --set model.tie_embeddings=true\n"
                    "  lab model --list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", metavar="NAME", help="model preset (default: tiny; see --list)")
    p.add_argument("--list", action="store_true", help="list the presets with their shapes and sizes, and exit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                   help="override a model field with a TOML value, e.g. --set model.norm=post (repeatable)")
    p.add_argument("--batch", type=int, default=2, metavar="N", help="sequences in the forward pass (default: 2)")
    p.add_argument("--seq-len", type=int, default=0, metavar="T",
                   help="tokens per sequence (default: the model's context_length)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the random tokens")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args) -> int:
    from lm.config.schema import PRESETS, ModelConfig
    from lm.errors import ConfigError

    if args.list:
        return _list_presets(PRESETS, args.json)
    cfg = ModelConfig.from_name(args.preset)
    cfg = apply_model_overrides(cfg, args.overrides)
    problems = []
    if args.batch < 1:
        problems.append(f"--batch must be at least 1, got {args.batch}")
    seq_len = args.seq_len or cfg.context_length
    if not 1 <= seq_len <= cfg.context_length:
        problems.append(f"--seq-len must be between 1 and model.context_length ({cfg.context_length}), got {seq_len}")
    if problems:
        raise ConfigError(problems, source="lab model")
    report = inspect_model(cfg, args.batch, seq_len, args.device, args.seed)
    report["preset"] = args.preset
    report["overrides"] = list(args.overrides)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


# ----------------------------------------------------------------------------- --set

def apply_model_overrides(cfg, overrides: list[str]):
    """``["model.norm=post", "model.d_model=128"]`` applied to a ModelConfig, type-checked.

    Values use TOML syntax (``true``, ``1e-4``, ``"post"``); a bare word is taken as
    a string. Every problem is collected into one ConfigError naming the key and
    the valid keys or values.
    """
    import dataclasses
    import difflib
    import typing

    from lm.config.loader import coerce_value, parse_override_value, type_text
    from lm.config.schema import ModelConfig
    from lm.errors import ConfigError

    hints = typing.get_type_hints(ModelConfig)
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    changes, problems = {}, []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not sep or not dot or section != SECTION:
            problems.append(f"--set expects model.KEY=VALUE (for example model.norm=post), got {item!r}")
            continue
        if name not in hints:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean model.{close[0]}?)" if close else ""
            problems.append(f"unknown key model.{name}{hint}; valid keys: {', '.join(fields)}")
            continue
        ok, value = coerce_value(parse_override_value(raw), hints[name])
        if not ok:
            problems.append(f"model.{name} must be {type_text(hints[name])}, got {raw.strip()!r}")
            continue
        changes[name] = value
    if problems:
        raise ConfigError(problems, source="--set")
    cfg = dataclasses.replace(cfg, **changes)
    if problems := cfg.problems():
        raise ConfigError(problems, source="--set")
    return cfg


# ----------------------------------------------------------------------------- the model

COMPONENTS = ("embeddings", "attention", "FFN", "norms", "LM head")


def component_of(name: str) -> str:
    """Which row of the table a parameter (CS336 module path) belongs to."""
    if name.startswith("token_embeddings."):
        return "embeddings"
    if name.startswith("lm_head."):
        return "LM head"
    if ".attn." in name:
        return "attention"
    if ".ffn." in name:
        return "FFN"
    if ".ln" in name or name.startswith("ln_final."):
        return "norms"
    raise ValueError(f"parameter {name} belongs to no component")


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component plus ``total``; a tied LM head counts 0 (it is the embedding)."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # shared tensors are listed once
        counts[component_of(name)] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def _device(name: str):
    import torch

    from lm.device import resolve_device
    from lm.errors import ConfigError

    if name.strip().lower() == "auto":
        return resolve_device("auto")
    try:
        device = torch.device(name.strip().lower())
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError([f"--device {name!r} is not usable here ({str(e).splitlines()[0]}); "
                           "use cpu, cuda, cuda:N, mps or auto"]) from None
    return device


def inspect_model(cfg, batch: int, seq_len: int, device_name: str, seed: int) -> dict:
    """Build ``cfg``, count its parameters and time a forward pass on random tokens."""
    import math
    import time

    import torch

    from lm.functional import cross_entropy
    from lm.model import TransformerLM

    device = _device(device_name)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = TransformerLM(cfg, device=device).eval()
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    times = []
    with torch.no_grad():
        # The first call also traces the einx expressions; time a second one unless the first was slow.
        while not times or (len(times) == 1 and times[0] < 2.0):
            t0 = time.perf_counter()
            logits = model(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elif device.type == "mps":
                torch.mps.synchronize()
            times.append(time.perf_counter() - t0)
        loss = cross_entropy(logits, targets).item()
    counts = parameter_counts(model)
    return {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__} | {"d_ff": cfg.ffn_dim},
        "parameters": counts,
        "non_embedding_parameters": counts["total"] - counts["embeddings"] - counts["LM head"],
        "device": str(device),
        "dtype": str(logits.dtype).removeprefix("torch."),
        "input_shape": list(inputs.shape),
        "output_shape": list(logits.shape),
        "loss": loss,
        "expected_loss": math.log(cfg.vocab_size),
        "build_seconds": build_s,
        "forward_seconds": times[-1],
        "first_forward_seconds": times[0],
    }


# ----------------------------------------------------------------------------- output

def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _rows(report: dict) -> list[tuple[str, str, str]]:
    counts = report["parameters"]
    total = counts["total"] or 1
    rows = []
    for comp in COMPONENTS:
        n = counts[comp]
        label = "tied (shared with embeddings)" if comp == "LM head" and report["config"]["tie_embeddings"] else ""
        rows.append((comp, f"{n:,}", label or f"{100 * n / total:.1f}%"))
    rows.append(("total", f"{counts['total']:,}", _human(counts["total"])))
    return rows


def _print_table(title: str, headers: tuple[str, ...], rows: list[tuple], right: set[int]) -> None:
    """A rich table when rich is installed, aligned plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
        print(title)
        for row in (headers, *rows):
            print("  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                            for i, (c, w) in enumerate(zip(row, widths))))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i in right else "left")
    for i, row in enumerate(rows):
        table.add_row(*map(str, row), end_section=i == len(rows) - 2 and row[0] == "LM head")
    Console().print(table)


def _print_report(r: dict) -> None:
    c = r["config"]
    sets = f" with {', '.join(r['overrides'])}" if r["overrides"] else ""
    print(f"model {r['preset']!r}{sets}")
    print(f"  vocab_size {c['vocab_size']}  context_length {c['context_length']}  d_model {c['d_model']}  "
          f"num_layers {c['num_layers']}  num_heads {c['num_heads']}  d_ff {c['d_ff']}")
    print(f"  norm {c['norm']}  position {c['position']}  ffn {c['ffn']}  attention {c['attention']}  "
          f"tie_embeddings {str(c['tie_embeddings']).lower()}")
    print()
    _print_table("parameters", ("component", "parameters", "share"), _rows(r), right={1, 2})
    print(f"non-embedding parameters: {r['non_embedding_parameters']:,}")
    print()
    b, t = r["input_shape"]
    print(f"forward: {b} x {t} random tokens on {r['device']} ({r['dtype']}) -> logits {tuple(r['output_shape'])} "
          f"in {r['forward_seconds'] * 1e3:.1f} ms")
    first = (f"first call {r['first_forward_seconds'] * 1e3:.1f} ms" if r["forward_seconds"] != r["first_forward_seconds"]
             else "one call, including einx's first-call tracing")
    print(f"  ({first}; building the model took {r['build_seconds'] * 1e3:.0f} ms)")
    print(f"loss on random tokens: {r['loss']:.3f}  (an untrained model should be near "
          f"ln({c['vocab_size']}) = {r['expected_loss']:.3f})")
    if c["tie_embeddings"] and r["loss"] > 1.5 * r["expected_loss"]:
        # Not a bug: CS336 initialises embeddings N(0, 1), so a tied head gives logits of std ~sqrt(d_model).
        print(f"  (tied embeddings: the LM head is the std-1 embedding table, so initial logits have std about "
              f"sqrt(d_model) = {c['d_model'] ** 0.5:.0f} instead of about 1)")


def _list_presets(presets: dict, as_json: bool) -> int:
    import torch

    from lm.model import TransformerLM

    rows = []
    for name, cfg in presets.items():
        # On the meta device nothing is allocated, so even 2.7B is counted instantly.
        n = TransformerLM(cfg, device=torch.device("meta")).num_params()
        rows.append((name, cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads,
                     cfg.ffn_dim, n))
    if as_json:
        import json

        keys = ("name", "vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "parameters")
        print(json.dumps([dict(zip(keys, row)) for row in rows], indent=2))
        return 0
    shown = [(*row[:-1], _human(row[-1])) for row in rows]
    _print_table("model presets (lab model --preset NAME)",
                 ("preset", "vocab", "context", "d_model", "layers", "heads", "d_ff", "params"),
                 shown, right=set(range(1, 8)))
    return 0
