"""The transformer language model of CS336 assignment 1, from scratch.

Built only from ``nn.Module`` and ``nn.Parameter``; contractions go through
``einx``. Internally Q, K and V come from one fused projection, but the state
dict speaks the CS336 names (``layers.{i}.attn.q_proj.weight`` ...), so
checkpoints load into the official reference and back.
"""

from __future__ import annotations

import math

import einx
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lm import functional as LF
from lm.config.schema import PRESETS, ModelConfig, default_d_ff  # noqa: F401 (re-exported)
from lm.errors import CheckpointError


# ----------------------------------------------------------------------------- layers

# Causal attention without a mask tries cuDNN's fused kernel before flash: on an H100 (torch 2.11,
# bf16, compiled) it made the whole training step 4.4% faster at small, 4.5% at medium, 2.8% at 2.7B.
# Shapes or settings cuDNN does not take (dropout, some head sizes) fall through to torch's order.
_CAUSAL_SDPA_ORDER = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH]


def _init_unless_meta(layer: nn.Module) -> None:
    """A layer built on a real device starts initialised; on meta there is nothing to draw (a loader
    assigns the weights, or ``to_empty`` + ``init_weights()`` fills them)."""
    if layer.weight.device.type != "meta":
        layer.init_weights()


class Linear(nn.Module):
    """y = x W^T without bias; W is (d_out, d_in), truncated-normal init."""

    def __init__(self, d_in: int, d_out: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        _init_unless_meta(self)

    def init_weights(self) -> None:
        d_out, d_in = self.weight.shape
        std = math.sqrt(2.0 / (d_in + d_out))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if torch.is_autocast_enabled(x.device.type):
            # The cast autocast would make, made here on the 2-D parameter, where a checkpoint policy
            # can name it (training.activation_checkpointing = "weights" recomputes it in backward).
            w = w.to(torch.get_autocast_dtype(x.device.type))
        return einx.dot("... d_in, d_out d_in -> ... d_out", x, w)


class Embedding(nn.Module):
    """Lookup table (num_embeddings, d) initialised N(0, 1) cut at +-3."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        _init_unless_meta(self)

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # index_select's backward is a scatter-add, much cheaper than fancy indexing's index_put.
        rows = self.weight.index_select(0, token_ids.reshape(-1))  # (N, d) for N = prod(leading dims)
        return rows.view(*token_ids.shape, self.weight.shape[1])  # (N, d) -> (..., d)


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in fp32 and cast back (bf16 squares lose precision)."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        _init_unless_meta(self)

    def init_weights(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        # At least fp32, but never down: a float64 model stays float64.
        x32 = x.to(torch.promote_types(in_dtype, torch.float32))
        rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * rms * self.weight.to(x32.dtype)).to(in_dtype)


class SwiGLU(nn.Module):
    """W2(SiLU(W1 x) * W3 x)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)
        self.w3 = Linear(d_model, d_ff, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(LF.silu(self.w1(x)) * self.w3(x))


class SiLUMLP(nn.Module):
    """W2(SiLU(W1 x)): the SwiGLU ablation, with d_ff = 4 d_model to match parameters."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(LF.silu(self.w1(x)))


class RotaryPositionalEmbedding(nn.Module):
    """RoPE over consecutive pairs (x[2k], x[2k+1]) with angle pos * theta^(-2k/d_k)."""

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len
        # Not persistent: derived from the config, and CS336 state dicts do not carry them.
        self.register_buffer("cos", torch.empty(max_seq_len, d_k // 2, device=device), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, d_k // 2, device=device), persistent=False)
        self.init_buffers()

    def init_buffers(self, device=None) -> None:
        """(Re)compute the cos/sin tables on ``device`` (default: where they are; on meta, nothing to compute)."""
        device = device or self.cos.device
        d_k = self.d_k
        inv_freq = self.theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        angles = torch.arange(self.max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq  # (T, d_k/2)
        self.cos = angles.cos().float()  # registered buffers: assignment replaces them
        self.sin = angles.sin().float()

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        cos = self.cos[token_positions].to(x.dtype)  # (..., T, d_k/2)
        sin = self.sin[token_positions].to(x.dtype)
        x_pairs = x.unflatten(-1, (-1, 2))  # (..., T, d_k) -> (..., T, d_k/2, 2)
        x_even, x_odd = x_pairs[..., 0], x_pairs[..., 1]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
        return rotated.flatten(-2)  # (..., T, d_k/2, 2) -> (..., T, d_k)


class KVCache(nn.Module):
    """Keys and values of one layer, preallocated for the whole context.

    Shapes stay static (B, H, context, d_head) so a decode step can be captured
    in a CUDA graph; slots beyond the current position are masked out.
    """

    def __init__(self, batch: int, num_heads: int, max_len: int, d_head: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, num_heads, max_len, d_head, device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("v", torch.zeros(batch, num_heads, max_len, d_head, device=device, dtype=dtype),
                             persistent=False)

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, H, T, d) at ``positions`` (T,) and return the whole cache."""
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused QKV projection and RoPE on Q and K."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.cfg = cfg
        self.num_heads = cfg.num_heads
        self.qkv_proj = Linear(cfg.d_model, 3 * cfg.d_model, device, dtype)
        self.output_proj = Linear(cfg.d_model, cfg.d_model, device, dtype)
        self.rope = (RotaryPositionalEmbedding(cfg.rope_theta, cfg.d_head, cfg.context_length, device)
                     if cfg.position == "rope" else None)
        # The CS336 state dict names q_proj/k_proj/v_proj separately; we fuse them.
        self.register_state_dict_post_hook(_split_qkv)
        self.register_load_state_dict_pre_hook(_fuse_qkv)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        T = x.shape[-2]
        if token_positions is None:
            token_positions = torch.arange(T, device=x.device)
        qkv = self.qkv_proj(x)  # (..., T, 3 d_model)
        # (..., T, 3 d_model) -> 3 x (..., H, T, d_head)
        q, k, v = einx.id("... t (three h d) -> three ... h t d", qkv, three=3, h=self.num_heads)
        if self.rope is not None:
            q, k = self.rope(q, token_positions), self.rope(k, token_positions)
        if kv_cache is None:
            mask = None  # plain causal
            q_pos = k_pos = None
        else:
            k, v = kv_cache.update(token_positions, k, v)
            q_pos, k_pos = token_positions, torch.arange(k.shape[-2], device=x.device)
            mask = k_pos[None, :] <= q_pos[:, None]  # (T, context): attend to written slots up to self
        dropout_p = self.cfg.attn_dropout if self.training else 0.0
        if self.cfg.attention == "sdpa" and mask is None and q.is_cuda:
            with sdpa_kernel(_CAUSAL_SDPA_ORDER, set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif self.cfg.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=mask is None)
        else:
            if mask is None:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            out = LF.scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p)
        out = einx.id("... h t d -> ... t (h d)", out)  # (..., H, T, d_head) -> (..., T, d_model)
        return self.output_proj(out)


