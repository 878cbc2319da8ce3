"""The engine's one-token forward in torch: ``model(tokens, positions, caches)`` for B slots at once.

Each of the B rows is one KV-cache slot at its own position (continuous
batching), so positions are a (B,) tensor and every row attends only to its
own cache row up to its own position. At batch 1 a decode step reads every weight once (a small fraction
of the step's time on a GPU: docs/performance.md, Decoding) but runs one kernel per op, and each kernel costs a few
microseconds even replayed from a CUDA graph: the step's time is mostly its
kernel count. ``TransformerLM.forward`` spends ~47 ops per layer on one token;
:class:`TorchStep` computes the same function of the same weights in 12:

* RMSNorm: one ``F.rms_norm``;
* Q, K, V: one matmul; RoPE on Q and K (and identity on V) as one batched
  matmul with a (3, d_head, d_head) block-rotation matrix built once per step
  from the position (one tiny matmul against a constant basis);
* the new K and V: one indexed write into the layer's joint (2, B, ...) K/V
  buffer (:func:`joint_kv_caches`), each row at its own position;
* attention: torch's SDPA over the first ``window`` cache slots with an
  additive (B, 1, 1, window) mask (slots after a row's position are -inf);
* residual adds folded into the output matmuls (``addmm_`` in place);
* SwiGLU's W1 and W3 as one matmul on a concatenated copy of the two weights
  (refreshed when the model's weights change in place), then SiLU and a multiply.

The tests compare it with ``model.forward`` for every ablation switch.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

TORCH_STEP_KNOWS = {"vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta",
                    "norm", "position", "ffn", "tie_embeddings", "attn_dropout", "resid_dropout", "attention",
                    "rmsnorm_eps", "residual"}


def torch_step_problem(model: torch.nn.Module) -> str | None:
    """Why :class:`TorchStep` cannot stand in for ``model``'s forward (None if it can)."""
    from lm import model as M  # noqa: N812

    if type(model) is not M.TransformerLM:
        return f"{type(model).__name__} is not lm.model.TransformerLM"
    unknown = {f.name for f in dataclasses.fields(model.cfg)} - TORCH_STEP_KNOWS
    if unknown:
        return f"model settings {sorted(unknown)} are unknown to the torch step"
    for layer in model.layers:
        parts = [(layer, M.TransformerBlock), (layer.attn, M.CausalSelfAttention)]
        parts += [(layer.ffn, M.SwiGLU if model.cfg.ffn == "swiglu" else M.SiLUMLP)]
        parts += [(getattr(layer, n, None), M.RMSNorm) for n in ("ln1", "ln2") if model.cfg.norm != "none"]
        if any(type(m) is not cls for m, cls in parts):
            return "the model's layers are not the ones the torch step was written for"
    return None


def joint_kv_caches(model: torch.nn.Module, batch: int = 1) -> list:
    """``model.new_kv_caches(batch)`` with each layer's K and V the two halves of one (2, B, H, T, d) tensor.

    ``model.forward`` sees ordinary caches; the torch step writes a token's K
    and V with one copy instead of two.
    """
    caches = model.new_kv_caches(batch)
    for cache in caches:
        joint = torch.zeros((2, *cache.k.shape), dtype=cache.k.dtype, device=cache.k.device)
        cache.k, cache.v = joint[0], joint[1]  # registered buffers: assignment replaces them
    return caches


def _joint_of(cache) -> torch.Tensor | None:
    """The (2, B, H, T, d) tensor whose halves are ``cache.k`` and ``cache.v``, if they are such halves."""
    base = cache.k._base
    if (base is None or cache.v._base is not base or tuple(base.shape) != (2, *cache.k.shape)
            or cache.k.data_ptr() != base[0].data_ptr() or cache.v.data_ptr() != base[1].data_ptr()):
        return None
    return base


def rotation_basis(d_head: int, dtype, device) -> torch.Tensor:
    """M (d_head + 1, 3 d_head^2): [cos, sin, 1] @ M = the flattened (3, d, d) matrices [R, R, I].

    R rotates the pairs (x[2i], x[2i+1]) of a row vector by the angles whose
    cosines and sines are given: x @ R = (x0 c - x1 s, x0 s + x1 c), the
    model's RoPE; the third block is the identity, for V. The entries are 0 and
    +-1, so the product is exact in any dtype.
    """
    half = d_head // 2
    m = torch.zeros(d_head + 1, 3, d_head, d_head, dtype=torch.float64)
    i = torch.arange(half)
    for block in (0, 1):
        m[i, block, 2 * i, 2 * i] = 1.0  # cos_i
        m[i, block, 2 * i + 1, 2 * i + 1] = 1.0
        m[half + i, block, 2 * i, 2 * i + 1] = 1.0  # sin_i
        m[half + i, block, 2 * i + 1, 2 * i] = -1.0
    m[d_head, 2] = torch.eye(d_head, dtype=torch.float64)
    return m.flatten(1).to(device=device, dtype=dtype)


