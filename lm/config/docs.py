"""The reference of every experiment key: type, default, choices and docstring.

``lab config docs`` prints it and the console's experiment form is built from
it, so both say the same thing. Torch-free.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import NamedTuple

from lm.config.loader import EXTENDS_KEY, PRESET_KEY, TOP_LEVEL_KEYS, field_types, did_you_mean, toml_value, type_text
from lm.config.schema import PRESETS, SECTIONS, ExperimentConfig, field_docs
from lm.errors import ConfigError


class FieldDoc(NamedTuple):
    """One documented key, for ``lab config docs`` and the console's form."""

    section: str  # "" for top-level keys
    name: str
    type: str
    default: str
    doc: str
    choices: tuple = ()

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def field_reference(section: str | None = None) -> list[FieldDoc]:
    """Every key an experiment file may set (or those of one section), with type, default and doc."""
    if section is not None and section not in SECTIONS and section != "top":
        raise ConfigError([f"unknown section {section!r}{did_you_mean(section, SECTIONS)}; "
                           f"sections are {', '.join(SECTIONS)} (or 'top' for top-level keys)"])
    out: list[FieldDoc] = []
    if section in (None, "top"):
        docs = field_docs(ExperimentConfig)
        defaults = ExperimentConfig()
        for name in TOP_LEVEL_KEYS:
            out.append(FieldDoc("", name, "a string", toml_value(getattr(defaults, name)), docs.get(name, "")))
        out.append(FieldDoc("", EXTENDS_KEY, "a string", "(none)",
                            "Another experiment file (relative to this one) to start from; this file's keys "
                            "override it. Chains are allowed, cycles are not."))
    for sec, cls in SECTIONS.items():
        if section not in (None, sec):
            continue
        docs, hints, default = field_docs(cls), field_types(cls), cls()
        if sec == "model":
            out.append(FieldDoc(sec, PRESET_KEY, "a string", "(none)",
                                "Start from a named model preset; the other [model] keys override it.",
                                tuple(PRESETS)))
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            value = getattr(default, f.name)
            shown = "(unset)" if value is None else toml_value(value)
            if sec == "model" and f.name == "vocab_size":
                shown += " (or tokenizer.vocab_size if not set)"
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()
            out.append(FieldDoc(sec, f.name, type_text(tp), shown, docs.get(f.name, ""), choices))
    return out
