"""Peak memory of a training step, phase by phase, against the device's capacity.

The step modelled is lab's trainer (``lm.train.trainer``): ``zero_grad(set_to_none)``,
forward under autocast, the fused chunked LM head + cross-entropy, backward, gradient
clipping, ``lm.optim.AdamW`` (fused on CUDA, multi-tensor elsewhere). Persistent state is fp32 weights (4 bytes per
parameter, also under bf16 autocast, which only makes bf16 *copies* for the
matmuls), fp32 gradients (4) and two fp32 AdamW moments (8): 16 bytes per
parameter. On top of that, at each moment of the step, whatever activations
autograd still holds plus short-lived tensors. The peak is the largest of:

* forward: everything saved, plus one chunk of the fused loss's logits;
* loss backward: saved tensors plus the loss's stored gradients, scaled;
* each block's backward: the blocks not yet done, the gradients already made,
  the block's own activations (recomputed if checkpointed) and its temporaries;
* optimizer step: gradients, moments, and (off CUDA) AdamW's sqrt(v) temporaries for all matrices at once.

``peak`` is what ``torch.cuda.max_memory_allocated`` measures; ``total`` adds
the allocator's slack and the CUDA context, which the device must also hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lm.calc.activations import Activations
from lm.calc.optimizer import optimizer_state_bytes, step_temporaries_bytes
from lm.calc.params import ParamCount
from lm.calc.settings import Settings
from lm.config.schema import ModelConfig
from lm.chunks import loss_chunk_rows


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a training step's memory, and the peak."""

    params: float
    buffers: float
    grads: float
    optimizer: float
    weight_copies: float
    activations: float
    loss: float
    peak: float
    peak_phase: str
    fragmentation: float
    overhead: float
    capacity: float
    phases: dict[str, float] = field(default_factory=dict)
    activations_per_layer: float = 0.0

    @property
    def persistent(self) -> float:
        """Weights, buffers, gradients and optimizer state (16 bytes per parameter plus buffers)."""
        return self.params + self.buffers + self.grads + self.optimizer

    @property
    def total(self) -> float:
        """What the device must hold: allocated peak + allocator slack + framework overhead."""
        return self.peak + self.fragmentation + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def headroom(self) -> float:
        """Capacity minus total (negative: over by that much)."""
        return self.capacity - self.total

    def to_dict(self) -> dict:
        return {"params": self.params, "buffers": self.buffers, "grads": self.grads, "optimizer": self.optimizer,
                "weight_copies": self.weight_copies, "activations": self.activations, "loss": self.loss,
                "activations_per_layer": self.activations_per_layer, "persistent": self.persistent,
                "peak": self.peak, "peak_phase": self.peak_phase, "fragmentation": self.fragmentation,
                "overhead": self.overhead, "total": self.total, "capacity": self.capacity, "fits": self.fits,
                "headroom": self.headroom, "phases": dict(self.phases)}


def block_backward_extra(cfg: ModelConfig, act: Activations, batch: int, T: int, autocast: bool,
                         naive: bool, device_kind: str) -> tuple[float, float]:
    """Extra bytes at the two high points of one block's backward: (in the FFN, in the attention).

    FFN first: the residual gradient, W2's weight gradient, and the gated product's
    gradient next to the two it splits into (SwiGLU's multiply backward).
    Attention next, after the FFN's saved tensors are freed and its gradients made:
    in the naive path, the gradient of the probabilities and four score-sized
    temporaries of the division's backward (softmax); in sdpa, the q, k, v gradients.
    Checked against the CPU allocator's trace in the tests.
    """
    N, d, f = batch * T, cfg.d_model, cfg.ffn_dim
    a = 2 if autocast else 4
    x = 4 if (not autocast or device_kind != "cpu") else 2
    ffn = N * d * 4 + 4 * d * f + 2 * N * f * a
    layer = act.layer
    # (ffn.matmul_outputs: what a compiled block keeps instead of ffn.hidden and ffn.input)
    ffn_saved = layer.get("ffn.hidden", 0) + layer.get("ffn.input", 0) + layer.get("ffn.matmul_outputs", 0)
    if cfg.norm != "none":
        ffn_saved += sum(layer.get(f"norms.{k}", 0) for k in ("input", "normalized", "rms")) / 2
    ffn_grads = 4 * ((3 if cfg.ffn == "swiglu" else 2) * d * f + (d if cfg.norm != "none" else 0) + d * d)
    freed = ffn_saved + layer.get("out_proj.input", 0)
    if naive:
        S = batch * cfg.num_heads * T * T
        attn_temps = N * d * 4 + 5 * S * x
        freed += layer["attn.probs"]
    else:
        attn_temps = N * d * 4 + 4 * N * d * a
    return ffn, ffn_grads + attn_temps - freed


