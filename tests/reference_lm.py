"""A second, plain implementation of the transformer LM, used only by the tests.

It reads a CS336-named state dict and computes the forward pass with plain
torch ops: separate Q/K/V matrices, a Python loop over heads, RoPE as an
explicit rotation matrix per position, RMSNorm in float64. It shares no code
with ``lm.model`` so that a mistake there cannot hide in both.
"""

from __future__ import annotations

import math

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, in float64."""
    x = x.double()
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight.double()


def rope_matrix(position: int, d: int, theta: float) -> torch.Tensor:
    """The (d, d) block-diagonal rotation that RoPE applies at ``position``.

    Block k rotates the pair (2k, 2k+1) by position * theta^(-2k/d).
    """
    r = torch.zeros(d, d, dtype=torch.float64)
    for k in range(d // 2):
        angle = position * theta ** (-2 * k / d)
        c, s = math.cos(angle), math.sin(angle)
        r[2 * k, 2 * k] = c
        r[2 * k, 2 * k + 1] = -s
        r[2 * k + 1, 2 * k] = s
        r[2 * k + 1, 2 * k + 1] = c
    return r


def apply_rope(x: torch.Tensor, positions: list[int], theta: float) -> torch.Tensor:
    """Rotate each row x[..., t, :] by the RoPE matrix of positions[t]."""
    d = x.shape[-1]
    rows = [x[..., t, :] @ rope_matrix(p, d, theta).T for t, p in enumerate(positions)]
    return torch.stack(rows, dim=-2)


def attention(x: torch.Tensor, sd: dict, prefix: str, num_heads: int, rope_theta: float | None,
              positions: list[int]) -> torch.Tensor:
    """Causal multi-head self-attention, one head at a time."""
    d_model = x.shape[-1]
    d_head = d_model // num_heads
    T = x.shape[-2]
    wq, wk, wv = (sd[f"{prefix}{n}_proj.weight"].double() for n in "qkv")
    wo = sd[f"{prefix}output_proj.weight"].double()
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(num_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        q, k, v = x @ wq[rows].T, x @ wk[rows].T, x @ wv[rows].T
        if rope_theta is not None:
            q, k = apply_rope(q, positions, rope_theta), apply_rope(k, positions, rope_theta)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d_head)
        scores = scores.masked_fill(~causal, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(heads, dim=-1) @ wo.T


def feed_forward(x: torch.Tensor, sd: dict, prefix: str, ffn: str) -> torch.Tensor:
    """SwiGLU W2(silu(W1 x) * W3 x) or SiLU MLP W2(silu(W1 x))."""
    w1 = sd[prefix + "w1.weight"].double()
    w2 = sd[prefix + "w2.weight"].double()
    a = x @ w1.T
    hidden = a * torch.sigmoid(a)
    if ffn == "swiglu":
        hidden = hidden * (x @ sd[prefix + "w3.weight"].double().T)
    return hidden @ w2.T


def block(x: torch.Tensor, sd: dict, prefix: str, cfg, positions: list[int]) -> torch.Tensor:
    """One transformer block with the norm placement of ``cfg.norm``."""
    theta = cfg.rope_theta if cfg.position == "rope" else None

    def attn(h):
        return attention(h, sd, prefix + "attn.", cfg.num_heads, theta, positions)

    def ffn(h):
        return feed_forward(h, sd, prefix + "ffn.", cfg.ffn)

    def ln(name, h):
        return rms_norm(h, sd[f"{prefix}{name}.weight"], cfg.rmsnorm_eps)

    if not getattr(cfg, "residual", True):  # no skip connections: each sub-layer's output is the stream
        if cfg.norm == "pre":
            return ffn(ln("ln2", attn(ln("ln1", x))))
        if cfg.norm == "post":
            return ln("ln2", ffn(ln("ln1", attn(x))))
        return ffn(attn(x))
    if cfg.norm == "pre":
        x = x + attn(ln("ln1", x))
        return x + ffn(ln("ln2", x))
    if cfg.norm == "post":
        x = ln("ln1", x + attn(x))
        return ln("ln2", x + ffn(x))
    x = x + attn(x)
    return x + ffn(x)


def forward(sd: dict, cfg, token_ids: torch.Tensor, positions: list[int] | None = None) -> torch.Tensor:
    """Logits (..., T, vocab) in float64 from a CS336-named state dict and a ModelConfig."""
    T = token_ids.shape[-1]
    positions = list(range(T)) if positions is None else positions
    emb = sd["token_embeddings.weight"].double()
    x = emb[token_ids]
    for i in range(cfg.num_layers):
        x = block(x, sd, f"layers.{i}.", cfg, positions)
    if cfg.norm != "none":
        x = rms_norm(x, sd["ln_final.weight"], cfg.rmsnorm_eps)
    head = emb if cfg.tie_embeddings else sd["lm_head.weight"].double()
    return x @ head.T
