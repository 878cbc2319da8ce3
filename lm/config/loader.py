"""The strict experiment loader: TOML file + ``--set`` overrides -> ExperimentConfig.

Precedence: ``--set section.key=value`` beats the file, the file beats the
file it ``extends``, and that beats the schema defaults. ``[model] preset =
"small"`` starts the model from ``ModelConfig.from_name`` before the other
``[model]`` keys apply; ``model.vocab_size`` defaults to
``tokenizer.vocab_size`` when no layer sets it.

Validation is strict and complete: unknown keys (with a did-you-mean), wrong
types, invalid choices and cross-field rules are all collected and raised
together as one :class:`~lm.errors.ConfigError`, each problem naming its key and
where it was set (``line 12``, ``line 3 of experiments/tinystories.toml`` or
``in --set training.steps=abc``). tomllib gives no positions, so a small scan
of the TOML text maps each key to its line.

This module is torch-free: ``lab config`` and the console import it cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from lm.atomic import atomic_write
from lm.config.schema import PRESETS, SECTIONS, ExperimentConfig, to_dict
from lm.config.rules import NAMED_DATASETS, check_rules, resolve_path  # noqa: F401 (NAMED_DATASETS re-exported)
from lm.config.toml_lines import key_lines
from lm.errors import ConfigError

TOP_LEVEL_KEYS = ("name", "description", "runs_dir")
EXTENDS_KEY = "extends"
PRESET_KEY = "preset"
EXPERIMENTS_DIR = "experiments"
_KEY_PART_RE = re.compile(r"[A-Za-z0-9_-]+")

KeyPath = tuple[str, ...]


# ----------------------------------------------------------------------------- overrides

class Override(NamedTuple):
    """One ``--set`` assignment: dotted key, parsed value, and the text the user gave."""

    key: str
    value: Any
    text: str

    @property
    def path(self) -> KeyPath:
        return tuple(self.key.split("."))


def parse_override_value(raw: str) -> Any:
    """A ``--set`` value: parsed as a TOML value, or taken as a bare string if that fails."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return raw.strip()
    # "1\nx = 2" parses, but is not one value: keep it as the string it is.
    return parsed["v"] if len(parsed) == 1 else raw.strip()


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """Parse ``["training.steps=100", 'model.norm="post"', "model.norm=post"]`` into Overrides.

    Raises ConfigError listing every malformed item (no ``=``, or a bad key).
    """
    out, problems = [], []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(_KEY_PART_RE.fullmatch(p) for p in parts):
            problems.append(f"--set expects section.key=value (for example training.steps=100), got {item!r}")
            continue
        out.append(Override(key, parse_override_value(raw), item))
    if problems:
        raise ConfigError(problems)
    return out


def _normalize_overrides(overrides) -> list[Override]:
    """Accept ``["k=v", ...]``, a list of Override, or a mapping ``{"optimizer.lr": 1e-3}``
    (nested tables are flattened to dotted keys, as a sweep's ``[set]`` table may be)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        from lm.config.dotted import flatten

        return [Override(key, v, f"{key}={toml_value(v)}") for key, v in flatten(overrides).items()]
    items = list(overrides)
    parsed = iter(parse_overrides(str(o) for o in items if not isinstance(o, Override)))
    return [o if isinstance(o, Override) else next(parsed) for o in items]


class _Origin(NamedTuple):
    """Where a key's value was set: a file and line, or a --set item."""

    file: str | None = None
    line: int | None = None
    override: str | None = None


