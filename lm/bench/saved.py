"""Measure what autograd saves for backward, with ``torch.autograd.graph.saved_tensors_hooks``.

This is the ground truth the calculator's activation model is checked
against: every tensor a backward node keeps, counted once per storage
(a saved view keeps its whole base alive). Parameters and buffers are not
activations and are left out; bf16 copies of weights that autocast made
are counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Backward nodes of ops that only reshape or cast: a weight seen through them is still that weight.
_PASS_THROUGH = {"ViewBackward", "PermuteBackward", "TransposeBackward", "TBackward", "UnsqueezeBackward",
                 "ExpandBackward", "ToCopyBackward", "AliasBackward", "ReshapeAliasBackward", "SqueezeBackward",
                 "UnsafeViewBackward"}


@dataclass
class SavedTensors:
    """Bytes of unique storages saved for backward, split by what they are."""

    activations: int = 0
    weight_copies: int = 0
    by_shape: list[tuple[tuple[int, ...], str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.activations + self.weight_copies


def _derives_from_parameter(t: torch.Tensor) -> bool:
    """True if ``t`` is a parameter seen through views and dtype casts (an autocast weight copy)."""
    fn = t.grad_fn
    for _ in range(16):
        if fn is None:
            return False
        name = type(fn).__name__
        if name == "AccumulateGrad":
            return True
        if name.rstrip("0123456789") not in _PASS_THROUGH:
            return False
        nxt = [n for n, _ in fn.next_functions if n is not None]
        if len(nxt) != 1:
            return False
        fn = nxt[0]
    return False


def measure_saved(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor | None = None, *,
                  autocast_dtype: torch.dtype | None = None) -> SavedTensors:
    """Run a training forward (and the trainer's loss when ``targets`` is given); count saved bytes."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, tuple[int, bool, tuple[int, ...], str]] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen[ptr] = (storage.nbytes(), _derives_from_parameter(t), tuple(t.shape), str(t.dtype))
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(tokens.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            # Exactly as lm.train.trainer computes it: the fused LM head + loss, or the logits.
            model(tokens, targets=targets)
    out = SavedTensors()
    for nbytes, is_weight, shape, dtype in seen.values():
        if is_weight:
            out.weight_copies += nbytes
        else:
            out.activations += nbytes
        out.by_shape.append((shape, dtype, nbytes))
    return out
