"""The work of one training micro-step, op by op: FLOPs, bytes moved, kernel launches.

Follows the CS336 accounting: a matmul of (m x k) by (k x n) costs 2 m n k
FLOPs; its backward costs twice that (one matmul for the input gradient, one
for the weight gradient). Attention is counted two ways:

* dense: every entry of the T x T score matrix, as ``q @ k^T`` computes it
  and as ``torch.utils.flop_counter.FlopCounterMode`` counts it (bmm and sdpa);
* causal-useful: only the T (T + 1) / 2 entries the causal mask keeps.

Bytes are the minimum traffic to and from device memory of each op as the
eager model runs it (read inputs and weights once, write outputs once), in
the dtypes autocast actually uses. Kernel counts are those of the eager
model (``lm.model``), counted op by op with a dispatch mode (see the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lm.chunks import loss_chunk_rows
from lm.config.schema import ModelConfig

MATMUL_OPS = ("qkv", "attn_scores", "attn_values", "out_proj", "ffn", "lm_head")
FLASH_BLOCK = 128  # query/key tile of fused attention kernels: they skip tiles above the diagonal


@dataclass(frozen=True)
class Op:
    """One operation of the forward pass, repeated ``count`` times (once per layer, or once)."""

    name: str
    group: str
    """Reporting bucket: embeddings, attention, ffn, norms, lm_head, loss, other."""
    kind: str
    """'matmul', 'attention' (a fused attention kernel) or 'elementwise'."""
    count: int
    flops: float
    """Forward FLOPs per occurrence, dense (what the kernels of the naive path compute)."""
    causal_flops: float
    """Forward FLOPs per occurrence that the causal mask does not throw away."""
    exec_flops: float
    """Forward FLOPs per occurrence the kernel really executes (a fused causal kernel skips masked tiles)."""
    bytes: float
    """Forward memory traffic per occurrence."""
    kernels: float
    """Kernel launches of the forward per occurrence."""
    per_layer: bool = False
    """Part of a transformer block (recomputed under activation checkpointing)."""
    backward_flops: float = 2.0
    """Backward FLOPs as a multiple of forward."""
    backward_kernels: float = 0.0
    """Kernel launches of the backward per occurrence (issued by autograd's C++ engine)."""
    einx_calls: float = 0.0
    """einx calls per occurrence: host time on top of the launches (gone when compiled)."""
    cpp_kernels: float = 0.0
    """Of ``kernels``, those issued from C++ without a Python call of their own (autocast's casts,
    a foreach op's chunks): priced at ``cpp_launch_us``, not like Python-level ops."""

    @property
    def is_matmul(self) -> bool:
        """A matrix multiply (these are the FLOPs MFU counts); the rest is non-matmul work."""
        return self.name in MATMUL_OPS


def flash_fraction(T: int) -> float:
    """Fraction of the dense T x T tiles a causal fused kernel computes (tiles on and below the diagonal)."""
    nb = max(1, math.ceil(T / FLASH_BLOCK))
    return (nb + 1) / (2 * nb) if nb > 1 else 1.0


def forward_ops(cfg: ModelConfig, batch: int, T: int, *, autocast: bool = False, exp_fp32: bool = True,
                fused_attention: bool = False, flash_backward: float = 2.5, fused_loss: bool = True,
                compiled_loss: bool = False) -> list[Op]:
    """Every op of one forward pass plus the loss, for ``batch`` sequences of ``T`` tokens.

    ``autocast``: bf16 autocast (matmul inputs, outputs and weight copies in bf16).
    ``exp_fp32``: autocast runs exp/sum in fp32 (CUDA and MPS; not CPU).
    ``fused_attention``: sdpa runs one fused kernel that skips masked tiles (flash).
    ``fused_loss``: the chunked LM head + loss of lm.functional.linear_cross_entropy (else full
    logits and F.cross_entropy on their fp32 upcast).
    """
    d, V, L, H, f = cfg.d_model, cfg.vocab_size, cfg.num_layers, cfg.num_heads, cfg.ffn_dim
    N = batch * T  # tokens
    a = 2 if autocast else 4  # bytes per element of matmul inputs/outputs
    x = 4 if (not autocast or exp_fp32) else 2  # bytes per element of exp/sum/div in the naive softmax
    R = 4  # the residual stream and RMSNorm work in fp32 whatever autocast does
    S = batch * H * T * T  # entries of the score matrices, all heads
    S_causal = batch * H * T * (T + 1) // 2
    has_norm = cfg.norm != "none"
    swiglu = cfg.ffn == "swiglu"
    ops: list[Op] = []

    def add(name, group, kind, count, flops, bytes_, kernels, *, causal=None, exec_=None, per_layer=False,
            backward=2.0, einx_calls=0, cpp_kernels=0, backward_kernels=None):
        # Backward: about two kernels per forward kernel (a matmul's input and weight gradients);
        # one per autocast cast (the gradient cast back).
        if backward_kernels is None:
            backward_kernels = 2.0 * (kernels - cpp_kernels) + cpp_kernels
        ops.append(Op(name, group, kind, count, float(flops), float(flops if causal is None else causal),
                      float(flops if exec_ is None else exec_), float(bytes_), float(kernels), per_layer, backward,
                      float(backward_kernels), float(einx_calls), float(cpp_kernels)))

    # --- embedding: a gather of N rows of d fp32 values
    add("embedding", "embeddings", "elementwise", 1, 0, N * d * 4 * 2 + N * 8, 1)

    # --- per block
    def rmsnorm(name):
        # x.pow(2) r/w, mean r, x*rms r/w, *w r/w: 7 passes over fp32 values.
        add(name, "norms", "elementwise", L, 4 * N * d, 7 * N * d * R, 6, per_layer=True)

    if has_norm:
        rmsnorm("ln1")
    add("qkv", "attention", "matmul", L, 2 * N * d * 3 * d, a * (N * d + 3 * d * d + 3 * N * d), 1, per_layer=True,
        einx_calls=2)  # the projection and the split into heads
    if cfg.position == "rope":
        # q and k: four half-width multiplies, a sub and an add, then a stack: 9 passes each.
        add("rope", "attention", "elementwise", L, 2 * 3 * N * d, 2 * 9 * N * d * a, 19, per_layer=True)
    dense_qk = 2 * batch * T * T * d  # = 2 * (B H) * T * T * d_head
    causal_qk = batch * T * (T + 1) * d
    if cfg.attention == "sdpa" and fused_attention:
        frac = flash_fraction(T)
        add("attn_scores", "attention", "attention", L, dense_qk, a * 4 * N * d, 1,
            causal=causal_qk, exec_=dense_qk * frac, per_layer=True, backward=flash_backward)
        add("attn_softmax", "attention", "attention", L, 5 * S, 0, 0, causal=5 * S_causal,
            exec_=5 * S * frac, per_layer=True, backward=flash_backward)
        add("attn_values", "attention", "attention", L, dense_qk, 0, 0,
            causal=causal_qk, exec_=dense_qk * frac, per_layer=True, backward=flash_backward)
        copies = 1  # the (B, H, T, d_head) -> (B, T, d) rearrange of the output
    else:
        add("attn_scores", "attention", "matmul", L, dense_qk, a * (2 * N * d + S), 1,
            causal=causal_qk, per_layer=True, einx_calls=1)
        # scale, mask, max, subtract, exp, sum, divide (+ a cast of the probabilities under autocast)
        sm_bytes = (2 * a + 2 * a + a + 2 * a + (a + x) + x + 2 * x + ((x + a) if x != a else 0)) * S
        sm_kernels = 10 + (1 if x != a else 0)
        if cfg.attn_dropout > 0:
            sm_bytes += (2 * x + 1) * S
            sm_kernels += 1
        add("attn_softmax", "attention", "elementwise", L, 5 * S, sm_bytes, sm_kernels,
            causal=5 * S_causal, per_layer=True)
        add("attn_values", "attention", "matmul", L, dense_qk, a * (S + 2 * N * d), 1,
            causal=causal_qk, per_layer=True, einx_calls=1)
        # einsum copies v (a strided view of the fused output) and, without RoPE, q and k too.
        copies = 1 + 1 + (2 if cfg.position == "nope" else 0)
    add("attn_copies", "attention", "elementwise", L, 0, copies * 2 * N * d * a, copies, per_layer=True,
        einx_calls=1)  # the merge of the heads
    add("out_proj", "attention", "matmul", L, 2 * N * d * d, a * (2 * N * d + d * d), 1, per_layer=True,
        einx_calls=1)
    if has_norm:
        rmsnorm("ln2")
    ffn_mats = 3 if swiglu else 2
    ffn_bytes = a * ((ffn_mats - 1) * (N * d + d * f + N * f) + (N * f + f * d + N * d))
    add("ffn", "ffn", "matmul", L, ffn_mats * 2 * N * d * f, ffn_bytes, ffn_mats, per_layer=True,
        einx_calls=ffn_mats)
    # SiLU = x * sigmoid(x) (+ the gate multiply for SwiGLU)
    add("ffn_act", "ffn", "elementwise", L, (6 if swiglu else 5) * N * f, (8 if swiglu else 5) * N * f * a,
        3 if swiglu else 2, per_layer=True)
    resid_bytes = 2 * (R + a + R) * N * d
    resid_kernels = 2
    if cfg.resid_dropout > 0:
        resid_bytes += 2 * (2 * a + 1) * N * d
        resid_kernels += 2
    add("residual", "other", "elementwise", L, 2 * N * d, resid_bytes, resid_kernels, per_layer=True)
    if autocast:
        layer_weights = 4 * d * d + ffn_mats * d * f
        # fp32 -> bf16: each weight once per forward (autocast caches the copy), the
        # two fp32 matmul inputs per block, and the RoPE tables.
        # The RoPE tables' .to() is a Python call in fp32 too (a no-op there); the rest autocast issues itself.
        add("casts", "other", "elementwise", L, 0, 6 * layer_weights + 2 * 6 * N * d, 2 + ffn_mats + 2 + 2,
            per_layer=True, cpp_kernels=2 + ffn_mats + 2)

    # --- head
    if has_norm:
        add("ln_final", "norms", "elementwise", 1, 4 * N * d, 7 * N * d * R, 6)
    if compiled_loss:
        # LM head + F.cross_entropy inside the compiled region: the logits written once in the matmul
        # dtype, read by the fused log-sum-exp kernel and again by the backward's softmax kernel,
        # which writes their gradient (matmul dtype) for the two gradient matmuls.
        add("lm_head", "lm_head", "matmul", 1, 2 * N * d * V, a * (N * d + V * d + N * V), 1)
        if autocast:
            add("head_casts", "other", "elementwise", 1, 0, 6 * (V * d + N * d), 2)
        add("loss", "loss", "elementwise", 1, 5 * N * V, 3 * a * N * V, 2, backward_kernels=1)
        return ops
    if fused_loss:
        # Per chunk: the logits matmul, then (in the forward) the input and weight gradient matmuls,
        # priced as the matmul's backward. The chunk's softmax pass: logits written (a) and read,
        # upcast, max, exp, sum, the gradient written in the matmul dtype (a), then read by both
        # gradient matmuls. Eager: 16 elementwise kernels a chunk (17 under autocast) and 4 more;
        # the backward only scales the two stored gradients (3 kernels).
        chunks = -(-N // loss_chunk_rows(V))
        add("lm_head", "lm_head", "matmul", 1, 2 * N * d * V, a * (N * d + V * d + N * V), 3 * chunks,
            backward_kernels=0)
        if autocast:
            add("head_casts", "other", "elementwise", 1, 0, 6 * V * d + 6 * N * d, 1 + 3 * chunks, backward_kernels=0)
        add("loss", "loss", "elementwise", 1, 6 * N * V, (3 * a + 16) * N * V + 16 * (N + V) * d,
            4 + (17 if autocast else 16) * chunks, backward_kernels=3)
        return ops
    add("lm_head", "lm_head", "matmul", 1, 2 * N * d * V, a * (N * d + V * d + N * V), 1, einx_calls=1)
    if autocast:
        add("head_casts", "other", "elementwise", 1, 0, 6 * (V * d + N * d), 2, cpp_kernels=2)
    # F.cross_entropy(logits.float()): the upcast (under autocast), log_softmax (2 reads, 1 write), nll.
    loss_bytes = (6 if autocast else 0) * N * V + 12 * N * V
    add("loss", "loss", "elementwise", 1, 5 * N * V, loss_bytes, 4 if autocast else 3)
    return ops


def _multi_tensor_launches(num_params: int, num_tensors: int, lists: int) -> float:
    """Kernel launches of one ``torch._foreach_*`` op on CUDA (multi_tensor_apply).

    Each launch takes at most 320 chunks of 65536 elements and a few dozen tensors
    (fewer the more tensor lists the op reads: 110, 64, 48, 36 for 1-4 lists).
    """
    max_tensors = {1: 110, 2: 64, 3: 48, 4: 36}[lists]
    return float(max(math.ceil(num_tensors / max_tensors), math.ceil(num_params / (320 * 65536)), 1))


def optimizer_ops(num_params: int, num_tensors: int, *, grad_clip: bool, multi_tensor: bool = True,
                  groups: int = 2, fused: bool = False) -> list[Op]:
    """lm.optim.AdamW and lm.optim.clip_grad_norm, both built on ``torch._foreach_*`` ops.

    AdamW per parameter: lerp_ m (12 bytes), mul_ v (8), addcmul_ v (12), mul_ p (8, weight
    decay), sqrt(v) into a temporary (8), add_ eps (8), addcdiv_ p (16): 72 bytes. Clipping:
    _foreach_norm reads the gradients (4), _foreach_mul_ scales them (8). ``multi_tensor``:
    CUDA's fused multi-tensor kernels; elsewhere the foreach ops loop over tensors.
    ``groups``: parameter groups (decayed matrices, undecayed vectors), each its own launches.
    ``fused``: AdamW as torch's one fused kernel (CUDA): reads p, g, m, v and writes p, m, v (28 bytes).
    """
    adam_lists = (2, 1, 3, 1, 2, 1, 3)  # tensor lists each of the seven foreach ops touches
    # Python calls: seven foreach ops per group; clipping's two foreach ops and ~6 small tensor ops. The
    # foreach ops issue their kernels from C++ (one per tensor chunk), priced as plain launches.
    # The per-tensor Python loops (state lookups, the norms' .to()) are a few
    # microseconds per tensor and left out.
    adam_calls, clip_calls = len(adam_lists) * groups, 2 + 6
    if multi_tensor:
        # The decayed group holds nearly all parameters; each other group (norm gains) needs one launch per op.
        adam_kernels = (sum(_multi_tensor_launches(num_params, num_tensors, n) for n in adam_lists)
                        + (groups - 1) * len(adam_lists))
        clip_kernels = sum(_multi_tensor_launches(num_params, num_tensors, n) for n in (1, 1)) + 6
    else:
        adam_kernels = len(adam_lists) * num_tensors
        clip_kernels = 2 * num_tensors + 6
    adam_bytes = 72 * num_params
    if fused:
        adam_kernels = _multi_tensor_launches(num_params, num_tensors, 4) + (groups - 1)
        adam_calls, adam_bytes = 2 * groups, 28 * num_params  # the step-count fill and the kernel, per group
    ops = [Op("adamw", "optimizer", "elementwise", 1, 12 * num_params, 12 * num_params, 12 * num_params,
              adam_bytes, adam_kernels, backward_flops=0, cpp_kernels=max(0.0, adam_kernels - adam_calls))]
    if grad_clip:
        ops.append(Op("grad_clip", "optimizer", "elementwise", 1, 3 * num_params, 3 * num_params,
                      3 * num_params, 12 * num_params, clip_kernels, backward_flops=0,
                      cpp_kernels=max(0.0, clip_kernels - clip_calls)))
    return ops


def grad_accumulate_op(num_params: int, num_tensors: int) -> Op:
    """Adding a micro-batch's gradients into .grad (every micro-batch after the first)."""
    return Op("grad_accumulate", "optimizer", "elementwise", 1, num_params, num_params, num_params,
              12 * num_params, num_tensors, backward_flops=0, cpp_kernels=num_tensors)  # autograd adds them
