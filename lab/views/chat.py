"""The Chat tab's model session and checkpoint choice, without Textual.

:class:`ChatSession` holds the loaded generator of one (run, checkpoint) and
is used by the tab's worker only (under its lock), so the pane never holds
model state a worker writes. :func:`checkpoint_choice` says which checkpoint a
run is talked to by default and why: ``best`` if it exists, else ``latest``
(a run stopped before its first evaluation has no best.pt).
"""

from __future__ import annotations

import threading
from pathlib import Path

WHY = {"best": "the lowest validation loss so far", "latest": "no best.pt yet: the most recent checkpoint"}


def checkpoint_options(run_dir: str | Path) -> list[str]:
    """The checkpoints a run has, as names ``best``, ``latest``, ``step_N`` (named ones first)."""
    from lm.runs import RunDir

    files = RunDir(run_dir).checkpoints()
    named = [p.stem for p in files if p.stem in ("best", "latest")]
    return sorted(named) + sorted((p.stem for p in files if p.stem.startswith("step_")), reverse=True)


def checkpoint_choice(run_dir: str | Path) -> tuple[str | None, str]:
    """(the default checkpoint, a line saying which and why); (None, why not) when there is none."""
    from lm.runs import RunDir

    which = RunDir(run_dir).default_checkpoint()
    if which is None:
        return None, f"{Path(run_dir).name} has no checkpoint yet"
    why = WHY.get(which, "the newest step checkpoint (no best.pt or latest.pt)")
    return which, f"checkpoints/{which}.pt: {why}"


class ChatSession:
    """The generator of one (run, checkpoint), loaded once and kept (for the chat worker)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.key: tuple[str, str] | None = None
        self.generator = None

    def generator_for(self, run: str, checkpoint: str):
        """The Generator for (run, checkpoint), loading it if another one (or none) is loaded."""
        key = (run, checkpoint)
        if self.key != key or self.generator is None:
            from lm.decode import Generator, load

            self.key, self.generator = None, None
            loaded = load(run, checkpoint, "auto")
            self.generator = Generator(loaded.model, loaded.tokenizer)
            self.key = key
        return self.generator

    def reset(self) -> None:
        """Forget the running text (the next prompt starts a new document)."""
        if self.generator is not None:
            self.generator.reset()
