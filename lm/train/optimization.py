"""The optimizer, its parameter groups and the learning rate at each step.

Weight decay applies to every matrix (attention and FFN weights, the token
embeddings and the LM head) and not to vectors (the RMSNorm gains). Decaying
a norm gain pulls it towards zero, which only fights the normalization; the
embeddings are decayed as nanoGPT and most GPT-2 reproductions do, which also
keeps a tied embedding/LM-head matrix treated as the matrix it is.
"""

from __future__ import annotations

import torch

from lm.optim import AdamW, cosine_lr


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed matrices}, {undecayed vectors}] in a fixed order (named_parameters order)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, opt_cfg) -> AdamW:
    """lm.optim.AdamW over :func:`parameter_groups` with the ``[optimizer]`` settings
    (``optimizer.name = 'muon'``: :func:`lm.muon.build_muon`)."""
    if getattr(opt_cfg, "name", "adamw") == "muon":
        from lm.muon import build_muon

        return build_muon(model, opt_cfg)
    return AdamW(parameter_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr,
                 betas=(float(opt_cfg.betas[0]), float(opt_cfg.betas[1])), eps=opt_cfg.eps,
                 weight_decay=opt_cfg.weight_decay)


def lr_at(step: int, cfg) -> float:
    """Learning rate for optimizer step number ``step`` (1-based: the first update is step 1).

    1-based so warmup's first step already moves the weights (``cosine_lr(0)``
    is 0) and the cosine reaches min_lr exactly on the last step.
    ``schedule.kind = 'constant'`` is the same warmup, then flat at optimizer.lr.
    """
    sched, max_lr = cfg.schedule, cfg.optimizer.lr
    warmup = max(0, int(sched.warmup_steps))
    if sched.kind == "constant":
        return max_lr * min(1.0, step / warmup) if warmup else max_lr
    cosine_steps = sched.cosine_steps or cfg.training.steps
    cosine_steps = max(cosine_steps, warmup)
    return cosine_lr(step, max_lr, max_lr * sched.min_lr_ratio, warmup, cosine_steps)


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg) -> float:
    """Set every group's lr for ``step`` and return optimizer.lr's scheduled value (what is logged).

    A group with a ``peak_lr`` of its own (Muon's groups) follows the same schedule scaled to it.
    """
    lr = lr_at(step, cfg)
    factor = lr / cfg.optimizer.lr
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor if "peak_lr" in group else lr
    return lr


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients, without clipping (used when optimizer.grad_clip = 0)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([g.detach().float().norm() for g in grads]))
