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
    """Outside the blocks: embedding indices, final norm, LM head input."""
    loss: dict[str, float]
    """The logits (kept by the training loop's variable) and log_softmax's output."""
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


def saved_activations(cfg: ModelConfig, batch: int, T: int, *, autocast: bool = False, exp_fp32: bool = True,
                      training: bool = True, checkpointing: bool = False) -> Activations:
    """Bytes autograd saves for a training forward over ``batch`` x ``T`` tokens.

    ``autocast``: bf16 autocast. ``exp_fp32``: autocast's exp/sum run in fp32 (CUDA, MPS).
    ``training``: dropout active. ``checkpointing``: each block wrapped in
    ``torch.utils.checkpoint`` (non-reentrant), which keeps only the block input.
    """
    d, V, H, f = cfg.d_model, cfg.vocab_size, cfg.num_heads, cfg.ffn_dim
    N = batch * T
    a = 2 if autocast else 4
    x = 4 if (not autocast or exp_fp32) else 2
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
    if cfg.attention == "sdpa":
        # sdpa saves q, k, v, out and the log-sum-exp; v is a view of the fused QKV output.
        layer["qkv.output"] = 3 * N * d * a
        if cfg.position == "rope":
            layer["attn.q_k_rotated"] = 2 * N * d * a
        layer["attn.out"] = N * d * a
        layer["attn.logsumexp"] = batch * H * T * 4
    else:
        # einsum saves q and k (copied first when they are strided views, i.e. without RoPE) and a copy of v.
        layer["attn.q_k_v"] = 3 * N * d * a
        layer["attn.scores"] = S * a  # masked scores, saved by the row max
        layer["attn.exp"] = S * x
        layer["attn.probs"] = S * a
        layer["attn.mask"] = T * T * 1
        layer["attn.row_stats"] = batch * H * T * (a + x)
        if training and cfg.attn_dropout > 0:
            layer["attn.dropout_mask"] = S * 1
    layer["out_proj.input"] = N * d * a
    if cfg.norm != "none":
        norm_saves("norms")
    layer["ffn.input"] = N * d * a
    # SwiGLU: w1 out, sigmoid, SiLU out, w3 out, gated product; SiLU MLP: w1 out, sigmoid, SiLU out.
    layer["ffn.hidden"] = (5 if cfg.ffn == "swiglu" else 3) * N * f * a
    if training and cfg.resid_dropout > 0:
        layer["residual.dropout_masks"] = 2 * N * d * 1

    head: dict[str, float] = {"embedding.indices": N * 8}
    if cfg.norm != "none":
        head["ln_final.input"] = N * d * 4
        head["ln_final.normalized"] = N * d * 4
        head["ln_final.rms"] = N * 4
    head["lm_head.input"] = N * d * a

    # F.cross_entropy(logits.float(), y) as the trainer calls it: the logits stay referenced by the
    # loop's variable until the step ends; log_softmax saves its fp32 output; nll_loss the targets.
    loss = {"logits": N * V * a, "log_softmax": N * V * 4, "targets": N * 8}

    weights_per_layer = 4 * d * d + (3 if cfg.ffn == "swiglu" else 2) * d * f
    copies = 2.0 * (cfg.num_layers * weights_per_layer + V * d) if autocast else 0.0
    return Activations(layer=layer, num_layers=cfg.num_layers, head=head, loss=loss, weight_copies=copies,
                       checkpointed=checkpointing, checkpoint_layer=N * d * 4,
                       detail={"weight_copies_per_layer": 2.0 * weights_per_layer if autocast else 0.0,
                               "lm_head_copy": 2.0 * V * d if autocast else 0.0})
