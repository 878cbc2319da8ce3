"""What a training run carries across a resume, and where its batches come from by default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainState:
    """Counters that survive a resume (the ``trainer`` entry of a checkpoint)."""

    step: int = 0
    tokens: int = 0
    time: float = 0.0
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    last_val_loss: float | None = None
    last_val_bpb: float | None = None

    def to_dict(self) -> dict:
        return {"time": self.time, "tokens": self.tokens, "best_val_loss": self.best_val_loss,
                "best_val_bpb": self.best_val_bpb, "last_val_loss": self.last_val_loss,
                "last_val_bpb": self.last_val_bpb}


def default_sampler(tokens, batch_size: int, context_length: int, seed: int):
    """The random-window batch sampler of :mod:`lm.data.batches`."""
    from lm.data.batches import BatchSampler

    return BatchSampler(tokens, batch_size, context_length, seed)


def default_eval_batches(tokens, batch_size: int, context_length: int, num_batches: int):
    """The fixed, evenly spread validation windows of :mod:`lm.data.batches`."""
    from lm.data.batches import eval_batches

    return eval_batches(tokens, batch_size, context_length, num_batches)
