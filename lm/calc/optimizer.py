"""What the optimizer costs: state bytes (AdamW two moments, Muon one) and Muon's Newton-Schulz FLOPs.

Torch-free like the rest of the calculator. ``optimizer.name = 'muon'`` puts
the blocks' 2-D weight matrices under Muon (one fp32 momentum buffer: 4 bytes
per parameter) and the embeddings, LM head and norm gains under AdamW (two
fp32 moments: 8 bytes). Newton-Schulz is optimizer work: it is counted per
optimizer step, apart from the model's training FLOPs, so MFU stays the
model's and the optimizer's share is reported next to it.
"""

from __future__ import annotations

from lm.calc.params import ParamCount
from lm.config.schema import ModelConfig


def newton_schulz_flops(rows: int, cols: int, steps: int = 5) -> int:
    """Matmul FLOPs of the quintic Newton-Schulz iteration on one (rows, cols) matrix.

    With m = min(rows, cols), n = max: per step X X^T (2 m^2 n), A A (2 m^3), B X (2 m^2 n).
    """
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m ** 3)


def muon_matrices(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(rows, cols) of every matrix Muon orthogonalises (the fused QKV as its three d x d parts)."""
    d, f = cfg.d_model, cfg.ffn_dim
    per_layer = [(d, d)] * 4 + [(f, d)] * (2 if cfg.ffn == "swiglu" else 1) + [(d, f)]
    return per_layer * cfg.num_layers


def muon_params(cfg: ModelConfig) -> int:
    """Parameters under Muon: the attention and FFN matrices of the blocks."""
    return sum(r * c for r, c in muon_matrices(cfg))


def newton_schulz_flops_per_step(cfg: ModelConfig, steps: int = 5) -> int:
    """Newton-Schulz FLOPs of one Muon optimizer step (independent of batch size)."""
    return sum(newton_schulz_flops(r, c, steps) for r, c in muon_matrices(cfg))


def optimizer_state_bytes(cfg: ModelConfig, params: ParamCount, optimizer: str = "adamw") -> float:
    """fp32 optimizer state: 8 bytes per AdamW parameter, 4 per Muon parameter."""
    if optimizer == "muon":
        m = muon_params(cfg)
        return 4.0 * m + 8.0 * (params.total - m)
    return 8.0 * params.total


def step_temporaries_bytes(cfg: ModelConfig, params: ParamCount, optimizer: str = "adamw",
                           fused: bool = False) -> float:
    """Short-lived bytes of the optimizer step on top of weights, gradients and state.

    AdamW: ``_foreach_sqrt(v)`` makes a temporary of every matrix of the decayed group at once
    (none when ``fused``: torch's one fused kernel, which lm.optim.AdamW uses on CUDA).
    Muon: one fp32 Nesterov direction per Muon matrix, then per shape the stacked copy, the
    bf16 iterate and its Gram-matrix temporaries (about 6 bytes per element of the largest shape).
    """
    adam = 0.0 if fused else 4.0
    if optimizer != "muon":
        return adam * params.matrix_params
    m = muon_params(cfg)
    by_shape: dict[tuple[int, int], int] = {}
    for r, c in muon_matrices(cfg):
        by_shape[(r, c)] = by_shape.get((r, c), 0) + r * c
    return adam * (params.matrix_params - m) + 4.0 * m + 6.0 * max(by_shape.values(), default=0)


def newton_schulz_op(cfg: ModelConfig, steps: int = 5):
    """Muon's orthogonalisation as one optimizer-phase matmul op of the time model (bf16 on CUDA)."""
    from lm.calc.ops import Op

    flops = newton_schulz_flops_per_step(cfg, steps)
    shapes = len(set(muon_matrices(cfg)))
    # Per step and shape: three matmuls and two elementwise updates, each reading and writing the iterate.
    traffic = 2.0 * steps * 5 * 2 * muon_params(cfg)
    return Op("newton_schulz", "optimizer", "matmul", 1, flops, flops, flops, traffic, 5 * steps * shapes,
              backward_flops=0)
