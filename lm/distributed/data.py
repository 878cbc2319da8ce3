"""Each rank's slice of the globally drawn batch.

The experiment's meaning must not depend on the number of processes:
``training.batch_size`` is the global batch of a micro-step. Every rank runs
the same global :class:`~lm.data.batches.BatchSampler` (same seed, same
generator, so the same start positions in the same order) and gathers only
rows ``[rank * b, (rank + 1) * b)`` of each draw, ``b = batch_size / world``.
Ranks 0..N-1 together read exactly the batch a single process reads, and the
sampler state saved in a checkpoint is the global one: it resumes the same
data order on any world size that divides the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from lm.errors import ConfigError


def batch_split_problem(batch_size: int, world_size: int, key: str = "training.batch_size") -> str | None:
    """Why ``batch_size`` cannot be split over ``world_size`` ranks, with the valid choices; None if it can."""
    if world_size <= 1 or batch_size % world_size == 0:
        return None
    sizes = [b for b in range(world_size, max(8 * world_size, batch_size + world_size) + 1, world_size)]
    near = sorted(sizes, key=lambda b: (abs(b - batch_size), b))[:4]
    worlds = [w for w in range(1, batch_size + 1) if batch_size % w == 0]
    return (f"{key} = {batch_size} is the global batch and must divide evenly over {world_size} processes; "
            f"use a multiple of {world_size} (e.g. {', '.join(str(b) for b in sorted(near))}) or run on "
            f"{', '.join(str(w) for w in worlds)} process(es)")


def check_batch_split(cfg, world_size: int) -> None:
    """ConfigError naming every batch that does not divide over ``world_size`` ranks."""
    problems = [p for p in (batch_split_problem(cfg.training.batch_size, world_size),
                            batch_split_problem(cfg.eval.batch_size or cfg.training.batch_size, world_size,
                                                "eval.batch_size" if cfg.eval.batch_size else
                                                "training.batch_size (also the eval batch)"))
                if p is not None]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


class RankSlice:
    """Wraps the global sampler: draws the global positions, gathers this rank's rows only."""

    def __init__(self, sampler, rank: int, world_size: int):
        if sampler.batch_size % world_size:
            raise ConfigError([batch_split_problem(sampler.batch_size, world_size)])
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size
        self.local_batch = sampler.batch_size // world_size

    @property
    def batch_size(self) -> int:
        return self.local_batch

    def rows(self) -> slice:
        return slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)

    def next_positions(self) -> np.ndarray:
        return self.sampler.next_positions()[self.rows()]

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the next global batch as int64 ``(x, y)`` on ``device``."""
        window = torch.from_numpy(self.sampler._windows(self.next_positions()))
        device = torch.device(device)
        if device.type == "cuda":
            window = window.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            window = window.to(device)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def state_dict(self) -> dict:
        """The global sampler's state (independent of rank and world size)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def rank_eval_batches(batches: list, rank: int, world_size: int) -> list:
    """This rank's rows of every eval batch (the global eval windows, split like training batches)."""
    if world_size <= 1:
        return batches
    out = []
    for x, y in batches:
        b = x.shape[0] // world_size
        out.append((x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]))
    return out


def combine_eval(res, par, bytes_per_token: float | None):
    """The global EvalResult from every rank's result on its slice (sums of loss, tokens and bytes)."""
    import math

    from lm.train.evaluate import EvalResult

    loss_sum, tokens, n_bytes = par.sum_host([res.loss * res.tokens if res.tokens else 0.0, float(res.tokens),
                                              float(res.bytes or 0)])
    if tokens == 0:
        return EvalResult(float("nan"), float("nan"), None, 0, None)
    mean = loss_sum / tokens
    ppl = math.exp(mean) if mean < 700 else float("inf")
    if res.bytes is not None:
        return EvalResult(mean, ppl, loss_sum / math.log(2) / n_bytes if n_bytes else None, int(tokens), int(n_bytes))
    bpb = mean / math.log(2) / bytes_per_token if bytes_per_token else None
    return EvalResult(mean, ppl, bpb, int(tokens), None)
