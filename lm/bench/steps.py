"""The three things a benchmark times: forward, forward + backward, a full training step.

The step is the trainer's (``lm.train.trainer``): ``zero_grad(set_to_none=True)``,
forward and loss (the fused chunked LM head) under bf16 autocast (or fp32 with
TF32 matmuls on CUDA), compiled and checkpointed as :mod:`lm.train.engine`
plans it, backward, ``lm.optim.clip_grad_norm``, ``lm.optim.AdamW`` (fused on
CUDA); so timings and peak memory are those of real training.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from lm.config.schema import ModelConfig
from lm.device import configure_backends, device_name, resolve_device  # noqa: F401 (re-exported)
from lm.model import TransformerLM
from lm.optim import AdamW, clip_grad_norm
from lm.train import engine


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
    plan: engine.CompilePlan = engine.CompilePlan(False)
    checkpointing: str = "none"
    """training.activation_checkpointing as applied ('auto' resolved)."""

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self) -> torch.Tensor:
        with self.autocast():
            return self.train_model(self.tokens, targets=self.targets)

    def forward(self) -> None:
        """Training-mode forward and loss (the graph is built, then dropped)."""
        engine.step_begin(self.plan)
        self._loss()

    def forward_backward(self) -> None:
        """Forward, loss and backward; gradients freed first, as the trainer does."""
        self.optimizer.zero_grad(set_to_none=True)
        engine.step_begin(self.plan)
        self._loss().backward()

    def step(self) -> torch.Tensor:
        """A full training step, exactly as lm.train.trainer runs it; returns the loss (on the device)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for _ in range(self.grad_accum):
            engine.step_begin(self.plan)
            loss = self._loss() / self.grad_accum
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.grad_clip > 0:
            clip_grad_norm(self.params, self.grad_clip)
        self.optimizer.step()
        return total


def build_workload(cfg: ModelConfig, *, batch_size: int, context_length: int, dtype: str = "fp32",
                   device: torch.device | str = "cpu", compile: bool = False, checkpointing: bool | str = False,
                   grad_clip: float = 1.0, grad_accum: int = 1, tf32: bool = True, seed: int = 0,
                   meta_init: bool = False, cuda_graphs: str = "auto") -> Workload:
    """Build the model on ``device`` with the trainer's optimizer and a random batch.

    ``tf32``: let fp32 matmuls use TF32 on CUDA (the trainer does). ``meta_init``
    builds on the meta device and runs ``init_weights()`` on the target device
    (the CPU draws billions of truncated normals slowly, on one thread).
    """
    device = torch.device(device)
    configure_backends(device, None, tf32=tf32)
    torch.manual_seed(seed)
    if meta_init:
        # The trainer's initial values, drawn on the target device (fast for billions of parameters),
        # not N(0, 0.02) everywhere: RMSNorm gains near zero starve every gradient, and then a
        # benchmark's loss cannot show whether gradients flow.
        model = TransformerLM(cfg, device="meta")
        model = model.to_empty(device=device)
        model.init_weights()
    else:
        model = TransformerLM(cfg, device=device)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])
    optimizer = AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, context_length), generator=gen).to(device)
    targets = torch.randint(0, cfg.vocab_size, (batch_size, context_length), generator=gen).to(device)
    ckpt = {True: "full", False: "none"}.get(checkpointing, checkpointing)
    num_params = sum(p.numel() for p in model.parameters())
    plan = engine.plan_for(compile, device, num_params, cuda_graphs, checkpointing=ckpt)
    ckpt = engine.resolve_checkpointing(ckpt, plan, device, dtype == "bf16", num_params)
    if plan.compile:
        engine.use_compile_cache()
    engine.prepare(model, plan, ckpt)
    return Workload(model, model, optimizer, tokens, targets, device, dtype, grad_clip, grad_accum, plan, ckpt)
