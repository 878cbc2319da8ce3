"""Training and validation batches from a 1-D token array (usually a memmap).

Training draws random windows: each row of a batch starts at a position drawn
uniformly from ``[0, len(tokens) - T - 1]``, ``x = tokens[i:i+T]`` and
``y = tokens[i+1:i+T+1]``. The positions come from a seeded PCG64 generator
whose state is saved in checkpoints (:meth:`BatchSampler.state_dict`), so a
resumed run draws exactly the batches the uninterrupted run would have.

Validation uses fixed windows spread evenly over the whole validation set
(:func:`eval_batches`): every evaluation, in every run on the same data, sees
the same text, so the numbers compare across steps and runs.
"""

from __future__ import annotations

import numpy as np
import torch

from lm.errors import DataError


class BatchSampler:
    """Random ``(batch_size, context_length)`` windows of ``tokens``, reproducible from ``seed``."""

    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int = 0):
        if batch_size < 1 or context_length < 1:
            raise ValueError(f"batch_size and context_length must be positive, got {batch_size}, {context_length}")
        _check_length(tokens, context_length, "training")
        self.tokens = tokens
        self.batch_size = batch_size
        self.context_length = context_length
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batches_drawn = 0
        self._offsets = np.arange(context_length + 1, dtype=np.int64)

    def next_positions(self) -> np.ndarray:
        """The start positions of the next batch (advances the generator)."""
        high = len(self.tokens) - self.context_length  # exclusive: the last start leaves room for y
        self.batches_drawn += 1
        return self.rng.integers(0, high, size=self.batch_size, dtype=np.int64)

    def next_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch as int64 numpy arrays ``(x, y)`` of shape (batch_size, context_length)."""
        window = self._windows(self.next_positions())
        return window[:, :-1], window[:, 1:]

    def next_batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch as int64 tensors ``(x, y)`` on ``device``.

        On CUDA the host buffer is pinned and copied asynchronously; other
        devices (MPS in particular, where pinning is not supported) get a
        plain copy.
        """
        window = torch.from_numpy(self._windows(self.next_positions()))
        device = torch.device(device)
        if device.type == "cuda":
            window = window.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            window = window.to(device)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def _windows(self, starts: np.ndarray) -> np.ndarray:
        # One fancy-index gather reads only the pages the windows touch, even from a memmap.
        return np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int64)

    def state_dict(self) -> dict:
        """Everything needed to continue the exact sequence of batches (plain Python values)."""
        return {"seed": self.seed, "batches_drawn": self.batches_drawn,
                "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`, so the next batch is the one that would have come next."""
        bit_state = state["bit_generator"]
        if bit_state.get("bit_generator") != "PCG64":
            raise DataError(f"the batch sampler state was saved by a {bit_state.get('bit_generator')} generator, "
                            "not PCG64; this checkpoint cannot continue the same batches")
        self.rng.bit_generator.state = bit_state
        self.seed = state.get("seed", self.seed)
        self.batches_drawn = int(state.get("batches_drawn", 0))


def eval_positions(num_tokens: int, batch_size: int, context_length: int, num_batches: int) -> np.ndarray:
    """Start positions of the validation windows: ``num_batches * batch_size`` spread evenly, in order."""
    last = num_tokens - context_length - 1  # the last start that leaves room for y
    count = batch_size * num_batches
    return np.linspace(0, last, num=count).round().astype(np.int64).reshape(num_batches, batch_size)


def eval_batches(tokens: np.ndarray, batch_size: int, context_length: int, num_batches: int,
                 device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches covering ``tokens`` evenly: the same windows on every call.

    With fewer tokens than windows x context they overlap; with more, the gaps
    between them are equal, so the batches sample the whole validation set.
    Returns a list of int64 ``(x, y)`` tensors on ``device``.
    """
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be positive, got {batch_size}, {num_batches}")
    _check_length(tokens, context_length, "validation")
    offsets = np.arange(context_length + 1, dtype=np.int64)
    out = []
    for starts in eval_positions(len(tokens), batch_size, context_length, num_batches):
        window = torch.from_numpy(np.asarray(tokens[starts[:, None] + offsets], dtype=np.int64)).to(device)
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out


def get_batch(dataset: np.ndarray, batch_size: int, context_length: int,
              device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """CS336's ``get_batch``: random windows drawn with numpy's global generator."""
    starts = np.random.randint(0, len(dataset) - context_length, size=batch_size)
    window = np.asarray(dataset[starts[:, None] + np.arange(context_length + 1)], dtype=np.int64)
    window_t = torch.from_numpy(window).to(device)
    return window_t[:, :-1].contiguous(), window_t[:, 1:].contiguous()


def _check_length(tokens: np.ndarray, context_length: int, name: str) -> None:
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {tokens.shape}")
    if len(tokens) < context_length + 1:
        raise DataError(f"the {name} data has {len(tokens):,} tokens, fewer than context_length + 1 = "
                        f"{context_length + 1}; use more text (data.max_bytes, data.val_fraction) or a shorter "
                        "model.context_length")
