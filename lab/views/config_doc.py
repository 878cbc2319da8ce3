"""The experiment being edited in the Config tab: form fields, TOML text, validation.

The form is built from :func:`lm.config.docs.field_reference` (the same
reference ``lab config docs`` prints), and validation is the strict loader
``lab run`` uses (:func:`lm.config.loader.load_experiment_text`): the form's
values are written as TOML, loaded, and every problem of the resulting
:class:`~lm.errors.ConfigError` is attached to the fields it names. Nothing
here imports Textual, so it is tested on its own.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lm.config.docs import FieldDoc, field_reference
from lm.config.loader import (EXTENDS_KEY, PRESET_KEY, TOP_LEVEL_KEYS, dump_experiment, load_experiment,
                              load_experiment_text, parse_override_value, toml_value)
from lm.config.schema import SECTIONS, ExperimentConfig, to_dict
from lm.errors import ConfigError, LabError

_KEY_RE = re.compile(r"\b(?:" + "|".join(SECTIONS) + r")\.[A-Za-z_]\w*")
_TOP_RE = re.compile(r"^'?(" + "|".join(TOP_LEVEL_KEYS) + r")\b")
_WHERE_RE = re.compile(r" \((?:line \d+(?: of [^)]*)?|in --set [^)]*)\)")


@dataclass(frozen=True)
class FormField:
    """One editable key: how it is shown and parsed."""

    doc: FieldDoc
    kind: str
    """'select' (choices), 'switch' (true/false) or 'input' (anything typed)."""

    @property
    def key(self) -> str:
        return self.doc.key

    @property
    def section(self) -> str:
        return self.doc.section

    @property
    def is_string(self) -> bool:
        return self.doc.type == "a string"

    @property
    def widget_id(self) -> str:
        """A DOM id for the field's widget ('field-model-d_model')."""
        return "field-" + self.key.replace(".", "-")


def form_fields() -> list[FormField]:
    """Every key a form shows, top-level first then section by section (presets and extends
    are resolved away: the form shows every value explicitly)."""
    out = []
    for doc in field_reference():
        if doc.name in (EXTENDS_KEY, PRESET_KEY):
            continue
        kind = "select" if doc.choices else "switch" if doc.type == "true or false" else "input"
        out.append(FormField(doc, kind))
    return out


def find_field(fields: list[FormField], query: str) -> FormField | None:
    """The field a search names: its exact key or name, else the first key containing it, else the
    closest spelling (``warmpu`` finds ``schedule.warmup_steps``)."""
    import difflib

    q = query.strip().lower()
    if not q:
        return None
    for f in fields:
        if q in (f.key.lower(), f.doc.name.lower()):
            return f
    for f in fields:
        if q in f.key.lower():
            return f
    names = {f.doc.name.lower(): f for f in fields} | {f.key.lower(): f for f in fields}
    close = difflib.get_close_matches(q, list(names), n=1, cutoff=0.6)
    return names[close[0]] if close else None


def values_of(cfg: ExperimentConfig) -> dict[str, object]:
    """{dotted key: python value} of a resolved config (None for unset optional keys)."""
    d = to_dict(cfg)
    out: dict[str, object] = {}
    for f in form_fields():
        node = d if not f.section else d.get(f.section, {})
        out[f.key] = node.get(f.doc.name)
    return out


def display_text(f: FormField, value) -> str:
    """What an input shows for a value: strings as typed, other values as TOML."""
    if value is None:
        return ""
    if f.is_string and isinstance(value, str):
        return value
    return toml_value(value)


def parse_input(f: FormField, text: str):
    """The value an input's text stands for (None: left empty, the default applies)."""
    text = text.strip()
    if not text:
        return None
    if f.is_string:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return parse_override_value(text)
        return text
    return parse_override_value(text)


def toml_from_values(values: dict[str, object]) -> str:
    """TOML text of form values (None values left out)."""
    top = [f"{k} = {toml_value(v)}" for k, v in values.items() if "." not in k and v is not None]
    lines = list(top)
    for section in SECTIONS:
        rows = [f"{k.split('.', 1)[1]} = {toml_value(v)}" for k, v in values.items()
                if k.startswith(section + ".") and v is not None]
        if rows:
            lines += ["", f"[{section}]", *rows]
    return "\n".join(lines) + "\n"


