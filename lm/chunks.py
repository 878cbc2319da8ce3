"""How many rows the fused LM head + loss takes at a time.

Shared by :func:`lm.functional.linear_cross_entropy`, which runs the chunks,
and the calculator (:mod:`lm.calc`), which models their memory and kernels;
it lives apart so the calculator stays importable without torch.
"""

from __future__ import annotations

CHUNK_LOGIT_ELEMENTS = 2**26
"""A chunk's fp32 logits stay near 256 MiB whatever the vocabulary."""


def loss_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of the fused LM head + cross-entropy for a vocabulary."""
    return max(1, CHUNK_LOGIT_ELEMENTS // vocab_size)