def _split_qkv(module, state_dict, prefix, local_metadata):
    fused = state_dict.pop(prefix + "qkv_proj.weight")
    q, k, v = fused.chunk(3, dim=0)
    state_dict[prefix + "q_proj.weight"] = q
    state_dict[prefix + "k_proj.weight"] = k
    state_dict[prefix + "v_proj.weight"] = v


def _fuse_qkv(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    names = [prefix + f"{n}_proj.weight" for n in "qkv"]
    if all(n in state_dict for n in names):
        state_dict[prefix + "qkv_proj.weight"] = torch.cat([state_dict.pop(n) for n in names], dim=0)


class TransformerBlock(nn.Module):
    """attention and feed-forward sub-layers with residuals (unless ``residual = false``); norm placement per config."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.norm = cfg.norm
        self.residual = cfg.residual
        self.resid_dropout = cfg.resid_dropout
        self.attn = CausalSelfAttention(cfg, device, dtype)
        ffn_cls = SwiGLU if cfg.ffn == "swiglu" else SiLUMLP
        self.ffn = ffn_cls(cfg.d_model, cfg.ffn_dim, device, dtype)
        if cfg.norm != "none":
            self.ln1 = RMSNorm(cfg.d_model, cfg.rmsnorm_eps, device, dtype)
            self.ln2 = RMSNorm(cfg.d_model, cfg.rmsnorm_eps, device, dtype)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.resid_dropout, self.training) if self.resid_dropout else x

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        if not self.residual:  # the ablation: each sub-layer replaces the stream instead of adding to it
            if self.norm == "pre":
                x = self._drop(self.attn(self.ln1(x), token_positions, kv_cache))
                return self._drop(self.ffn(self.ln2(x)))
            if self.norm == "post":
                x = self.ln1(self._drop(self.attn(x, token_positions, kv_cache)))
                return self.ln2(self._drop(self.ffn(x)))
            return self._drop(self.ffn(self._drop(self.attn(x, token_positions, kv_cache))))
        if self.norm == "pre":
            x = x + self._drop(self.attn(self.ln1(x), token_positions, kv_cache))
            return x + self._drop(self.ffn(self.ln2(x)))
        if self.norm == "post":
            x = self.ln1(x + self._drop(self.attn(x, token_positions, kv_cache)))
            return self.ln2(x + self._drop(self.ffn(x)))
        x = x + self._drop(self.attn(x, token_positions, kv_cache))
        return x + self._drop(self.ffn(x))


class TransformerLM(nn.Module):
    """Token embedding, ``num_layers`` blocks, final RMSNorm and the LM head.

    :meth:`init_weights` draws the initial values (each layer's own
    ``init_weights``, which its constructor calls unless built on the meta
    device, in the same order). To load
    a checkpoint without paying for an initialisation it overwrites, build on
    ``device="meta"``, ``load_state_dict(state, assign=True)`` and
    :meth:`init_buffers` (lm.decode.load does this); a benchmark that only needs
    shapes builds on meta and calls ``to_empty(device=...)``.
    """

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_embeddings = Embedding(cfg.vocab_size, cfg.d_model, device, dtype)
        self.layers = nn.ModuleList(TransformerBlock(cfg, device, dtype) for _ in range(cfg.num_layers))
        if cfg.norm != "none":
            self.ln_final = RMSNorm(cfg.d_model, cfg.rmsnorm_eps, device, dtype)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, device, dtype)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding table with the LM head (tie_embeddings); again after an assign-load."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.token_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initial values: truncated normal weights (std sqrt(2 / (fan_in + fan_out)), the
        embedding N(0, 1) cut at +-3), RMSNorm gains 1, and the RoPE tables."""
        for module in self.modules():
            if module is self or not hasattr(module, "init_weights"):
                continue
            if module is self.lm_head and self.cfg.tie_embeddings:
                continue  # the shared table keeps the embedding's init
            module.init_weights()
        self.init_buffers()

    def init_buffers(self) -> None:
        """Recompute the non-persistent buffers (RoPE tables) where the weights are."""
        device = self.lm_head.weight.device
        for module in self.modules():
            if isinstance(module, RotaryPositionalEmbedding):
                module.init_buffers(device)

    def forward(self, token_ids: torch.Tensor, token_positions: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        """(..., T) token ids -> (..., T, vocab) logits, or with ``targets`` (..., T) the mean loss.

        ``token_positions`` (T,) gives each token's absolute position (default
        0..T-1); with ``kv_caches`` the keys/values are appended at those positions.
        """
        T = token_ids.shape[-1]
        if T > self.cfg.context_length:
            raise ValueError(f"sequence of {T} tokens is longer than context_length {self.cfg.context_length}")
        x = self.token_embeddings(token_ids)  # (..., T, d_model)
        for i, layer in enumerate(self.layers):
            x = layer(x, token_positions, None if kv_caches is None else kv_caches[i])
        if targets is not None:
            return self.loss(x, targets)
        if self.cfg.norm != "none":
            x = self.ln_final(x)
        return self.lm_head(x)

    def loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Final norm, LM head and cross-entropy of the last block's output x (..., T, d_model).

        The LM head and the loss are one fused, chunked op, so the (..., T, vocab)
        logits of the whole batch are never materialised (forward or backward).
        """
        if self.cfg.norm != "none":
            x = self.ln_final(x)
        return LF.linear_cross_entropy(x, self.lm_head.weight, targets, reduction)

    def new_kv_caches(self, batch: int = 1, device=None, dtype=None) -> list[KVCache]:
        """Preallocated per-layer caches for incremental decoding."""
        p = self.lm_head.weight
        device = device or p.device
        dtype = dtype or p.dtype
        c = self.cfg
        return [KVCache(batch, c.num_heads, c.context_length, c.d_head, device, dtype) for _ in self.layers]

    def num_params(self) -> int:
        """Unique parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def load_cs336_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a CS336-named state dict, naming any missing, extra or mis-shaped tensor."""
        check_state_dict(self, state_dict)
        self.load_state_dict(state_dict)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = []
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if extra:
        problems.append("unexpected tensors: " + ", ".join(extra))
    for k in sorted(expected.keys() & got.keys()):
        if expected[k] != got[k]:
            problems.append(f"{k} has shape {list(got[k])} in the checkpoint but the model expects {list(expected[k])}")
    if problems:
        raise CheckpointError("state dict does not match the model: " + "; ".join(problems) + ".")