def values_from_toml_dict(data: dict, base: dict[str, object]) -> dict[str, object]:
    """Form values from a parsed TOML dict (raw, unresolved), keeping ``base`` for keys it lacks."""
    out = dict(base)
    for f in form_fields():
        node = data if not f.section else data.get(f.section)
        if isinstance(node, dict) and f.doc.name in node:
            out[f.key] = node[f.doc.name]
    return out


def problems_by_key(problems: list[str]) -> dict[str, list[str]]:
    """Each problem under every key it names ('' for problems naming none), with its
    '(line N)' location removed: the form's TOML is generated, its line numbers mean nothing."""
    out: dict[str, list[str]] = {}
    for p in problems:
        text = _WHERE_RE.sub("", p)
        top = _TOP_RE.match(text)
        keys = list(dict.fromkeys(([top[1]] if top else []) + _KEY_RE.findall(text))) or [""]
        for k in keys:
            out.setdefault(k, []).append(text)
    return out


@dataclass
class Validation:
    """The outcome of loading the form's TOML: a config, or the problems (by key)."""

    cfg: ExperimentConfig | None
    problems: list[str] = field(default_factory=list)
    by_key: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """What a valid config still needs before it can train (a dataset to download)."""

    @property
    def ok(self) -> bool:
        return self.cfg is not None


def validate_text(text: str, source_name: str, base_dir: Path | None = None, keep_lines: bool = False
                  ) -> Validation:
    """Load TOML text with the strict loader; problems come back grouped by key.

    ``keep_lines``: keep the '(line N)' locations (the raw TOML view, whose lines
    the user sees); otherwise they are removed (the form's TOML is generated).
    """
    try:
        cfg = load_experiment_text(text, source_name, base_dir=base_dir)
    except ConfigError as e:
        cleaned = list(e.problems) if keep_lines else [_WHERE_RE.sub("", p) for p in e.problems]
        return Validation(None, cleaned, problems_by_key(e.problems))
    except LabError as e:
        return Validation(None, [str(e)], {"": [str(e)]})
    from lab.queue.validate import dataset_problems

    return Validation(cfg, warnings=dataset_problems(cfg))


@dataclass
class ExperimentDoc:
    """An experiment opened in the console: where it came from and what it resolved to."""

    source: str
    """The file it was loaded from ('' for a new, unsaved experiment)."""
    overrides: tuple[str, ...]
    loaded: ExperimentConfig | None
    """The resolved config; None when the file has problems (the form shows them)."""
    original_text: str = ""

    @classmethod
    def open(cls, path: str, overrides: list[str] | tuple[str, ...] = (), base_dir: Path | None = None,
             strict: bool = True) -> "ExperimentDoc":
        """Load an experiment file (a path or a name under experiments/) with --set overrides.

        A file with problems raises ConfigError, unless ``strict`` is False: then
        it opens anyway (``loaded`` None) so the form can show the problems.
        """
        from lm.config.loader import resolve_experiment_path

        base = base_dir or Path.cwd()
        resolved = resolve_experiment_path(path, base)
        try:
            text = resolved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LabError(f"cannot read {resolved}: {e}") from None
        try:
            cfg = load_experiment(resolved, list(overrides), base_dir=base)
        except ConfigError:
            if strict:
                raise
            cfg = None
        try:
            source = str(resolved.resolve().relative_to(base.resolve()))
        except ValueError:
            source = str(resolved)
        if overrides and cfg is not None:
            text = dump_experiment(cfg)
        return cls(source, tuple(overrides), cfg, text)

    def form_values(self) -> dict[str, object]:
        """What the form shows: the resolved config, or (for a file with problems) its own keys
        over the defaults."""
        if self.loaded is not None:
            return values_of(self.loaded)
        defaults = values_of(ExperimentConfig())
        try:
            return values_from_toml_dict(tomllib.loads(self.original_text), defaults)
        except tomllib.TOMLDecodeError:
            return defaults

    @classmethod
    def default(cls) -> "ExperimentDoc":
        """A new experiment with every default (the form of ``lab config new``)."""
        cfg = ExperimentConfig()
        return cls("", (), cfg, dump_experiment(cfg))

    def launch_args(self, cfg: ExperimentConfig) -> tuple[str | None, tuple[str, ...]]:
        """(experiment file, overrides) that reproduce ``cfg``, or (None, ()) when it was edited
        (the console then writes the resolved config into the run directory)."""
        if self.source and self.loaded is not None and cfg == self.loaded:
            return self.source, self.overrides
        return None, ()


