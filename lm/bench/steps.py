"""The three things a benchmark times: forward, forward + backward, a full training step.

The step is the trainer's (``lm.train.trainer``): ``zero_grad(set_to_none=True)``,
forward under bf16 autocast (or fp32 with TF32 matmuls on CUDA), fp32
``F.cross_entropy`` outside autocast, backward, ``lm.optim.clip_grad_norm``,
``lm.optim.AdamW``; so timings and peak memory are those of real training.
Activation checkpointing wraps each block in ``torch.utils.checkpoint`` from
the outside (``lm/model.py`` is left alone).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from lm.config.schema import ModelConfig
from lm.model import TransformerLM
from lm.optim import AdamW, clip_grad_norm


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The name the calculator's profiles match: torch's GPU name, or 'cpu' / 'mps'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def enable_checkpointing(model: TransformerLM) -> None:
    """Recompute each block in backward (non-reentrant torch.utils.checkpoint), keeping only its input."""
    for layer in model.layers:
        inner = layer.forward

        @functools.wraps(inner)
        def checkpointed(x, token_positions=None, kv_cache=None, _inner=inner):
            if kv_cache is not None or not torch.is_grad_enabled():
                return _inner(x, token_positions, kv_cache)
            # No early stop: it aborts the recompute by raising inside an op, and einx wraps
            # exceptions raised inside its operations, which would turn that into a failure.
            with torch.utils.checkpoint.set_checkpoint_early_stop(False):
                return torch.utils.checkpoint.checkpoint(_inner, x, token_positions, None, use_reentrant=False)

        layer.forward = checkpointed


@dataclass
class Workload:
    """A model, its optimizer and one batch, ready to be timed."""

    model: TransformerLM
    train_model: torch.nn.Module
    optimizer: AdamW
    tokens: torch.Tensor
    targets: torch.Tensor
    device: torch.device
    dtype: str
    grad_clip: float = 1.0
    grad_accum: int = 1

    def autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self) -> torch.Tensor:
        with self.autocast():
            logits = self.train_model(self.tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.targets.reshape(-1))

    def forward(self) -> None:
        """Training-mode forward and loss (the graph is built, then dropped)."""
        self._loss()

    def forward_backward(self) -> None:
        """Forward, loss and backward; gradients freed first, as the trainer does."""
        self.optimizer.zero_grad(set_to_none=True)
        self._loss().backward()

    def step(self) -> None:
        """A full training step, exactly as lm.train.trainer runs it."""
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.grad_accum):
            with self.autocast():
                logits = self.train_model(self.tokens)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.targets.reshape(-1))
            (loss / self.grad_accum).backward()
        if self.grad_clip > 0:
            clip_grad_norm(self.model.parameters(), self.grad_clip)
        self.optimizer.step()


def build_workload(cfg: ModelConfig, *, batch_size: int, context_length: int, dtype: str = "fp32",
                   device: torch.device | str = "cpu", compile: bool = False, checkpointing: bool = False,
                   grad_clip: float = 1.0, grad_accum: int = 1, tf32: bool = True, seed: int = 0,
                   meta_init: bool = False) -> Workload:
    """Build the model on ``device`` with the trainer's optimizer and a random batch.

    ``tf32``: let fp32 matmuls use TF32 on CUDA (the trainer does). ``meta_init``
    skips the truncated-normal init (slow for billions of parameters on one CPU
    thread) by building on the meta device and filling the weights on the target
    with small random values: timings and memory do not depend on the values.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(seed)
    if meta_init:
        model = TransformerLM(cfg, device="meta")
        model = model.to_empty(device=device)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02)
        _reset_rope(model, cfg, device)
    else:
        model = TransformerLM(cfg, device=device)
    model.train()
    if checkpointing:
        enable_checkpointing(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    optimizer = AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, context_length), generator=gen).to(device)
    targets = torch.randint(0, cfg.vocab_size, (batch_size, context_length), generator=gen).to(device)
    train_model = torch.compile(model) if compile else model
    return Workload(model, train_model, optimizer, tokens, targets, device, dtype, grad_clip, grad_accum)


def _reset_rope(model: TransformerLM, cfg: ModelConfig, device: torch.device) -> None:
    """Recompute RoPE tables after ``to_empty`` (they are derived buffers, not loaded state)."""
    from lm.model import RotaryPositionalEmbedding

    for module in model.modules():
        if isinstance(module, RotaryPositionalEmbedding):
            fresh = RotaryPositionalEmbedding(cfg.rope_theta, cfg.d_head, cfg.context_length, device=device)
            module.cos.copy_(fresh.cos)
            module.sin.copy_(fresh.sin)