def _apply(data: dict, origins: dict, overrides: list[Override], problems: list[str]) -> None:
    """Set each override into the nested dict ``data`` (in place), recording its origin."""
    for ov in overrides:
        node = data
        for i, part in enumerate(ov.path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                where = ".".join(ov.path[: i + 1])
                problems.append(f"in --set {ov.text}: {where} is a value, not a section")
                break
            node = nxt
        else:
            value = ov.value
            if isinstance(value, dict) and isinstance(node.get(ov.path[-1]), dict):
                value = _deep_merge(node[ov.path[-1]], value)
            node[ov.path[-1]] = value
            origins[ov.path] = _Origin(override=ov.text)


def apply_overrides(cfg_dict_or_experiment, overrides, *, source: str | None = None):
    """Apply ``--set`` style overrides to a config dict or an ExperimentConfig.

    ``overrides`` is a list of ``"section.key=value"`` strings or a mapping
    ``{"section.key": value}``. A dict comes back as a new dict with the values
    set (not validated); an ExperimentConfig comes back as a new, fully
    validated ExperimentConfig (problems name the ``--set`` item). Note that a
    resolved config spells out every model field, so a ``model.preset``
    override does nothing there: to vary a preset use
    ``load_experiment(path, overrides)`` instead.
    """
    ovs = _normalize_overrides(overrides)
    if isinstance(cfg_dict_or_experiment, ExperimentConfig):
        data, origins, problems = to_dict(cfg_dict_or_experiment), {}, []
        _apply(data, origins, ovs, problems)
        return _build(data, origins, problems, main=source, base_dir=Path.cwd())
    data = _deep_copy(cfg_dict_or_experiment)
    problems = []
    _apply(data, {}, ovs, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return data


# ----------------------------------------------------------------------------- files

def load_experiment(path, overrides=(), *, base_dir=None, check_paths: bool = True) -> ExperimentConfig:
    """Load, resolve and validate an experiment file; raise ConfigError listing every problem.

    ``path`` may also be a bare name (``quickstart``) for ``experiments/<name>.toml``.
    ``base_dir`` (default: the current directory) is what relative data and
    tokenizer paths, and the experiments/ folder, are resolved against.
    ``check_paths=False`` skips the existence checks of data and tokenizer
    paths: for reading a finished run's config.toml, whose corpus may be gone.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    resolved = resolve_experiment_path(path, base)
    display = str(path) if resolved == resolve_path(str(path), base) else _display(resolved)
    return load_experiment_text(_read_text(resolved, display), display, overrides, base_dir=base,
                                check_paths=check_paths, _file=resolved)


def load_experiment_text(text: str, source_name: str, overrides=(), *, base_dir=None, check_paths: bool = True,
                         _file: Path | None = None) -> ExperimentConfig:
    """Like :func:`load_experiment`, for TOML text; ``source_name`` names it in errors.

    An ``extends`` path is resolved against the directory of ``source_name``.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    file = (_file or resolve_path(source_name, base)).resolve()
    data, origins = _load_layers(text, source_name, file, chain=())
    problems: list[str] = []
    try:
        ovs = _normalize_overrides(overrides)
    except ConfigError as e:
        raise ConfigError(e.problems, source=source_name) from None
    _apply(data, origins, ovs, problems)
    return _build(data, origins, problems, main=source_name, base_dir=base, check_paths=check_paths)


def experiment_from_dict(d: Mapping, source: str | None = None, *, base_dir=None,
                         check_paths: bool = True) -> ExperimentConfig:
    """Validate a plain dict (e.g. parsed TOML, or a sweep's trial) exactly like a file."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _build(_deep_copy(d), {}, [], main=source, base_dir=base, check_paths=check_paths)


def resolve_experiment_path(path, base_dir: Path | None = None) -> Path:
    """The file ``path`` names: as given, else ``experiments/<path>`` (+ ``.toml``).

    Raises ConfigError naming the path and suggesting similar experiment files.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    p = Path(path).expanduser()
    candidates = [p if p.is_absolute() else base / p]
    if not p.is_absolute() and p.parts and p.parts[0] != EXPERIMENTS_DIR:
        candidates += [base / EXPERIMENTS_DIR / p]
    candidates += [c.with_name(c.name + ".toml") for c in candidates if c.suffix != ".toml"]
    for c in candidates:
        if c.is_file():
            return c
    if candidates[0].is_dir():
        raise ConfigError([f"{path} is a directory; give an experiment .toml file"])
    known = list_experiment_files(base)
    by_name = {Path(k).name: k for k in reversed(known)}
    close = [by_name[n] for n in difflib.get_close_matches(p.name if p.suffix else p.name + ".toml", by_name, n=3)]
    close += [k for k in difflib.get_close_matches(str(path), known, n=3, cutoff=0.5) if k not in close]
    hint = (f"; did you mean {' or '.join(close[:3])}?" if close
            else f"; experiment files in {EXPERIMENTS_DIR}/: {', '.join(known[:12])}" if known else "")
    raise ConfigError([f"no such experiment file: {path}{hint}"])


def list_experiment_files(base_dir: Path | None = None) -> list[str]:
    """Experiment files under ``experiments/`` (sweep files excluded), as relative paths."""
    root = Path(base_dir) if base_dir is not None else Path.cwd()
    folder = root / EXPERIMENTS_DIR
    if not folder.is_dir():
        return []
    return sorted(str(f.relative_to(root)) for f in folder.rglob("*.toml") if "sweeps" not in f.parts)


def _read_text(path: Path, display: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte {e.start}); TOML files must be UTF-8"], source=display) from None
    except OSError as e:
        raise ConfigError([f"cannot read {display}: {e.strerror}"], source=display) from None


def _parse_toml(text: str, display: str, extended_by: str | None = None) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at (line \d+, column \d+|end of document)\)$", msg)
        where = f"at the end of the file (line {max(1, len(text.splitlines()))})"
        if m:
            msg = msg[: m.start()]
            if m[1] != "end of document":
                where = f"at {m[1]}"
        via = f" (extended by {extended_by})" if extended_by else ""
        raise ConfigError([f"TOML syntax error {where}: {msg}{via}"], source=display) from None


def _load_layers(text: str, display: str, file: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    """Parse one file and, recursively, the files it extends: (merged dict, key origins)."""
    data = _parse_toml(text, display, extended_by=_display(chain[-1]) if chain else None)
    lines = key_lines(text)
    origins = {k: _Origin(display, n) for k, n in lines.items()}
    if EXTENDS_KEY not in data:
        return data, origins
    ext = data.pop(EXTENDS_KEY)
    where = f"{EXTENDS_KEY} (line {lines.get((EXTENDS_KEY,), '?')} of {display})"
    if not isinstance(ext, str) or not ext:
        raise ConfigError([f"{where} must be a path to another experiment file, got {_show(ext)}"], source=display)
    base_file = (file.parent / ext).resolve()
    if base_file in chain or base_file == file:
        cycle = " -> ".join(_display(p) for p in (*chain, file, base_file))
        raise ConfigError([f"{where} makes a cycle: {cycle}"], source=display)
    if not base_file.is_file():
        siblings = sorted(str(Path(os.path.relpath(f, file.parent))) for f in base_file.parent.glob("*.toml")) \
            if base_file.parent.is_dir() else []
        close = difflib.get_close_matches(ext, siblings, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError([f"{where}: no such file {_display(base_file)}{hint}"], source=display)
    base_display = _display(base_file)
    base_data, base_origins = _load_layers(_read_text(base_file, base_display), base_display, base_file,
                                           chain + (file,))
    return _deep_merge(base_data, data), {**base_origins, **origins}


def _display(p: Path) -> str:
    """A path as short as is still clear: relative to the current directory when inside it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _deep_copy(d):
    if isinstance(d, Mapping):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_deep_copy(v) for v in d]
    return d


# ----------------------------------------------------------------------------- validation

@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of a schema dataclass."""
    return typing.get_type_hints(cls)


def _field_names(section: str) -> list[str]:
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    return names + [PRESET_KEY] if section == "model" else names


def type_text(tp) -> str:
    """A type as a user reads it: 'an integer', "one of 'pre', 'post'", 'a list of numbers'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args if a is not type(None))
    if origin is list:
        inner = type_text(args[0]).removeprefix("an ").removeprefix("a ")
        return f"a list of {inner}s" if not inner.endswith("s") else f"a list of {inner}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def choice_problems(obj, section: str) -> list[str]:
    """Every field of the schema dataclass ``obj`` typed as a ``Literal`` whose value is not one of its choices.

    The one place choices are checked: the choices are the Literal's own
    arguments, so the schema never lists them a second time.
    """
    out = []
    for name, tp in field_types(type(obj)).items():
        if typing.get_origin(tp) is typing.Literal:
            value = getattr(obj, name)
            if not coerce_value(value, tp)[0]:
                hint = did_you_mean(value, typing.get_args(tp)) if isinstance(value, str) else ""
                out.append(f"{section}.{name} must be {type_text(tp)}, got {_show(value)}{hint}")
    return out


def _kind(v) -> str:
    if isinstance(v, bool):
        return "a boolean"
    return {int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)


def toml_value(v) -> str:
    """A value written as TOML, on one line (what the user would type)."""
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    import tomli_w

    return tomli_w.dumps({"v": v})[len("v = "):].strip()


def _show(v) -> str:
    """A rejected value and its TOML kind, for messages."""
    shown = toml_value(v) if isinstance(v, bool) else repr(v)
    return f"{shown} ({_kind(v)})"


def coerce_value(value, tp) -> tuple[bool, Any]:
    """(ok, value converted to the field's type); an int is accepted where a float is expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return (value in args and isinstance(value, str)), value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is not type(None):
                ok, v = coerce_value(value, a)
                if ok:
                    return True, v
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        out = [coerce_value(x, args[0]) for x in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"schema type {tp!r} is not handled by the loader")


class _Checker:
    """Collects problems, each placed at the line (or --set item) that set its key."""

    def __init__(self, origins: dict, main: str | None):
        self.origins, self.main = origins, main
        self.bad: set[str] = set()  # dotted keys whose value was rejected by the type check
        self.entries: list[tuple[tuple, str]] = []  # (sort key, message)

    def origin(self, key: str, exact: bool = False) -> _Origin | None:
        """Where ``key`` (or, unless exact, its closest enclosing table) was set."""
        path = tuple(key.split("."))
        for i in range(len(path), len(path) - 1 if exact else 0, -1):
            if (o := self.origins.get(path[:i])) is not None:
                return o
        return None

    def render(self, o: _Origin) -> str:
        if o.override is not None:
            return f"in --set {o.override}"
        if o.file is None or o.file == self.main:
            return f"line {o.line}"
        return f"line {o.line} of {o.file}"

    def add(self, message: str, *keys: str) -> None:
        """Record ``message``, placed at the first of ``keys`` that has an origin: at the
        ``{at}`` marker, else right after the key when the message opens with it, else at the end."""
        key, o = next(((k, o) for k in keys if (o := self.origin(k, exact=True))), (None, None))
        if o is None:
            o = next((o for k in keys if (o := self.origin(k))), None)
        at = f" ({self.render(o)})" if o else ""
        if "{at}" in message:
            message = message.replace("{at}", at)
        elif at:
            form = next((f for f in (f"'{key}'", key) if key and message.startswith(f)), None)
            rest = message[len(form):] if form else ""
            message = f"{form}{at}{rest}" if form and not rest.startswith(" (") else f"{message}{at}"
        # Report in reading order: this file by line, then extended files, then --set items.
        rank = (3, "", 0) if o is None else (2, "", 0) if o.override else \
            (0 if o.file in (None, self.main) else 1, o.file or "", o.line or 0)
        self.entries.append((rank, message))

    def messages(self) -> list[str]:
        return [m for _, m in sorted(self.entries, key=lambda e: e[0])]

    def need(self, cond: bool, message: str, *keys: str) -> None:
        """Add ``message`` unless ``cond`` holds or one of ``keys`` already failed its type check."""
        if not cond and not self.bad.intersection(keys):
            self.add(message, *keys)


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """The hint ``" — did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def _suggest_field(section: str, key: str) -> str:
    hint = did_you_mean(key, _field_names(section))
    if hint:
        return hint.replace("'", f"'{section}.", 1)
    for other in SECTIONS:
        if key in _field_names(other):
            return f" — did you mean '{other}.{key}'?"
    return did_you_mean(f"{section}.{key}", [f"{s}.{f}" for s in SECTIONS for f in _field_names(s)])


def _build(data: dict, origins: dict, problems: list[str], *, main: str | None, base_dir: Path,
           check_paths: bool = True) -> ExperimentConfig:
    """Check types and keys of the merged dict, build the config, check cross-field rules."""
    ck = _Checker(origins, main)
    top: dict[str, Any] = {}
    tables: dict[str, dict] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if isinstance(value, dict):
                tables[key] = value
            else:
                ck.add(f"'{key}' must be a [{key}] section (a table), got {_show(value)}", key)
        elif key in TOP_LEVEL_KEYS:
            if isinstance(value, str):
                top[key] = value
            else:
                ck.bad.add(key)
                ck.add(f"{key} must be a string, got {_show(value)}", key)
        elif key == EXTENDS_KEY:
            ck.add(f"'{key}' can only be set in an experiment file (a path relative to it)", key)
        elif isinstance(value, dict):
            close = difflib.get_close_matches(key, list(SECTIONS), n=1, cutoff=0.6)
            hint = f" — did you mean [{close[0]}]?" if close else f"; sections are {', '.join(SECTIONS)}"
            ck.add(f"unknown section [{key}]{{at}}{hint}", key)
        else:
            from_file = (o := ck.origin(key)) is not None and o.override is None
            note = " (keys above the first [section] header are top-level)" if from_file else ""
            hint = next((f" — did you mean '{s}.{key}'?{note}" for s in SECTIONS if key in _field_names(s)), "")
            hint = hint or did_you_mean(key, (*TOP_LEVEL_KEYS, *SECTIONS, EXTENDS_KEY))
            ck.add(f"unknown key '{key}'{{at}}{hint}", key)

    values: dict[str, dict] = {s: {} for s in SECTIONS}
    preset = None
    for section, table in tables.items():
        hints = field_types(SECTIONS[section])
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if section == "model" and key == PRESET_KEY:
                if isinstance(value, str) and value in PRESETS:
                    preset = value
                else:
                    ck.add(f"{dotted} must be one of {', '.join(repr(p) for p in PRESETS)}, got {_show(value)}"
                           + did_you_mean(str(value), PRESETS), dotted)
                continue
            if key not in hints:
                ck.add(f"unknown key '{dotted}'{{at}}{_suggest_field(section, key)}", dotted)
                continue
            ok, coerced = coerce_value(value, hints[key])
            if ok:
                values[section][key] = coerced
            else:
                ck.bad.add(dotted)
                choices = typing.get_args(hints[key]) if typing.get_origin(hints[key]) is typing.Literal else ()
                hint = did_you_mean(value, choices) if isinstance(value, str) else ""
                ck.add(f"{dotted} must be {type_text(hints[key])}, got {_show(value)}{hint}", dotted)

    tok = SECTIONS["tokenizer"](**values["tokenizer"])
    model_kwargs = dataclasses.asdict(PRESETS[preset]) if preset else {}
    model_kwargs.update(values["model"])
    if "vocab_size" not in values["model"] and "model.vocab_size" not in ck.bad:
        model_kwargs["vocab_size"] = tok.vocab_size
    cfg = ExperimentConfig(
        **top, tokenizer=tok, model=SECTIONS["model"](**model_kwargs),
        **{s: SECTIONS[s](**values[s]) for s in SECTIONS if s not in ("tokenizer", "model")},
    )
    check_rules(cfg, ck, base_dir if check_paths else None)
    problems = problems + ck.messages()
    if problems:
        raise ConfigError(problems, source=main)
    return cfg


# ----------------------------------------------------------------------------- writing

def dump_experiment(cfg: ExperimentConfig) -> str:
    """The full resolved config as TOML, sections in schema order; loads back to an equal config.

    Values are written by tomli_w one key per line (arrays inline, which
    tomli_w would spread over several lines).
    """
    out: list[str] = []
    tables = []
    for key, value in to_dict(cfg).items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            out.append(f"{key} = {toml_value(value)}")
    for key, table in tables:
        out += ["", f"[{key}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


def write_resolved(cfg: ExperimentConfig, path) -> Path:
    """Write :func:`dump_experiment` to ``path`` atomically (:func:`lm.atomic.atomic_write`)."""
    return atomic_write(path, dump_experiment(cfg))
