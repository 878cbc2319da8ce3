"""Adapters for the official CS336 assignment-1 test suite.

Every function has exactly the name and signature of the assignment's
``tests/adapters.py`` and delegates to the real implementation in ``lm``, so a
student runs the official suite against this library by writing::

    from lm.cs336 import *

in their adapters file. Layers are built with the given weights loaded through
their CS336 state-dict names; attention uses the from-scratch kernel so the
suite checks our own numerics rather than torch's fused one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from lm import functional as LF
from lm import optim
from lm.checkpoint_file import load_checkpoint, save_checkpoint
from lm.config.schema import ModelConfig
from lm.errors import DataError, LabError
from lm.model import (
    CausalSelfAttention,
    Embedding,
    Linear,
    RMSNorm,
    RotaryPositionalEmbedding,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
)

__all__ = [
    "run_linear", "run_embedding", "run_swiglu", "run_scaled_dot_product_attention",
    "run_multihead_self_attention", "run_multihead_self_attention_with_rope", "run_rope",
    "run_transformer_block", "run_transformer_lm", "run_rmsnorm", "run_silu", "run_get_batch",
    "run_softmax", "run_cross_entropy", "run_gradient_clipping", "get_adamw_cls",
    "run_get_lr_cosine_schedule", "run_save_checkpoint", "run_load_checkpoint", "get_tokenizer",
    "run_train_bpe", "sample_batch",
]

# The from-scratch attention kernel: the official suite is meant to check our own softmax/masking.
ATTENTION = "naive"
# CS336's RMSNorm epsilon for blocks and the LM (the adapters do not pass one).
RMSNORM_EPS = 1e-5


def _attention_config(d_model: int, num_heads: int, seq_len: int, theta: float | None) -> ModelConfig:
    """A ModelConfig for a lone attention layer (vocab_size and the FFN are unused)."""
    return ModelConfig(vocab_size=1, context_length=max(2, seq_len), d_model=d_model, num_heads=num_heads,
                       num_layers=1, position="rope" if theta is not None else "nope",
                       rope_theta=theta if theta is not None else 10000.0, attention=ATTENTION).validate()


def _heads_broadcast(token_positions: Tensor | None) -> Tensor | None:
    """(..., T) positions -> (..., 1, T) so they broadcast over the head axis of (..., H, T, d)."""
    if token_positions is None or token_positions.ndim < 2:
        return token_positions
    return token_positions.unsqueeze(-2)


def run_linear(d_in: int, d_out: int, weights: Tensor, in_features: Tensor) -> Tensor:
    """Our Linear with the given (d_out, d_in) weight applied to (..., d_in)."""
    layer = Linear(d_in, d_out, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_embedding(vocab_size: int, d_model: int, weights: Tensor, token_ids: Tensor) -> Tensor:
    """Our Embedding with the given (vocab_size, d_model) table looked up at token_ids."""
    layer = Embedding(vocab_size, d_model, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(token_ids)


def run_swiglu(d_model: int, d_ff: int, w1_weight: Tensor, w2_weight: Tensor, w3_weight: Tensor,
               in_features: Tensor) -> Tensor:
    """Our SwiGLU W2(SiLU(W1 x) * W3 x) with the given weights."""
    layer = SwiGLU(d_model, d_ff, device=w1_weight.device, dtype=w1_weight.dtype)
    layer.load_state_dict({"w1.weight": w1_weight, "w2.weight": w2_weight, "w3.weight": w3_weight})
    return layer(in_features)


def run_scaled_dot_product_attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None = None) -> Tensor:
    """Our softmax(Q K^T / sqrt(d_k)) V; mask is boolean, True where attention is allowed."""
    return LF.scaled_dot_product_attention(Q, K, V, mask)


def _run_attention(d_model: int, num_heads: int, theta: float | None, max_seq_len: int, q_proj_weight: Tensor,
                   k_proj_weight: Tensor, v_proj_weight: Tensor, o_proj_weight: Tensor, in_features: Tensor,
                   token_positions: Tensor | None) -> Tensor:
    cfg = _attention_config(d_model, num_heads, max(max_seq_len, in_features.shape[-2]), theta)
    layer = CausalSelfAttention(cfg, device=q_proj_weight.device, dtype=q_proj_weight.dtype)
    # The separate CS336 q/k/v matrices load into our fused projection through the state-dict hook.
    layer.load_state_dict({"q_proj.weight": q_proj_weight, "k_proj.weight": k_proj_weight,
                           "v_proj.weight": v_proj_weight, "output_proj.weight": o_proj_weight})
    return layer(in_features, _heads_broadcast(token_positions))


def run_multihead_self_attention(d_model: int, num_heads: int, q_proj_weight: Tensor, k_proj_weight: Tensor,
                                 v_proj_weight: Tensor, o_proj_weight: Tensor, in_features: Tensor) -> Tensor:
    """Our causal multi-head self-attention without RoPE, with the given projections."""
    return _run_attention(d_model, num_heads, None, in_features.shape[-2], q_proj_weight, k_proj_weight,
                          v_proj_weight, o_proj_weight, in_features, None)


def run_multihead_self_attention_with_rope(d_model: int, num_heads: int, max_seq_len: int, theta: float,
                                           q_proj_weight: Tensor, k_proj_weight: Tensor, v_proj_weight: Tensor,
                                           o_proj_weight: Tensor, in_features: Tensor,
                                           token_positions: Tensor | None = None) -> Tensor:
    """Our causal multi-head self-attention with RoPE on Q and K."""
    return _run_attention(d_model, num_heads, theta, max_seq_len, q_proj_weight, k_proj_weight,
                          v_proj_weight, o_proj_weight, in_features, token_positions)


def run_rope(d_k: int, theta: float, max_seq_len: int, in_query_or_key: Tensor, token_positions: Tensor) -> Tensor:
    """Our RoPE applied to (..., T, d_k) at (..., T) positions."""
    rope = RotaryPositionalEmbedding(theta, d_k, max_seq_len, device=in_query_or_key.device)
    return rope(in_query_or_key, token_positions)


def run_transformer_block(d_model: int, num_heads: int, d_ff: int, max_seq_len: int, theta: float,
                          weights: dict[str, Tensor], in_features: Tensor) -> Tensor:
    """Our pre-norm block with RoPE, loaded from a CS336-named state dict (attn.q_proj.weight ...)."""
    cfg = ModelConfig(vocab_size=1, context_length=max(2, max_seq_len), d_model=d_model, num_layers=1,
                      num_heads=num_heads, d_ff=d_ff, rope_theta=theta, attention=ATTENTION,
                      rmsnorm_eps=RMSNORM_EPS).validate()
    w = weights["attn.q_proj.weight"]
    layer = TransformerBlock(cfg, device=w.device, dtype=w.dtype)
    layer.load_state_dict(weights)
    return layer(in_features)


def run_transformer_lm(vocab_size: int, context_length: int, d_model: int, num_layers: int, num_heads: int,
                       d_ff: int, rope_theta: float, weights: dict[str, Tensor], in_indices: Tensor) -> Tensor:
    """Our TransformerLM loaded from a CS336-named state dict; logits (batch, T, vocab_size)."""
    cfg = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                      num_layers=num_layers, num_heads=num_heads, d_ff=d_ff, rope_theta=rope_theta,
                      attention=ATTENTION, rmsnorm_eps=RMSNORM_EPS)
    w = weights["token_embeddings.weight"]
    model = TransformerLM(cfg, device=w.device, dtype=w.dtype)
    model.load_cs336_state_dict(weights)
    return model(in_indices)


def run_rmsnorm(d_model: int, eps: float, weights: Tensor, in_features: Tensor) -> Tensor:
    """Our RMSNorm with gain ``weights``."""
    layer = RMSNorm(d_model, eps, device=weights.device, dtype=weights.dtype)
    layer.load_state_dict({"weight": weights})
    return layer(in_features)


def run_silu(in_features: Tensor) -> Tensor:
    """Our SiLU, x * sigmoid(x)."""
    return LF.silu(in_features)


def sample_batch(dataset: npt.NDArray, batch_size: int, context_length: int, device: str | torch.device,
                 rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Random windows of a 1-D token array: inputs x and next-token targets y, (batch, context) int64.

    Starting positions are uniform over every full window (0 .. len - context_length - 1);
    ``dataset`` may be a memmap, only the sampled windows are read.
    """
    n = len(dataset)
    if n <= context_length:
        raise DataError(f"a token array of {n} tokens is too short for context_length {context_length}: "
                        f"it needs at least {context_length + 1} tokens")
    randint = rng.integers if rng is not None else np.random.randint
    starts = randint(0, n - context_length, size=batch_size)
    windows = np.asarray(dataset[starts[:, None] + np.arange(context_length + 1)], dtype=np.int64)
    tokens = torch.from_numpy(windows)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def run_get_batch(dataset: npt.NDArray, batch_size: int, context_length: int,
                  device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CS336 get_batch: (x, y) LongTensors of shape (batch_size, context_length) on ``device``."""
    return sample_batch(dataset, batch_size, context_length, device)


def run_softmax(in_features: Tensor, dim: int) -> Tensor:
    """Our numerically stable softmax over ``dim``."""
    return LF.softmax(in_features, dim=dim)


def run_cross_entropy(inputs: Tensor, targets: Tensor) -> Tensor:
    """Our mean cross-entropy of logits ``inputs`` (..., vocab) against integer ``targets`` (...)."""
    return LF.cross_entropy(inputs, targets)


def run_gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float) -> None:
    """Clip the combined gradient L2 norm of ``parameters`` to ``max_l2_norm`` in place."""
    optim.clip_grad_norm(parameters, max_l2_norm)


def get_adamw_cls() -> Any:
    """Our AdamW optimizer class."""
    return optim.AdamW


def run_get_lr_cosine_schedule(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
                               cosine_cycle_iters: int):
    """Learning rate at ``it`` under linear warmup then cosine decay to the minimum."""
    return optim.cosine_lr(it, max_learning_rate, min_learning_rate, warmup_iters, cosine_cycle_iters)


def run_save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                        out: str | os.PathLike | BinaryIO | IO[bytes]):
    """Serialize model, optimizer and iteration to a path (atomically) or a binary file object."""
    save_checkpoint(model, optimizer, iteration, out)


def run_load_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimizer from ``src``; return the saved iteration."""
    return load_checkpoint(src, model, optimizer)


def _tokenizer_api():
    """(Tokenizer, train_bpe) from lm.tokenizer, imported only when a tokenizer adapter is called."""
    try:
        from lm.tokenizer import Tokenizer, train_bpe
    except ImportError as e:
        raise LabError(
            f"the BPE tokenizer (lm.tokenizer) cannot be imported ({type(e).__name__}: {e}); the tokenizer "
            "adapters get_tokenizer and run_train_bpe need its Tokenizer and train_bpe. The model, optimizer "
            "and checkpoint adapters work without it."
        ) from None
    return Tokenizer, train_bpe


def get_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                  special_tokens: list[str] | None = None) -> Any:
    """Our byte-level BPE Tokenizer over the given vocab, merges and special tokens."""
    tokenizer_cls, _ = _tokenizer_api()
    return tokenizer_cls(vocab, merges, special_tokens=special_tokens)


def run_train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str],
                  **kwargs) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train our byte-level BPE on ``input_path``; return (vocab, merges)."""
    _, train_bpe = _tokenizer_api()
    return train_bpe(input_path, vocab_size, special_tokens, **kwargs)
