"""FLOPs per token and per step, forward and backward, by component.

MFU uses the **dense** matmul count: every matmul as written, including the
masked upper half of ``q @ k^T`` (the PaLM / nanoGPT / CS336 convention, and
what ``FlopCounterMode`` reports). The causal-useful count, which leaves the
masked half out, is reported next to it; for context length T it is smaller
by ``T * d * (T - 1)`` FLOPs per sequence per layer and matmul.
Backward is twice forward (input and weight gradients), so training = 3 x forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from lm.calc.ops import forward_ops
from lm.config.schema import ModelConfig


@dataclass(frozen=True)
class ComponentFlops:
    """Forward and backward FLOPs of one component for a whole micro-batch."""

    forward: float
    forward_causal: float
    matmul: bool

    @property
    def backward(self) -> float:
        return 2.0 * self.forward

    @property
    def training(self) -> float:
        return 3.0 * self.forward

    def to_dict(self) -> dict:
        return {"forward": self.forward, "forward_causal": self.forward_causal, "backward": self.backward,
                "training": self.training, "matmul": self.matmul}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one micro-batch of ``batch`` sequences of ``context_length`` tokens."""

    batch: int
    context_length: int
    components: dict[str, ComponentFlops]

    @property
    def tokens(self) -> int:
        return self.batch * self.context_length

    @property
    def forward_matmul(self) -> float:
        """Dense forward matmul FLOPs (MFU's basis, and what FlopCounterMode counts)."""
        return sum(c.forward for c in self.components.values() if c.matmul)

    @property
    def forward_matmul_causal(self) -> float:
        return sum(c.forward_causal for c in self.components.values() if c.matmul)

    @property
    def forward_other(self) -> float:
        """Non-matmul forward FLOPs (softmax, norms, activations, RoPE, loss): approximate counts."""
        return sum(c.forward for c in self.components.values() if not c.matmul)

    @property
    def training_matmul(self) -> float:
        """Forward + backward dense matmul FLOPs: 3 x forward."""
        return 3.0 * self.forward_matmul

    @property
    def training_matmul_causal(self) -> float:
        return 3.0 * self.forward_matmul_causal

    @property
    def per_token(self) -> float:
        """Training matmul FLOPs per token (dense)."""
        return self.training_matmul / self.tokens

    def by_group(self) -> dict[str, float]:
        """Dense forward matmul FLOPs per group (attention = projections + scores + weighted sum)."""
        groups = {"qkv": "attention", "attn_scores": "attention", "attn_values": "attention",
                  "out_proj": "attention", "ffn": "ffn", "lm_head": "lm_head"}
        out: dict[str, float] = {}
        for name, c in self.components.items():
            if c.matmul:
                out[groups[name]] = out.get(groups[name], 0.0) + c.forward
        return out

    def to_dict(self) -> dict:
        return {"batch": self.batch, "context_length": self.context_length, "tokens": self.tokens,
                "forward_matmul": self.forward_matmul, "forward_matmul_causal": self.forward_matmul_causal,
                "forward_other": self.forward_other, "training_matmul": self.training_matmul,
                "training_matmul_causal": self.training_matmul_causal, "per_token": self.per_token,
                "mfu_basis": "dense",
                "components": {k: v.to_dict() for k, v in self.components.items()}}


def count_flops(cfg: ModelConfig, batch: int = 1, context_length: int | None = None) -> FlopCount:
    """FLOPs of a forward and backward pass over ``batch`` x ``context_length`` tokens."""
    T = context_length or cfg.context_length
    comps: dict[str, ComponentFlops] = {}
    for op in forward_ops(cfg, batch, T):
        if op.name in ("embedding",) or (op.flops == 0 and not op.is_matmul):
            continue
        prev = comps.get(op.name)
        fwd, causal = op.count * op.flops, op.count * op.causal_flops
        if prev is not None:
            fwd, causal = fwd + prev.forward, causal + prev.forward_causal
        comps[op.name] = ComponentFlops(fwd, causal, op.is_matmul)
    return FlopCount(batch, T, comps)


def flop_counter_expectation(cfg: ModelConfig, batch: int, context_length: int, device_kind: str,
                             training_dropout: bool = False) -> float:
    """Forward + backward FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` will report.

    It counts every mm/bmm densely (so the naive path's total is exactly 3 x the dense forward).
    For sdpa on CUDA it counts the fused kernel densely forward and its backward as 5 matmuls
    (2.5 x forward: the scores are recomputed); on CPU and MPS it does not see the fused sdpa
    kernel at all (nor the math fallback used with dropout, which it sees as plain bmm).
    """
    from lm.calc.activations import sdpa_path

    f = count_flops(cfg, batch, context_length)
    core = sum(f.components[n].forward for n in ("attn_scores", "attn_values"))
    rest = f.forward_matmul - core
    if cfg.attention == "naive":
        return 3.0 * f.forward_matmul
    path = sdpa_path(cfg, device_kind, training_dropout)
    if path == "math":
        return 3.0 * f.forward_matmul
    if device_kind == "cuda":
        return 3.0 * rest + 3.5 * core
    return 3.0 * rest


def training_flops_per_token(model_cfg: ModelConfig) -> float:
    """Forward + backward matmul FLOPs per token at the model's context length, attention included.

    Dense count (the masked half of the attention scores included), which is
    what MFU is computed from throughout lab.
    """
    return count_flops(model_cfg, 1, model_cfg.context_length).per_token