def save_path(name: str, base_dir: Path | None = None) -> Path:
    """Where 'Save as' writes: a bare name goes to experiments/<name>.toml."""
    base = base_dir or Path.cwd()
    name = name.strip()
    if not name:
        raise LabError("give a file name for the experiment (e.g. my_run or experiments/my_run.toml)")
    p = Path(name).expanduser()
    if len(p.parts) == 1:
        p = Path("experiments") / p
    if p.suffix != ".toml":
        p = p.with_name(p.name + ".toml")
    return p if p.is_absolute() else base / p


_LINE_RE = re.compile(r"^(\s*)([A-Za-z_][\w-]*)(\s*=\s*)(.*?)(\s+#.*)?$")
_TABLE_RE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def patch_text(original: str, changes: dict[str, object]) -> str:
    """``original`` TOML with the dotted keys in ``changes`` set to their new values, every other line
    (comments, order, presets) kept; a None value removes the key (its default applies again).

    A key's line keeps its trailing comment; a key the text lacks is added under its section
    (a new section at the end if there is none). Values are written as TOML (``toml_value``).
    """
    lines = original.splitlines()
    pending = dict(changes)
    section = ""
    out: list[str] = []
    section_end: dict[str, int] = {}
    for line in lines:
        table = _TABLE_RE.match(line)
        if table:
            section = table[1].strip()
            out.append(line)
            section_end[section] = len(out)
            continue
        m = _LINE_RE.match(line)
        key = f"{section}.{m[2]}" if m and section else (m[2] if m else None)
        if key is not None and key in pending:
            value = pending.pop(key)
            if value is not None:
                out.append(f"{m[1]}{m[2]}{m[3]}{toml_value(value)}{m[5] or ''}")
        else:
            out.append(line)
        if line.strip() and not line.lstrip().startswith("#"):
            section_end[section] = len(out)
    # Keys the text did not have: under their section, top-level keys before the first table.
    inserts: dict[int, list[str]] = {}
    new_sections: dict[str, list[str]] = {}
    for key, value in pending.items():
        if value is None:
            continue
        sec, _, name = key.rpartition(".")
        line = f"{name} = {toml_value(value)}"
        if sec in section_end or not sec:
            inserts.setdefault(section_end.get(sec, 0), []).append(line)
        else:
            new_sections.setdefault(sec, []).append(line)
    for at in sorted(inserts, reverse=True):
        out[at:at] = inserts[at]
    for sec, rows in new_sections.items():
        out += ["", f"[{sec}]", *rows]
    return "\n".join(out) + "\n"


def save_experiment(cfg: ExperimentConfig, name: str, base_dir: Path | None = None, text: str | None = None) -> Path:
    """Write the config to a new file (never overwrites one).

    ``text`` (the experiment's own TOML with the edits applied, comments and all) is written when it
    loads, from the new file's place, to exactly ``cfg``; otherwise the resolved config (tomli-w, via
    dump_experiment), which always does.
    """
    path = save_path(name, base_dir)
    if path.exists():
        raise LabError(f"{path} already exists; choose another name (the console never overwrites a file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is not None:
        try:
            same = load_experiment_text(text, str(path), base_dir=path.parent) == cfg
        except LabError:
            same = False
        text = text if same else None
    text = text if text is not None else dump_experiment(cfg)
    tomllib.loads(text)  # dump_experiment's contract: it loads back; fail here rather than leave a bad file
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
    return path
