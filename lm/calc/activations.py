"""What autograd keeps for backward: every saved tensor of the model, in bytes.

This mirrors :mod:`lm.model` op by op (checked in the tests against the
tensors autograd really saves, captured with ``saved_tensors_hooks``).
Counted once per storage: a view saved for backward keeps its whole base
tensor alive, which is why, with sdpa, the fused QKV output stays in memory
(the value tensor handed to sdpa is a strided view of it).

Dtypes under bf16 autocast: the residual stream and RMSNorm stay fp32 (the
parameters are fp32 and RMSNorm upcasts); matmul inputs are bf16 copies and
matmul outputs bf16; so are RoPE, SiLU and the softmax of the naive path,
except that CUDA's autocast runs ``exp`` and ``sum`` in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lm.config.schema import ModelConfig


@dataclass(frozen=True)
class Activations:
    """Saved-for-backward bytes: one block (by tensor), the rest of the model, and the loss."""

    layer: dict[str, float]
    """One transformer block, by saved tensor."""
    num_layers: int
    head: dict[str, float]
    """Outside the blocks: embedding indices, final norm."""
    loss: dict[str, float]
    """What the fused LM head + loss keeps: the gradients of its input and of the LM head weight."""
    weight_copies: float
    """bf16 copies of the matmul weights saved by autocast'ed matmuls (0 in fp32)."""
    checkpointed: bool = False
    checkpoint_layer: float = 0.0
    """Per block under activation checkpointing: only its input is kept."""
    detail: dict[str, float] = field(default_factory=dict)

    @property
    def per_layer(self) -> float:
        return sum(self.layer.values())

    @property
    def per_layer_kept(self) -> float:
        """What each block keeps during the forward: all of it, or only its input when checkpointed."""
        return self.checkpoint_layer if self.checkpointed else self.per_layer

    @property
    def model(self) -> float:
        """All blocks + head, as kept at the end of the forward (without the loss)."""
        return self.num_layers * self.per_layer_kept + sum(self.head.values())

    @property
    def total(self) -> float:
        """Activations + loss tensors at the end of the forward (weight copies excluded)."""
        return self.model + sum(self.loss.values())

    def to_dict(self) -> dict:
        return {"per_layer": self.per_layer, "per_layer_kept": self.per_layer_kept, "layers": self.num_layers,
                "model": self.model, "loss": sum(self.loss.values()), "total": self.total,
                "weight_copies": self.weight_copies, "checkpointed": self.checkpointed,
                "layer_tensors": dict(self.layer), "head_tensors": dict(self.head),
                "loss_tensors": dict(self.loss)}


def sdpa_path(cfg: ModelConfig, device_kind: str, training: bool = True) -> str:
    """Which kernel ``F.scaled_dot_product_attention`` runs: 'fused', 'math' (dropout off CUDA) or 'mps'."""
    if device_kind == "cuda":
        return "fused"
    if device_kind == "mps":
        return "mps"
    return "math" if (training and cfg.attn_dropout > 0) else "fused"


