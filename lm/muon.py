"""Muon: momentum orthogonalised by a Newton-Schulz iteration, for the blocks' weight matrices.

The recipe of Keller Jordan's Muon (github.com/KellerJordan/Muon) and the
modded-nanogpt speedruns, written from scratch here:

1. momentum ``m = beta m + (1 - beta) g``, and with Nesterov the update
   direction is ``u = (1 - beta) g + beta m`` (else ``u = m``);
2. ``u`` is replaced by the nearest semi-orthogonal matrix ``U V^T`` (from
   ``u = U S V^T``), approximately, by five steps of the quintic
   Newton-Schulz iteration ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``
   and (a, b, c) = (3.4445, -4.7750, 2.0315), after scaling ``X`` to unit
   Frobenius norm (so every singular value starts in (0, 1]). The
   coefficients trade exactness for speed: the iteration does not converge
   to 1 but pushes every singular value that is not tiny into about
   [0.68, 1.13] in five steps (tests/test_muon.py checks that band);
3. the orthogonalised update is scaled by ``sqrt(max(1, rows / cols))`` so a
   tall matrix (d_ff x d_model) gets per-element updates of the same size as a
   square one, and applied as ``W <- W (1 - lr wd) - lr scale O``.

Only 2-D weight matrices inside the transformer blocks go to Muon. The fused
QKV projection (3 d_model x d_model) is orthogonalised as its three d x d
parts, the matrices it stands for. Embeddings, the LM head and the RMSNorm
gains use AdamW (lm.optim.AdamW), each in its own group with its own learning
rate. Both kinds live in one optimizer, so its ``state_dict`` (Muon's one
momentum buffer per matrix, AdamW's two moments for the rest) is what the
checkpoint stores and resume restores.

Under DDP every rank holds the same all-reduced gradient, so every rank
computes the same update: plain DDP works unchanged. FSDP2 shards each matrix
(a DTensor) across ranks, and Newton-Schulz needs the whole matrix: the
momentum stays sharded (its update is elementwise), the update direction is
all-gathered (``full_tensor()``), every rank orthogonalises the same whole
matrix, and each keeps its own shard of the result (a replicated DTensor
redistributed to the parameter's placement: a local slice, no communication).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lm.optim import AdamW

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the quintic Newton-Schulz iteration (Keller Jordan's tuned values)."""


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise each matrix of ``G`` (..., m, n): U S V^T -> U S' V^T with S' ~ 1.

    Computed in ``dtype`` (bf16 as published: the iteration tolerates its
    rounding) and returned in ``dtype``. Works on the wide orientation
    (m <= n) so ``X X^T`` is the smaller Gram matrix.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT  # (..., m, n) -> (..., n, m): the wide orientation
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)  # every singular value now <= 1
    for _ in range(steps):
        A = X @ X.mT  # (..., m, m)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


def shape_scale(rows: int, cols: int) -> float:
    """sqrt(max(1, rows / cols)): per-element update size independent of a matrix's aspect."""
    return math.sqrt(max(1.0, rows / cols))