class TorchStep:
    """``model(tokens, positions, caches)`` for one token per slot in a dozen kernels per layer
    (see the module doc).

    Reads the model's weights in place, except SwiGLU's concatenated W1|W3,
    a copy refreshed by :meth:`refresh` whenever the model's W1 or W3 changed.
    """

    uses_windows = True

    def __init__(self, model: torch.nn.Module, caches):
        cfg = self.cfg = model.cfg
        self.emb, self.head = model.token_embeddings.weight, model.lm_head.weight
        dtype, dev = self.head.dtype, self.head.device
        self.final = model.ln_final.weight if cfg.norm != "none" else None
        norms = cfg.norm != "none"
        self.batch = caches[0].k.shape[0]
        self.rows = torch.arange(self.batch, device=dev)
        self.layers = []
        self._ffn_sources = []
        for block, cache in zip(model.layers, caches):
            ffn = block.ffn
            if cfg.ffn == "swiglu":
                self._ffn_sources.append((ffn.w1.weight, ffn.w3.weight))
                w13 = torch.cat([ffn.w1.weight.detach(), ffn.w3.weight.detach()])
            else:
                w13 = ffn.w1.weight
            self.layers.append(_Layer(block.ln1.weight if norms else None, block.attn.qkv_proj.weight,
                                      block.attn.output_proj.weight, block.ln2.weight if norms else None,
                                      w13, ffn.w2.weight, cache, _joint_of(cache)))
        self._versions = self._source_versions()
        self.k_pos = torch.arange(cfg.context_length, device=dev).view(1, -1)
        self.zero = torch.zeros((), dtype=dtype, device=dev)
        self.ninf = torch.full((), float("-inf"), dtype=dtype, device=dev)
        if cfg.position == "rope":
            rope = model.layers[0].attn.rope
            ones = torch.ones(cfg.context_length, 1, device=rope.cos.device)
            self.rope_rows = torch.cat([rope.cos, rope.sin, ones], 1).to(dtype)  # (context, d_head + 1)
            self.rope_basis = rotation_basis(cfg.d_head, dtype, dev)

    def _source_versions(self) -> list[int]:
        return [w._version for pair in self._ffn_sources for w in pair]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy W1|W3 again if the model's weights were changed in place (training, load_state_dict)."""
        if self._source_versions() == self._versions:
            return
        for (w1, w3), layer in zip(self._ffn_sources, self.layers):
            layer.w13[:w1.shape[0]].copy_(w1)  # in place: captured CUDA graphs keep reading this buffer
            layer.w13[w1.shape[0]:].copy_(w3)
        self._versions = self._source_versions()

    def _norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rmsnorm_eps)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, window: int | None = None,
                 logits_out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) in the model's dtype for ``tokens`` (B,) at ``positions`` (B,), one per slot.

        Writes each token's K/V into its row of the caches, and the logits into
        ``logits_out`` (fp32) if given. Attention reads only the first ``window``
        slots (default: all); every position must be below it.
        """
        c = self.cfg
        B, H, dh, d = self.batch, c.num_heads, c.d_head, c.d_model
        pre, post = c.norm == "pre", c.norm == "post"
        window = window or c.context_length
        x = self.emb.index_select(0, tokens)  # (B, d)
        mask = torch.where(self.k_pos[:, :window] <= positions.view(B, 1), self.zero, self.ninf)  # (B, window)
        mask = mask.view(B, 1, 1, window)  # (B, window) -> (B, heads, query, window), broadcast
        if c.position == "rope":  # [R(position), R(position), I] per row: rotates q and k, leaves v
            rotation = torch.mm(self.rope_rows.index_select(0, positions), self.rope_basis)
            rotation = rotation.view(B, 3, 1, dh, dh)  # (B, 3 d^2) -> (B, q|k|v, heads, d, d), heads broadcast
        for layer in self.layers:
            qkv = F.linear(self._norm(x, layer.ln1) if pre else x, layer.wqkv)
            qkv = qkv.view(B, 3, H, 1, dh)  # (B, 3 d) -> (B, q|k|v, heads, 1, d_head)
            if c.position == "rope":
                qkv = torch.matmul(qkv, rotation)
            kv = qkv[:, 1:, :, 0]  # (B, 2, H, d_head)
            if layer.joint is not None:
                layer.joint[:, self.rows, :, positions] = kv  # (2, B, H, C, d)[:, b, :, pos_b] <- (B, 2, H, d)
            else:
                layer.cache.k[self.rows, :, positions] = kv[:, 0]
                layer.cache.v[self.rows, :, positions] = kv[:, 1]
            att = F.scaled_dot_product_attention(qkv[:, 0], layer.cache.k[:, :, :window],
                                                 layer.cache.v[:, :, :window], attn_mask=mask)
            att = att.view(B, d)  # (B, H, 1, d_head) -> (B, d)
            x = x.addmm_(att, layer.wo.t()) if c.residual else torch.mm(att, layer.wo.t())  # x is this step's own
            if post:
                x = self._norm(x, layer.ln1)
            g = F.linear(self._norm(x, layer.ln2) if pre else x, layer.w13)
            if c.ffn == "swiglu":
                g = F.silu(g[:, :g.shape[1] // 2]).mul_(g[:, g.shape[1] // 2:])
            else:
                g = F.silu(g)
            x = x.addmm_(g, layer.w2.t()) if c.residual else torch.mm(g, layer.w2.t())
            if post:
                x = self._norm(x, layer.ln2)
        if self.final is not None:
            x = self._norm(x, self.final)
        logits = F.linear(x, self.head)
        if logits_out is not None:
            logits_out.copy_(logits)
        return logits


@dataclasses.dataclass
class _Layer:
    """One block's weights as the step reads them, with its cache (and the joint K/V tensor behind it)."""

    ln1: torch.Tensor | None
    wqkv: torch.Tensor
    wo: torch.Tensor
    ln2: torch.Tensor | None
    w13: torch.Tensor
    w2: torch.Tensor
    cache: object
    joint: torch.Tensor | None