def saved_activations(cfg: ModelConfig, batch: int, T: int, *, autocast: bool = False, device_kind: str = "cuda",
                      training: bool = True, checkpointing: bool = False, fused_loss: bool = True,
                      compiled_loss: bool = False, compiled_blocks: bool = False) -> Activations:
    """Bytes autograd saves for a training forward over ``batch`` x ``T`` tokens.

    ``autocast``: bf16 autocast. ``device_kind``: 'cuda', 'mps' or 'cpu'; it decides
    autocast's fp32 ops (exp and sum are fp32 on CUDA and MPS, bf16 on CPU),
    dropout masks (bool on CUDA, a float tensor elsewhere) and the layout of
    sdpa's output. ``training``: dropout active. ``checkpointing``: each block
    wrapped in ``torch.utils.checkpoint`` (non-reentrant): only its input is kept.
    ``fused_loss``: the fused chunked LM head + loss (else full logits and F.cross_entropy).
    ``compiled_loss``: lab's loss inside a compiled region (LM head + F.cross_entropy fused by
    Inductor: the matmul-dtype logits and the log-sum-exp are kept, no fp32 copy).
    ``compiled_blocks``: each block compiled by Inductor (lab's engine on CUDA), whose partitioner
    saves the inputs of the cheap pointwise ops and recomputes the rest in backward (the norms'
    outputs, SiLU and the gated product, autocast's bf16 copies of weights and activations).
    """
    if compiled_blocks and not checkpointing:
        return _compiled_block_activations(cfg, batch, T, autocast=autocast, training=training,
                                           compiled_loss=compiled_loss)
    d, V, H, f = cfg.d_model, cfg.vocab_size, cfg.num_heads, cfg.ffn_dim
    N = batch * T
    a = 2 if autocast else 4
    x = 4 if (not autocast or device_kind != "cpu") else 2
    drop_mask = 1 if device_kind == "cuda" else a  # fused dropout keeps a bool mask; elsewhere input * noise
    S = batch * H * T * T
    layer: dict[str, float] = {}

    def norm_saves(prefix: str) -> None:
        # RMSNorm in fp32: pow saves x, the last multiply saves x * rms, rsqrt saves rms.
        layer[f"{prefix}.input"] = layer.get(f"{prefix}.input", 0) + N * d * 4
        layer[f"{prefix}.normalized"] = layer.get(f"{prefix}.normalized", 0) + N * d * 4
        layer[f"{prefix}.rms"] = layer.get(f"{prefix}.rms", 0) + N * 4

    if cfg.norm != "none":
        norm_saves("norms")
    layer["qkv.input"] = N * d * a
    if cfg.position == "rope":
        layer["rope.tables"] = 4 * T * (cfg.d_head // 2) * a  # cos and sin, for q and for k
    out_copy = True  # the (B, H, T, d_head) -> (B, T, d) rearrange copies unless the layout already is (B, T, H, d)
    path = sdpa_path(cfg, device_kind, training) if cfg.attention == "sdpa" else "naive"
    if path == "fused":
        # sdpa saves q, k, v, out and the log-sum-exp; v (and q, k without RoPE) are views of the fused QKV
        # output, so all of it stays alive.
        layer["qkv.output"] = 3 * N * d * a
        if cfg.position == "rope":
            layer["attn.q_k_rotated"] = 2 * N * d * a
        layer["attn.out"] = N * d * a
        layer["attn.logsumexp"] = batch * H * T * 4
        # CUDA kernels write the output as (B, T, H, d); the CPU kernel follows q's layout, which is
        # (B, T, H, d) only when q is the raw view of the fused projection (no RoPE).
        out_copy = device_kind != "cuda" and cfg.position == "rope"
    elif path in ("math", "mps"):
        # The unfused fallback: scaled q, k and v copies, the probabilities (+ dropout noise and result).
        # CPU autocast runs this path in fp32.
        m = 4 if device_kind == "cpu" else a
        layer["attn.q_k_v"] = 3 * N * d * m
        layer["attn.probs"] = S * m
        if training and cfg.attn_dropout > 0:
            layer["attn.dropout_mask"] = S * m
            layer["attn.dropped_probs"] = S * m
    else:
        # einsum saves q and k (copied first when they are strided views, i.e. without RoPE) and a copy of v.
        layer["attn.q_k_v"] = 3 * N * d * a
        layer["attn.scores"] = S * a  # masked scores, saved by the row max
        layer["attn.exp"] = S * x
        layer["attn.probs"] = S * a
        layer["attn.mask"] = T * T * 1
        layer["attn.row_stats"] = batch * H * T * (a + x)
        if training and cfg.attn_dropout > 0:
            layer["attn.dropout_mask"] = S * (1 if device_kind == "cuda" else x)
    if out_copy:
        layer["out_proj.input"] = N * d * a
    if cfg.norm != "none":
        norm_saves("norms")
    # Autocast casts activations afresh for each matmul: w1 and w3 each keep their own bf16 copy.
    layer["ffn.input"] = N * d * a * (2 if autocast and cfg.ffn == "swiglu" else 1)
    # SwiGLU: w1 out, sigmoid, SiLU out, w3 out, gated product; SiLU MLP: w1 out, sigmoid, SiLU out.
    layer["ffn.hidden"] = (5 if cfg.ffn == "swiglu" else 3) * N * f * a
    if training and cfg.resid_dropout > 0:
        layer["residual.dropout_masks"] = 2 * N * d * drop_mask

    head: dict[str, float] = {"embedding.indices": N * 8}
    if cfg.norm != "none":
        head["ln_final.input"] = N * d * 4
        head["ln_final.normalized"] = N * d * 4
        head["ln_final.rms"] = N * 4
    if compiled_loss:
        head["lm_head.input"] = N * d * a
        loss = {"logits": N * V * a, "logsumexp": N * 4}
        head_copy = 2.0 * V * d if autocast else 0.0
    elif fused_loss:
        # The fused chunked LM head + cross-entropy (lm.functional.linear_cross_entropy) saves no logits:
        # it computes the gradients of its input (fp32, the residual stream's dtype) and of the LM head
        # weight (fp32) during the forward and keeps only those.
        loss = {"grad_input": N * d * 4, "grad_lm_head": V * d * 4}
        head_copy = 0.0
    else:
        head["lm_head.input"] = N * d * a
        # F.cross_entropy(logits.float(), y): the logits stay referenced by the loop's variable until
        # the step ends; log_softmax saves its fp32 output; nll_loss the targets (+ its total_weight).
        loss = {"logits": N * V * a, "log_softmax": N * V * 4, "targets": N * 8 + 4}
        head_copy = 2.0 * V * d if autocast else 0.0

    return _activations(cfg, N, layer, head, loss, autocast=autocast, head_copy=head_copy,
                        checkpointing=checkpointing)


def _activations(cfg: ModelConfig, N: int, layer: dict, head: dict, loss: dict, *, autocast: bool,
                 head_copy: float, checkpointing: bool = False) -> Activations:
    """The record, with the bf16 copies of the blocks' weights that autocast'ed matmuls save (and the LM head's)."""
    d, f = cfg.d_model, cfg.ffn_dim
    weights_per_layer = 4 * d * d + (3 if cfg.ffn == "swiglu" else 2) * d * f
    per_layer_copy = 2.0 * weights_per_layer if autocast else 0.0
    copies = cfg.num_layers * per_layer_copy + head_copy if autocast else 0.0
    return Activations(layer=layer, num_layers=cfg.num_layers, head=head, loss=loss, weight_copies=copies,
                       checkpointed=checkpointing, checkpoint_layer=N * d * 4,
                       detail={"weight_copies_per_layer": per_layer_copy, "lm_head_copy": head_copy})


def _compiled_block_activations(cfg: ModelConfig, batch: int, T: int, *, autocast: bool, training: bool,
                                compiled_loss: bool) -> Activations:
    """What a compiled block keeps (fitted to H200 peak memory at small..2.7B, torch 2.11; see
    docs/performance.md): the fp32 residual inputs of both norms and their rms, the fused QKV output
    (v is a view of it), RoPE'd q and k, the attention output and log-sum-exp, the FFN's matmul outputs."""
    d, V, H, f = cfg.d_model, cfg.vocab_size, cfg.num_heads, cfg.ffn_dim
    N = batch * T
    a = 2 if autocast else 4
    layer: dict[str, float] = {}
    if cfg.norm != "none":
        layer["norms.input"] = 2 * N * d * 4
        layer["norms.rms"] = 2 * N * 4
    layer["qkv.output"] = 3 * N * d * a
    if cfg.position == "rope":
        layer["attn.q_k_rotated"] = 2 * N * d * a
    layer["attn.out"] = N * d * a
    layer["attn.logsumexp"] = batch * H * T * 4
    layer["ffn.matmul_outputs"] = (2 if cfg.ffn == "swiglu" else 1) * N * f * a
    if training and cfg.resid_dropout > 0:
        layer["residual.dropout_masks"] = 2 * N * d
    if training and cfg.attn_dropout > 0:
        layer["attn.dropout_state"] = batch * H * T * 4
    head: dict[str, float] = {"embedding.indices": N * 8}
    if cfg.norm != "none":
        head["ln_final.input"] = N * d * 4
        head["ln_final.rms"] = N * 4
    if compiled_loss:
        loss = {"logits": N * V * a, "logsumexp": N * 4}
    else:
        loss = {"grad_input": N * d * 4, "grad_lm_head": V * d * 4}
    # The bf16 copies of the weights that the backward's matmuls read are saved, as in eager autocast.
    return _activations(cfg, N, layer, head, loss, autocast=autocast,
                        head_copy=2.0 * V * d if autocast and compiled_loss else 0.0)