def estimate_memory(cfg: ModelConfig, s: Settings, params: ParamCount, act: Activations, *,
                    capacity: float, overhead: float, fragmentation: float, naive_attention: bool,
                    device_kind: str = "cuda") -> MemoryEstimate:
    """Walk the phases of a (steady-state) training step and return the peak."""
    P = params.total
    L = cfg.num_layers
    N = s.tokens
    V = cfg.vocab_size
    autocast = s.dtype == "bf16"
    weights = 4.0 * P
    buffers = 4.0 * params.rope_buffer_elements
    grads = 4.0 * P
    adam = optimizer_state_bytes(cfg, params, s.optimizer)  # AdamW 8 bytes/param; Muon 4 for its matrices
    static = weights + buffers + adam
    accumulating = s.grad_accum > 1  # from the second micro-batch on, all gradients already exist
    g_acc = grads if accumulating else 0.0

    head_acts = sum(act.head.values())
    loss_acts = sum(act.loss.values())
    cp_layer = act.detail.get("weight_copies_per_layer", 0.0)
    kept = act.per_layer_kept
    full = act.per_layer
    # Without checkpointing the copies are saved by the matmuls; with it none is, nor when they are
    # recast in backward (recompute_weight_copies): then only the block that runs holds its copies.
    copies_recomputed = s.activation_checkpointing or s.recompute_weight_copies
    layer_copies_kept = 0.0 if copies_recomputed else L * cp_layer

    fused = s.engine == "fused"
    compiled_loss = fused and s.compile  # LM head + cross-entropy fused by Inductor
    cp_head = act.detail.get("lm_head_copy", 0.0)
    logits_var = 0.0 if fused else act.loss["logits"]  # the unfused loop's variable holds the logits
    phases: dict[str, float] = {}
    # A recomputed copy lives only while its block runs (Linear casts its own weight, so autocast's
    # cache, which would hold every copy to the end of the forward, never sees it).
    fwd_copies = cp_layer if copies_recomputed else L * cp_layer
    model_fwd_end = static + g_acc + L * kept + head_acts + fwd_copies + cp_head + logits_var
    after_fwd = static + g_acc + L * kept + head_acts + layer_copies_kept + cp_head
    if compiled_loss:
        a = 2.0 if autocast else 4.0
        phases["forward"] = max(model_fwd_end, after_fwd + loss_acts)
        phases["loss backward"] = after_fwd + loss_acts + a * N * V  # the logits' gradient, matmul dtype
    elif fused:
        # Inside the fused loss, one chunk at a time: the chunk's fp32 logits turned in place into the
        # gradient, its bf16 copy (autocast), the LM head's bf16 copy and the chunk's input copy.
        d = cfg.d_model
        rows = min(N, loss_chunk_rows(V))
        a = 2.0 if autocast else 0.0
        chunk = rows * V * (4.0 + a) + a * V * d + a * rows * d + (2.0 if autocast else 4.0) * rows * d
        phases["forward"] = max(model_fwd_end, after_fwd + loss_acts + chunk)
        phases["loss backward"] = after_fwd + 2 * loss_acts  # the stored gradients, scaled into new tensors
    else:
        upcast = 4.0 * N * V if autocast else 0.0  # logits.float() lives while log_softmax writes its output
        phases["forward"] = max(model_fwd_end, after_fwd + loss_acts + upcast)
        phases["loss backward"] = after_fwd + loss_acts + 8.0 * N * V  # grads of log_softmax and of the logits

    # Gradients of the head (LM head and final norm) exist once the head has run backward.
    head_params = (0 if cfg.tie_embeddings else V * cfg.d_model) + (cfg.d_model if cfg.norm != "none" else 0)
    per_layer_params = (params.attention + params.ffn) / L + (2 * cfg.d_model if cfg.norm != "none" else 0)
    ffn_extra, attn_extra = block_backward_extra(cfg, act, s.batch_size, s.context_length, autocast,
                                                 naive_attention, device_kind)
    worst_layer, worst_i = 0.0, L
    for i in range(L, 0, -1):  # block i runs backward; blocks 1..i-1 still hold their activations
        made = g_acc if accumulating else 4.0 * (head_params + (L - i) * per_layer_params)
        copies = (cp_layer if copies_recomputed else i * cp_layer)
        base = (static + made + act.head.get("embedding.indices", 0.0) + (i - 1) * kept + full + copies
                + logits_var)
        alive = base + max(ffn_extra, attn_extra)
        if alive > worst_layer:
            worst_layer, worst_i = alive, i
    phases[f"backward (block {worst_i})"] = worst_layer
    # On CUDA AdamW is one fused kernel (no temporaries); elsewhere its _foreach_sqrt(v) makes a
    # temporary for every tensor of a parameter group at once, and the decayed group holds every matrix.
    phases["optimizer step"] = (static + grads + logits_var
                                + step_temporaries_bytes(cfg, params, s.optimizer, fused=device_kind == "cuda" and fused))

    phase, peak = max(phases.items(), key=lambda kv: kv[1])
    return MemoryEstimate(params=weights, buffers=buffers, grads=grads, optimizer=adam,
                          weight_copies=act.weight_copies, activations=act.model, loss=loss_acts,
                          peak=peak, peak_phase=phase, fragmentation=fragmentation * peak, overhead=overhead,
                          capacity=capacity, phases=phases, activations_per_layer=full)
