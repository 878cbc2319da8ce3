"""``lab config``: show, check, document and create experiment files.

    lab config show x.toml [--set k=v ...]   the resolved config as TOML
    lab config check x.toml [y.toml ...]     validate (every problem at once)
    lab config docs [section]                every key: type, default, doc
    lab config new NAME [--preset tiny]      a commented starting file

Argument parsing only here at import time; the loader is imported in ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``lab config`` and its actions."""
    p = subparsers.add_parser(
        "config", help="show, check and document experiment files",
        description="Show, check and document experiment TOML files.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    show = actions.add_parser("show", help="print the resolved config (every default filled in) as TOML",
                              description="Print the fully resolved experiment as TOML.")
    show.add_argument("file", help="experiment file (or a name in experiments/, e.g. quickstart)")
    _add_set(show)
    show.add_argument("--plain", action="store_true", help="no syntax highlighting, even on a terminal")

    check = actions.add_parser("check", help="validate experiment files and report every problem",
                               description="Validate experiment files; exit 2 if any has a problem.")
    check.add_argument("files", nargs="+", metavar="file", help="experiment files")
    _add_set(check)

    docs = actions.add_parser("docs", help="document every key: type, default and meaning",
                              description="Print every experiment key with its type, default and docstring.")
    docs.add_argument("section", nargs="?", help="one section (data, model, ...) or 'top'; default: all")

    new = actions.add_parser("new", help="write a commented starting experiment file",
                             description="Write a new experiment file from a model preset.")
    new.add_argument("name", help="experiment name (also the file name)")
    new.add_argument("--preset", default="tiny", help="model preset (tiny, tinystories, small, ...); default tiny")
    new.add_argument("-o", "--output", help="file to write (default: experiments/NAME.toml)")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    return p


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one key (repeatable); VALUE is TOML (a bare word is a string)")


def run(args) -> int:
    """Dispatch to the chosen action; user errors surface as ConfigError."""
    return {"show": _show, "check": _check, "docs": _docs, "new": _new}[args.action](args)


def _show(args) -> int:
    from lm.config.loader import dump_experiment, load_experiment

    text = dump_experiment(load_experiment(args.file, args.overrides))
    if sys.stdout.isatty() and not args.plain:
        from rich.console import Console
        from rich.syntax import Syntax

        Console().print(Syntax(text, "toml", theme="ansi_dark", background_color="default", word_wrap=True))
    else:
        sys.stdout.write(text)
    return 0


def _check(args) -> int:
    from lm.config.loader import load_experiment
    from lm.errors import ConfigError

    failed = 0
    for f in args.files:
        try:
            cfg = load_experiment(f, args.overrides)
        except ConfigError as e:
            failed += 1
            print(f"lab: {e}", file=sys.stderr)
            continue
        m = cfg.model
        print(f"ok  {f}: {cfg.name!r}, model d_model={m.d_model} layers={m.num_layers} heads={m.num_heads} "
              f"vocab={m.vocab_size} context={m.context_length}, {cfg.training.steps} steps x "
              f"{cfg.tokens_per_step:,} tokens = {cfg.total_tokens / 1e6:,.1f}M tokens")
    return 2 if failed else 0


def _docs(args) -> int:
    import textwrap

    from lm.config.docs import field_reference

    section = None
    for fd in field_reference(args.section):
        if fd.section != section:
            if section is not None:
                print()
            section = fd.section
            print(f"[{section}]" if section else "# top-level keys (above the first [section])")
        print(f"  {fd.name} = {fd.default}    # {fd.type}")
        for line in textwrap.wrap(fd.doc, 76):
            print(f"      {line}")
        if fd.choices and fd.name == "preset":
            print(f"      Presets: {', '.join(fd.choices)}.")
    return 0


def _new(args) -> int:
    from lm.config.loader import load_experiment_text
    from lm.config.schema import PRESETS
    from lm.errors import ConfigError

    if args.preset not in PRESETS:
        raise ConfigError([f"unknown model preset {args.preset!r}; known presets: {', '.join(PRESETS)}"])
    path = Path(args.output) if args.output else Path("experiments") / f"{args.name}.toml"
    if path.exists() and not args.force:
        raise ConfigError([f"{path} already exists; pass --force to overwrite it or -o to pick another file"])
    text = _template(args.name, args.preset)
    load_experiment_text(text, str(path))  # the template must itself be valid (e.g. a bad name)
    path.parent.mkdir(parents=True, exist_ok=True)
    from lm.atomic import atomic_write

    atomic_write(path, text)
    print(f"wrote {path}; try: lab config show {path}   and   lab run {path}")
    return 0


def _template(name: str, preset: str) -> str:
    """A short commented experiment on the built-in corpus, sized by the preset."""
    from lm.config.loader import toml_value
    from lm.config.schema import PRESETS

    m = PRESETS[preset]
    return f'''# {name}: a new experiment (model preset "{preset}"). Every key not written
# here takes its default: `lab config docs` lists them, `lab config show` shows
# the resolved result.

name = {toml_value(name)}
description = ""

[data]
source = "builtin"         # a .txt file, a directory of them, or tinystories / owt / tinyshakespeare

[tokenizer]
vocab_size = {max(m.vocab_size, 512)}

[model]
preset = "{preset}"        # d_model {m.d_model}, {m.num_layers} layers, {m.num_heads} heads
context_length = {m.context_length}

[optimizer]
lr = 1e-3

[training]
steps = 1000
batch_size = 32
device = "auto"
'''
