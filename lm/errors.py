"""User-facing errors.

Anything a user can cause (a bad config value, a missing file, a corrupt
checkpoint) is raised as a :class:`LabError` whose message is one readable
paragraph naming the file, key or value and what would be valid. The CLI and
the TUI print the message and never a traceback; programming errors stay
ordinary exceptions so they are not hidden.
"""

from __future__ import annotations


class LabError(Exception):
    """An error caused by user input, with a message meant to be shown as is."""

    exit_code = 2


class ConfigError(LabError):
    """One or more problems in an experiment file or overrides.

    ``problems`` holds every problem found, so a user fixes them all at once.
    """

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"config error{where}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            msg = f"{len(self.problems)} config errors{where}:\n{lines}"
        super().__init__(msg)

    def __reduce__(self):  # rebuilt from its problems when it crosses a process boundary (a pool worker)
        return (type(self), (self.problems, self.source))


class CheckpointError(LabError):
    """A checkpoint that cannot be read or does not match the model."""


class DataError(LabError):
    """A corpus, token file or dataset that is missing, unreadable or malformed."""


class TokenizerError(LabError):
    """A tokenizer file or parameter that is malformed or out of range."""


class ExportError(LabError):
    """A model or folder that cannot be exported to, or imported from, another format."""


class OutputExistsError(LabError):
    """An output file or a non-empty output folder exists and ``--force`` was not given."""
