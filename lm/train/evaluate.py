"""Validation loss, perplexity and bits per byte over a fixed set of windows.

The windows come from :func:`lm.data.batches.eval_batches`: the same windows
at every evaluation, spread evenly over the validation set, so numbers are
comparable across steps and across runs on the same data.

Bits per byte is ``sum of token losses / ln 2 / bytes of the predicted
tokens``. With a tokenizer the byte count is exact for the windows evaluated
(each target token's length in bytes, from the vocabulary); without one it
falls back to the validation set's overall bytes-per-token ratio
(``val_loss / ln 2 * val_tokens / val_bytes``), which the evenly spread
windows estimate well.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from lm.train.policy import DevicePolicy


@dataclass
class EvalResult:
    loss: float
    ppl: float
    bpb: float | None
    tokens: int
    bytes: int | None


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray | None:
    """Bytes of each token id (0 for ids the tokenizer does not have), or None if unknown."""
    vocab = getattr(tokenizer, "vocab", None)
    if not isinstance(vocab, dict) or not vocab:
        return None
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for tid, piece in vocab.items():
        if 0 <= int(tid) < vocab_size:
            lengths[int(tid)] = len(piece if isinstance(piece, (bytes, bytearray)) else str(piece).encode())
    return lengths


def to_device_batches(batches, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eval batches (numpy arrays or tensors) as int64 tensors on ``device``, made once per run."""
    out = []
    for x, y in batches:
        xt = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.long)
        yt = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y, dtype=torch.long)
        out.append((xt.to(device), yt.to(device)))
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], policy: DevicePolicy,
             *, token_bytes: torch.Tensor | None = None, bytes_per_token: float | None = None,
             eager: bool = False) -> EvalResult:
    """Mean next-token loss over ``batches``; one host sync at the end.

    ``eager`` runs compiled regions uncompiled (``torch.compiler.set_stance("force_eager")``): for
    the small CUDA-graphed models, whose evaluation otherwise compiles an eval-mode graph and
    records CUDA graphs for it twice (measured: 4 s of a 20 s TinyShakespeare run on an H200),
    more than its few batches take eagerly.

    ``token_bytes`` (a (vocab,) tensor on the device) gives exact bits per
    byte; otherwise ``bytes_per_token`` (the validation set's ratio) is used.
    """
    was_training = model.training
    model.eval()
    device = batches[0][0].device if batches else policy.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device if device.type != "mps" else "cpu")
    byte_sum = torch.zeros((), dtype=torch.int64, device=device)
    n_tokens = 0
    stance = torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext()
    try:
        with stance:
            for x, y in batches:
                with policy.autocast():
                    # The fused LM head + loss of training: the logits of the whole batch are never made.
                    loss = model(x, targets=y)
                # MPS has no float64: accumulate there in fp32 per batch, in fp64 on the host.
                loss_sum += (loss.double() if device.type != "mps" else loss.cpu().double()) * y.numel()
                n_tokens += y.numel()
                if token_bytes is not None:
                    byte_sum += token_bytes[y].sum()
    finally:
        model.train(was_training)
    if n_tokens == 0:
        return EvalResult(float("nan"), float("nan"), None, 0, None)
    mean = float(loss_sum.item()) / n_tokens
    ppl = math.exp(mean) if mean < 700 else float("inf")
    if token_bytes is not None:
        n_bytes = int(byte_sum.item())
        bpb = float(loss_sum.item()) / math.log(2) / n_bytes if n_bytes else None
        return EvalResult(mean, ppl, bpb, n_tokens, n_bytes)
    bpb = mean / math.log(2) / bytes_per_token if bytes_per_token else None
    return EvalResult(mean, ppl, bpb, n_tokens, None)