def _is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _this_ranks_shard(full: torch.Tensor, like) -> torch.Tensor:
    """``full`` (the same on every rank) as a DTensor laid out like ``like``: each rank keeps its slice."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    replicated = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, like.placements)


class Muon(AdamW):
    """Muon for groups with ``use_muon=True``, AdamW (lm.optim.AdamW's update) for the others.

    A Muon group's keys: ``lr``, ``momentum``, ``nesterov``, ``ns_steps``,
    ``weight_decay``, ``ns_dtype`` (None: bf16 on CUDA, fp32 elsewhere) and ``split`` (each parameter is ``split`` stacked
    matrices along dim 0, orthogonalised separately: 3 for the fused QKV).
    An AdamW group's keys: ``lr``, ``betas``, ``eps``, ``weight_decay``.
    ``peak_lr`` in any group is the learning rate the schedule scales.
    """

    def __init__(self, param_groups: list[dict], *, betas=(0.9, 0.95), eps: float = 1e-8):
        for g in param_groups:
            g.setdefault("use_muon", False)
            if g["use_muon"]:
                g.setdefault("momentum", 0.95)
                g.setdefault("nesterov", True)
                g.setdefault("ns_steps", 5)
                g.setdefault("split", 1)
                for p in g["params"]:
                    if p.dim() != 2 or p.shape[0] % g["split"]:
                        raise ValueError(f"Muon needs 2-D matrices whose rows divide by split={g['split']}, "
                                         f"got shape {tuple(p.shape)}")
        super().__init__(param_groups, lr=1e-3, betas=betas, eps=eps, weight_decay=0.0)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["use_muon"]:
                self._muon_update(params, group)
            else:
                self._adamw_group(params, group)
        return loss

    def _muon_update(self, params: list[torch.Tensor], group: dict) -> None:
        lr, beta, wd, k = group["lr"], group["momentum"], group["weight_decay"], group["split"]
        directions = []
        for p in params:
            g = p.grad
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - beta)  # m = beta m + (1 - beta) g
            u = torch.lerp(g, buf, beta) if group["nesterov"] else buf
            directions.append(u.full_tensor() if _is_sharded(u) else u)  # FSDP2: the whole matrix, on every rank
        # Matrices of one shape are orthogonalised together: one batched iteration, few launches.
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault((p.shape[0] // k, p.shape[1], p.device), []).append(i)
        for (rows, cols, device), idx in by_shape.items():
            stacked = torch.stack([directions[i].reshape(k, rows, cols) for i in idx])  # (n, k, rows, cols)
            # bf16 on CUDA as published (tensor cores; the iteration tolerates the rounding), fp32 elsewhere.
            dtype = group.get("ns_dtype") or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            ortho = newton_schulz(stacked, group["ns_steps"], dtype)
            scale = shape_scale(rows, cols)
            for j, i in enumerate(idx):
                p = params[i]
                update = ortho[j].reshape(p.shape).to(p.dtype)
                if _is_sharded(p):
                    update = _this_ranks_shard(update, p)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * scale)


def muon_param_groups(model: torch.nn.Module, opt_cfg) -> list[dict]:
    """The groups of ``optimizer.name = 'muon'``: Muon for the blocks' matrices, AdamW for the rest.

    Order is fixed (named_parameters order within each group) so a checkpoint's
    optimizer state maps back onto the same tensors.
    """
    muon, qkv, embed, head, scalars = [], [], [], [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("layers.") and p.dim() == 2:
            (qkv if name.endswith("qkv_proj.weight") else muon).append(p)
        elif name.startswith("token_embeddings."):
            embed.append(p)
        elif name.startswith("lm_head."):
            head.append(p)
        else:
            scalars.append(p)
    m = dict(use_muon=True, momentum=opt_cfg.muon_momentum, nesterov=opt_cfg.muon_nesterov,
             ns_steps=opt_cfg.muon_ns_steps, weight_decay=opt_cfg.muon_weight_decay,
             lr=opt_cfg.muon_lr, peak_lr=opt_cfg.muon_lr)
    betas = (float(opt_cfg.betas[0]), float(opt_cfg.betas[1]))
    adam = dict(use_muon=False, betas=betas, eps=opt_cfg.eps)
    groups = [
        {**m, "params": muon, "split": 1, "name": "muon"},
        {**m, "params": qkv, "split": 3, "name": "muon_qkv"},
        {**adam, "params": embed, "lr": opt_cfg.embed_lr, "peak_lr": opt_cfg.embed_lr,
         "weight_decay": opt_cfg.weight_decay, "name": "embed"},
        {**adam, "params": head, "lr": opt_cfg.head_lr, "peak_lr": opt_cfg.head_lr,
         "weight_decay": opt_cfg.weight_decay, "name": "head"},
        {**adam, "params": scalars, "lr": opt_cfg.scalar_lr, "peak_lr": opt_cfg.scalar_lr,
         "weight_decay": 0.0, "name": "scalar"},
    ]
    return [g for g in groups if g["params"]]


def build_muon(model: torch.nn.Module, opt_cfg) -> Muon:
    """Muon over :func:`muon_param_groups` with the ``[optimizer]`` settings."""
    return Muon(muon_param_groups(model, opt_cfg), betas=(float(opt_cfg.betas[0]), float(opt_cfg.betas[1])),
                eps=opt_cfg.eps)

