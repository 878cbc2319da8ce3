"""When a run counts as diverged, from its train records: the rule the sweep driver kills trials by and
``lab compare`` reports (the engine's own halt is the non-finite case, checked on the device)."""

from __future__ import annotations

import math


class DivergenceWatch:
    """Decides from train records whether a trial diverged.

    Diverged: a non-finite loss (written as null in metrics.jsonl), or, once
    warmup is over, a loss above the starting loss; at that point the run has
    undone all its progress and a sweep should not pay for the rest of it. The
    starting loss is the first logged loss, capped at ``ln(vocab_size)`` (what
    an untrained model scores) when given: with ``log_every`` > 1 the first
    record may come after a high learning rate already made things worse.
    "Above" means by more than ``tolerance`` (10 %): a trial whose learning rate
    is merely too low sits at its starting loss give or take batch noise, which
    is slow, not diverged; a diverging one overshoots by far more.
    """

    tolerance = 0.1

    def __init__(self, warmup_steps: int, vocab_size: int | None = None):
        self.warmup_steps = warmup_steps
        self.ceiling = math.log(vocab_size) if vocab_size and vocab_size > 1 else math.inf
        self.start_loss: float | None = None

    def reset(self) -> None:
        self.start_loss = None

    def check(self, record: dict) -> str | None:
        """A reason if this train record shows divergence, else None."""
        loss, step = record.get("loss"), record.get("step", 0)
        step = step if type(step) is int else 0
        if not isinstance(loss, (int, float)) or isinstance(loss, bool) or not math.isfinite(loss):
            return f"non-finite loss at step {step}"
        if self.start_loss is None:
            self.start_loss = min(float(loss), self.ceiling)
            return None
        if step > self.warmup_steps and loss > self.start_loss * (1 + self.tolerance):
            return (f"loss {loss:.4g} at step {step} is above the starting loss {self.start_loss:.4g} "
                    f"after warmup ({self.warmup_steps} steps)")
        return None
