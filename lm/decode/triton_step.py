"""Triton kernels for the batch-1 decode step on CUDA: a layer in six kernels.

Profiled on a GPU (timings in docs/performance.md, Decoding), the torch version of the
step (:class:`lm.decode.torch_step.TorchStep`) is bound by kernel count and by cuBLAS's
matrix-vector kernels, which cost a fixed few microseconds each whatever their size,
plus cuDNN attention over a padded window. Here each layer is:

1. RMSNorm + QKV projection + RoPE + writing K and V into the cache at the
   position (read on the device, so the kernel replays in a CUDA graph);
2. attention, split over blocks of cache slots (flash-decoding): each block
   of slots up to the position gives its max, sum and weighted values;
3. the combination of those blocks per head;
4. output projection + residual add, in place;
5. RMSNorm + W1 and W3 + SiLU(W1 h) * W3 h;
6. W2 + residual add, in place.

Every matrix-vector product accumulates in fp32 and rounds its output to the
model's dtype where ``TransformerLM.forward`` does, so the two agree to the
dtype's rounding (``bench/decode.py --check`` compares them in fp32 on a GPU).
Models the kernels do not cover (post-norm) use the torch step.
"""

from __future__ import annotations

import os
import threading

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only torch, macOS, Windows): the torch step is used
    triton = tl = None

# Cache slots per attention block: each (head, block) is one program; blocks after the position exit at once.
ATTENTION_BLOCK = 64
# Rows x columns of the weight tile of each matrix-vector kernel (picked on an H100; see docs/performance.md (Decoding)).
TILES = {"qkv": (8, 256), "swiglu": (4, 256), "residual": (2, 1024), "head": (16, 256)}


def triton_usable(device: torch.device) -> bool:
    """Whether Triton kernels can run on ``device`` (Triton installed, a CUDA device)."""
    return triton is not None and torch.device(device).type == "cuda"


def triton_step_problem(model: torch.nn.Module) -> str | None:
    """Why :class:`TritonStep` cannot run ``model``'s decode step (None if it can)."""
    if triton is None:
        return "Triton is not installed"
    weight = model.lm_head.weight
    if weight.device.type != "cuda":
        return "Triton kernels run on CUDA devices only"
    if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {weight.dtype} is not supported by the Triton step"
    cfg = model.cfg
    if cfg.norm == "post":
        return "post-norm is not covered by the Triton step"
    if not getattr(cfg, "residual", True):
        return "the no-residual ablation is not covered by the Triton step"
    if cfg.d_head % 2:
        return "an odd head size cannot hold RoPE pairs"
    return None


if triton is not None:
    @triton.jit
    def _rms_scale(x_ptr, D: tl.constexpr, eps, BLOCK_K: tl.constexpr):
        """1 / rms(x) over the D entries of x."""
        total = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + k, mask=k < D, other=0.0).to(tl.float32)
            total += x * x
        return tl.rsqrt(tl.sum(total, 0) / D + eps)

    @triton.jit
    def _norm_qkv_rope_kernel(x_ptr, g_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, eps, C,
                              D: tl.constexpr, DH: tl.constexpr, HAS_NORM: tl.constexpr, ROPE: tl.constexpr,
                              BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
        """Rows [2 P pid, 2 P (pid + 1)) of W_qkv h, as (even, odd) row pairs so RoPE stays in the program."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * 2 * BLOCK_P + 2 * tl.arange(0, BLOCK_P)  # even rows
        if HAS_NORM:
            scale = _rms_scale(x_ptr, D, eps, BLOCK_K)
        acc_e = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
        acc_o = tl.zeros((BLOCK_P, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            if HAS_NORM:  # the model's RMSNorm: fp32, then rounded to the model's dtype
                h = (h * scale * tl.load(g_ptr + k, mask=kmask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
            w_e = tl.load(w_ptr + rows[:, None] * D + k[None, :], mask=kmask[None, :], other=0.0)
            w_o = tl.load(w_ptr + (rows[:, None] + 1) * D + k[None, :], mask=kmask[None, :], other=0.0)
            acc_e += w_e.to(tl.float32) * h[None, :]
            acc_o += w_o.to(tl.float32) * h[None, :]
        even = tl.sum(acc_e, 1).to(dtype).to(tl.float32)
        odd = tl.sum(acc_o, 1).to(dtype).to(tl.float32)
        part = tl.program_id(0) * 2 * BLOCK_P // D  # 0 q, 1 k, 2 v: a program's rows are all one of them
        col = rows % D  # head * DH + d
        pos = tl.load(pos_ptr)
        if ROPE:
            if part < 2:
                pair = (col % DH) // 2
                c = tl.load(cos_ptr + pos * (DH // 2) + pair).to(dtype).to(tl.float32)
                s = tl.load(sin_ptr + pos * (DH // 2) + pair).to(dtype).to(tl.float32)
                even, odd = even * c - odd * s, even * s + odd * c
        if part == 0:
            dst = q_ptr + col
        else:
            slot = (col // DH) * C * DH + pos * DH + col % DH  # cache (1, H, C, DH)
            if part == 1:
                dst = k_ptr + slot
            else:
                dst = v_ptr + slot
        tl.store(dst, even.to(dtype))
        tl.store(dst + 1, odd.to(dtype))

    @triton.jit
    def _attention_block_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, sm_scale, C, NBLOCKS,
                                DH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
        """Head program_id(0), cache slots [BLOCK_L b, BLOCK_L (b + 1)) with b = program_id(1), up to the position."""
        head, block = tl.program_id(0), tl.program_id(1)
        pos = tl.load(pos_ptr)
        start = block * BLOCK_L
        if start <= pos:
            slots = start + tl.arange(0, BLOCK_L)
            d = tl.arange(0, BLOCK_D)
            live = slots <= pos
            q = tl.load(q_ptr + head * DH + d, mask=d < DH, other=0.0).to(tl.float32)
            offs = head * C * DH + slots[:, None] * DH + d[None, :]
            mask = live[:, None] & (d[None, :] < DH)
            k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            scores = tl.where(live, tl.sum(k * q[None, :], 1) * sm_scale, float("-inf"))
            m = tl.max(scores, 0)
            e = tl.exp(scores - m)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            out = head * NBLOCKS + block
            tl.store(m_ptr + out, m)
            tl.store(l_ptr + out, tl.sum(e, 0))
            tl.store(acc_ptr + out * BLOCK_D + d, tl.sum(e[:, None] * v, 0))

    @triton.jit
    def _attention_combine_kernel(m_ptr, l_ptr, acc_ptr, pos_ptr, out_ptr, NBLOCKS,
                                  DH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                                  BLOCK_B: tl.constexpr):
        """softmax(q K^T / sqrt(d)) V of head program_id(0) from its blocks' (max, sum, weighted values)."""
        dtype = out_ptr.dtype.element_ty
        head = tl.program_id(0)
        used = tl.load(pos_ptr) // BLOCK_L + 1
        b = tl.arange(0, BLOCK_B)
        bmask = b < used
        m = tl.load(m_ptr + head * NBLOCKS + b, mask=bmask, other=float("-inf"))
        weight = tl.where(bmask, tl.exp(m - tl.max(m, 0)), 0.0)
        total = tl.sum(weight * tl.load(l_ptr + head * NBLOCKS + b, mask=bmask, other=0.0), 0)
        d = tl.arange(0, BLOCK_D)
        acc = tl.load(acc_ptr + (head * NBLOCKS + b)[:, None] * BLOCK_D + d[None, :], mask=bmask[:, None], other=0.0)
        out = tl.sum(weight[:, None] * acc, 0) / total
        tl.store(out_ptr + head * DH + d, out.to(dtype), mask=d < DH)

    @triton.jit
    def _gemv_residual_kernel(a_ptr, w_ptr, x_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr):
        """x += W a for rows [BLOCK_N pid, BLOCK_N (pid + 1)), in place (W a rounded first, as the model does)."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < K
            a = tl.load(a_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            acc += w.to(tl.float32) * a[None, :]
        y = tl.sum(acc, 1).to(dtype).to(tl.float32)
        x = tl.load(x_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(x_ptr + rows, (x + y).to(dtype), mask=rmask)

    @triton.jit
    def _norm_ffn_in_kernel(x_ptr, g_ptr, w1_ptr, w3_ptr, out_ptr, eps, N, D: tl.constexpr,
                            HAS_NORM: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr):
        """SiLU(W1 h) * W3 h (GATED) or SiLU(W1 h), h = RMSNorm(x), for rows [BLOCK_N pid, BLOCK_N (pid + 1))."""
        dtype = w1_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        if HAS_NORM:
            scale = _rms_scale(x_ptr, D, eps, BLOCK_K)
        acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            if HAS_NORM:
                h = (h * scale * tl.load(g_ptr + k, mask=kmask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
            wmask = rmask[:, None] & kmask[None, :]
            w1 = tl.load(w1_ptr + rows[:, None] * D + k[None, :], mask=wmask, other=0.0)
            acc1 += w1.to(tl.float32) * h[None, :]
            if GATED:
                w3 = tl.load(w3_ptr + rows[:, None] * D + k[None, :], mask=wmask, other=0.0)
                acc3 += w3.to(tl.float32) * h[None, :]
        a = tl.sum(acc1, 1).to(dtype).to(tl.float32)
        out = (a * tl.sigmoid(a)).to(dtype).to(tl.float32)
        if GATED:
            out = out * tl.sum(acc3, 1).to(dtype).to(tl.float32)
        tl.store(out_ptr + rows, out.to(dtype), mask=rmask)

    @triton.jit
    def _norm_head_kernel(x_ptr, g_ptr, w_ptr, out_ptr, raw_ptr, eps, N, D: tl.constexpr, HAS_NORM: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Logits W RMSNorm(x): in the model's dtype into raw, and as fp32 into out."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        if HAS_NORM:
            scale = _rms_scale(x_ptr, D, eps, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = tl.load(x_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            if HAS_NORM:
                h = (h * scale * tl.load(g_ptr + k, mask=kmask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * D + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            acc += w.to(tl.float32) * h[None, :]
        y = tl.sum(acc, 1).to(dtype)
        tl.store(raw_ptr + rows, y, mask=rmask)
        tl.store(out_ptr + rows, y.to(tl.float32), mask=rmask)


    @triton.jit
    def _sample_blocks_kernel(logits_ptr, topk_ptr, seed_ptr, draws_ptr, neg_inv_t_ptr, score_ptr, index_ptr, max_ptr,
                              sum_ptr, V, K, GREEDY: tl.constexpr, TOP_K: tl.constexpr, BLOCK: tl.constexpr,
                              BLOCK_TOPK: tl.constexpr):
        """One block of the vocabulary: its race winner and its logits' max and sum of exp(l - max).

        The race (:func:`lm.decode.sampling.sample_rows`): the smallest ln E_i - l_i / T over the tokens at or
        above the k-th largest logit (the smallest of the K ``topk`` values), E_i = -ln U_i ~ Exp(1)
        with U_i from Philox keyed by the reply's seed and the step's draw number, so the noise is
        made inside the kernel (and the CUDA graph). Greedy: the largest logit, first on ties.
        """
        b = tl.program_id(0)
        idx = b * BLOCK + tl.arange(0, BLOCK)
        valid = idx < V
        logit = tl.load(logits_ptr + idx, mask=valid, other=float("-inf"))
        if GREEDY:
            score = -logit
        else:
            seed = tl.load(seed_ptr) + tl.load(draws_ptr) * 1000003  # a fresh Philox stream per step
            noise = -tl.log(tl.rand(seed, idx))
            score = tl.log(noise) + logit * tl.load(neg_inv_t_ptr)
            if TOP_K:
                j = tl.arange(0, BLOCK_TOPK)
                kth = tl.min(tl.load(topk_ptr + j, mask=j < K, other=float("inf")).to(tl.float32), 0)
                score = tl.where(logit < kth, float("inf"), score)
        score = tl.where(valid, score, float("inf"))
        best, at = tl.min(score, 0, return_indices=True, return_indices_tie_break_left=True)
        top = tl.max(logit, 0)
        tl.store(score_ptr + b, best)
        tl.store(index_ptr + b, b * BLOCK + at)
        tl.store(max_ptr + b, top)
        tl.store(sum_ptr + b, tl.sum(tl.where(valid, tl.exp(logit - top), 0.0), 0))

    @triton.jit
    def _sample_finish_kernel(logits_ptr, score_ptr, index_ptr, max_ptr, sum_ptr, pos_ptr, draws_ptr, tokens_ptr,
                              probs_ptr, token_in_ptr, NB, BLOCK_B: tl.constexpr):
        """The winner over the blocks (first block on ties), its probability softmax(l)[token], and the
        bookkeeping of a step: out_tokens / out_probs at the position, token_in, position + 1, draws + 1."""
        b = tl.arange(0, BLOCK_B)
        bmask = b < NB
        score = tl.load(score_ptr + b, mask=bmask, other=float("inf"))
        _, at = tl.min(score, 0, return_indices=True, return_indices_tie_break_left=True)
        token = tl.load(index_ptr + at)
        top = tl.load(max_ptr + b, mask=bmask, other=float("-inf"))
        big = tl.max(top, 0)
        total = tl.sum(tl.where(bmask, tl.load(sum_ptr + b, mask=bmask, other=0.0) * tl.exp(top - big), 0.0), 0)
        prob = tl.exp(tl.load(logits_ptr + token) - big) / total
        pos = tl.load(pos_ptr)
        tl.store(tokens_ptr + pos, token)
        tl.store(probs_ptr + pos, prob)
        tl.store(token_in_ptr, token)
        tl.store(pos_ptr, pos + 1)
        tl.store(draws_ptr, tl.load(draws_ptr) + 1)

    @triton.jit
    def _embed_kernel(emb_ptr, token_ptr, x_ptr, D: tl.constexpr, BLOCK: tl.constexpr):
        """x = the embedding row of the token."""
        k = tl.arange(0, BLOCK)
        row = tl.load(token_ptr)
        tl.store(x_ptr + k, tl.load(emb_ptr + row * D + k, mask=k < D), mask=k < D)


def _prefetch_triton_runtime() -> None:
    """Compute what Triton needs before its first launch in a process, ahead of time.

    The first Triton launch of a process hashes Triton's own ~400 MB library
    (part of every kernel's cache key), runs ``ptxas --version``, imports
    Triton's gluon front end and hashes each kernel's source, all before even
    a cached kernel loads (timed in docs/performance.md, Decoding). Started on
    a daemon thread when this module is imported (no CUDA call), it overlaps
    with loading the model instead of delaying the first reply.
    """
    try:
        from triton import knobs
        from triton.runtime.cache import triton_key

        triton_key()
        knobs.nvidia.ptxas  # noqa: B018 (runs and caches `ptxas --version`)
        import triton.experimental.gluon.language  # noqa: F401 (imported by the first specialization)
        from triton.runtime.driver import driver

        driver.active  # noqa: B018 (loads Triton's CUDA helper library; no CUDA call)
        for kernel in (_rms_scale, _norm_qkv_rope_kernel, _attention_block_kernel, _attention_combine_kernel,
                       _gemv_residual_kernel, _norm_ffn_in_kernel, _norm_head_kernel, _sample_blocks_kernel,
                       _sample_finish_kernel, _embed_kernel):
            kernel.cache_key  # noqa: B018 (hashes the source once, under Triton's own lock)
    except Exception:  # only a head start: the first launch computes whatever is missing
        pass


_PREFETCH = None
if triton is not None and os.environ.get("LAB_TRITON_PREFETCH", "1") != "0" and torch.cuda.is_available():
    _PREFETCH = threading.Thread(target=_prefetch_triton_runtime, name="lm-triton-prefetch", daemon=True)
    _PREFETCH.start()


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class TritonStep:
    """The batch-1 decode step of ``model`` in Triton kernels: same call as :class:`lm.decode.torch_step.TorchStep`.

    Reads the model's weights and ``caches`` in place (nothing is copied, so
    weights changed by training or ``load_state_dict`` are seen at once).
    Attention reads the cache only up to the position, so it needs no window.
    """

    uses_windows = False

    def __init__(self, model: torch.nn.Module, caches):
        cfg = self.cfg = model.cfg
        self.model = model
        self.caches = caches
        w = model.lm_head.weight
        dtype, dev = w.dtype, w.device
        D, H, dh = cfg.d_model, cfg.num_heads, cfg.d_head
        self.norms = cfg.norm == "pre"
        self.rope = cfg.position == "rope"
        self.gated = cfg.ffn == "swiglu"
        if self.rope:
            rope = model.layers[0].attn.rope
            self.cos, self.sin = rope.cos.contiguous(), rope.sin.contiguous()  # (context, d_head / 2) fp32
        else:
            self.cos = self.sin = torch.zeros(1, device=dev)
        self.block_d = _pow2(dh)
        self.n_blocks = -(-cfg.context_length // ATTENTION_BLOCK)
        self.x = torch.zeros(1, D, dtype=dtype, device=dev)  # the residual stream
        self.q = torch.zeros(D, dtype=dtype, device=dev)
        self.att = torch.zeros(D, dtype=dtype, device=dev)
        self.ffn = torch.zeros(cfg.ffn_dim, dtype=dtype, device=dev)
        self.raw = torch.zeros(cfg.vocab_size, dtype=dtype, device=dev)
        self.block_max = torch.zeros(H * self.n_blocks, dtype=torch.float32, device=dev)
        self.block_sum = torch.zeros(H * self.n_blocks, dtype=torch.float32, device=dev)
        self.block_acc = torch.zeros(H * self.n_blocks * self.block_d, dtype=torch.float32, device=dev)
        self.sm_scale = dh ** -0.5
        if _PREFETCH is not None:
            _PREFETCH.join()  # rather than computing the same hashes a second time

    def refresh(self) -> None:
        """Nothing to refresh: the kernels read the model's own weights."""

    def __call__(self, token_in: torch.Tensor, position: torch.Tensor, window: int | None = None,
                 logits_out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (1, V) in the model's dtype for ``token_in`` (1,) at ``position`` (1,); also into
        ``logits_out`` (fp32, V entries) if given. Writes the token's K/V into the caches."""
        c, m = self.cfg, self.model
        D, H, dh, eps = c.d_model, c.num_heads, c.d_head, c.rmsnorm_eps
        x = self.x
        _embed_kernel[(1,)](m.token_embeddings.weight, token_in, x, D=D, BLOCK=_pow2(D))
        qkv_p, qkv_k = TILES["qkv"]
        while D % (2 * qkv_p):  # a program's rows must be whole pairs of one of q, k, v
            qkv_p //= 2
        ffn_n, ffn_k = TILES["swiglu"]
        res_n, res_k = TILES["residual"]
        for layer, cache in zip(m.layers, self.caches):
            ln1 = layer.ln1.weight if self.norms else x
            ln2 = layer.ln2.weight if self.norms else x
            _norm_qkv_rope_kernel[(3 * D // (2 * qkv_p),)](
                x, ln1, layer.attn.qkv_proj.weight, self.cos, self.sin, position, self.q, cache.k, cache.v, eps,
                c.context_length, D=D, DH=dh, HAS_NORM=self.norms, ROPE=self.rope, BLOCK_P=qkv_p,
                BLOCK_K=min(qkv_k, _pow2(D)))
            _attention_block_kernel[(H, self.n_blocks)](
                self.q, cache.k, cache.v, position, self.block_max, self.block_sum, self.block_acc, self.sm_scale,
                c.context_length, self.n_blocks, DH=dh, BLOCK_D=self.block_d, BLOCK_L=ATTENTION_BLOCK)
            _attention_combine_kernel[(H,)](
                self.block_max, self.block_sum, self.block_acc, position, self.att, self.n_blocks, DH=dh,
                BLOCK_D=self.block_d, BLOCK_L=ATTENTION_BLOCK, BLOCK_B=_pow2(self.n_blocks))
            _gemv_residual_kernel[(-(-D // res_n),)](
                self.att, layer.attn.output_proj.weight, x, D, K=D, BLOCK_N=res_n, BLOCK_K=min(res_k, _pow2(D)))
            w3 = layer.ffn.w3.weight if self.gated else layer.ffn.w1.weight
            F = c.ffn_dim
            _norm_ffn_in_kernel[(-(-F // ffn_n),)](
                x, ln2, layer.ffn.w1.weight, w3, self.ffn, eps, F, D=D, HAS_NORM=self.norms, GATED=self.gated,
                BLOCK_N=ffn_n, BLOCK_K=min(ffn_k, _pow2(D)))
            _gemv_residual_kernel[(-(-D // res_n),)](
                self.ffn, layer.ffn.w2.weight, x, D, K=F, BLOCK_N=res_n, BLOCK_K=min(res_k, _pow2(F)))
        head_n, head_k = TILES["head"]
        out = logits_out if logits_out is not None else torch.empty(c.vocab_size, device=x.device)
        final = m.ln_final.weight if self.norms else x
        _norm_head_kernel[(-(-c.vocab_size // head_n),)](
            x, final, m.lm_head.weight, out, self.raw, eps, c.vocab_size, D=D, HAS_NORM=self.norms,
            BLOCK_N=head_n, BLOCK_K=min(head_k, _pow2(D)))
        return self.raw.view(1, -1)


# Vocabulary entries per program of the sampler's first kernel.
SAMPLE_BLOCK = 1024


class TritonSampler:
    """Sampling and a step's bookkeeping in two kernels (top-p = 1; the top-k values come from ``torch.topk``).

    Stands in for :func:`lm.decode.sampling.sample_rows` at batch 1 without a
    nucleus, the noise made for it, the probability ``softmax(logits)[token]`` and the four writes that
    end a step: ~13 small kernels in torch, two of them single-block reductions
    over the vocabulary (slow ones: docs/performance.md, Decoding). The noise comes from Philox
    inside the kernel, keyed by ``seed`` (set per reply) and ``draws`` (the
    steps since), so the same seed gives the same tokens (Philox, not the
    torch sampler's hash: the two paths draw different noise for one seed).
    """

    def __init__(self, vocab_size: int, device):
        self.vocab_size = V = vocab_size
        self.blocks = -(-V // SAMPLE_BLOCK)
        self.score = torch.zeros(self.blocks, dtype=torch.float32, device=device)
        self.index = torch.zeros(self.blocks, dtype=torch.long, device=device)
        self.max = torch.zeros(self.blocks, dtype=torch.float32, device=device)
        self.sum = torch.zeros(self.blocks, dtype=torch.float32, device=device)
        self.seed = torch.zeros(1, dtype=torch.long, device=device)
        self.draws = torch.zeros(1, dtype=torch.long, device=device)

    def start(self, seed: int) -> None:
        """A new reply: noise from ``seed`` (below 2^62), draw counter at 0."""
        self.seed.fill_(seed % (1 << 62))
        self.draws.zero_()

    def __call__(self, logits, raw, neg_inv_temperature, top_k, position, out_tokens, out_probs, token_in,
                 greedy: bool) -> None:
        """Sample from fp32 ``logits`` (V,); ``raw`` is them in the model's dtype (for ``topk``)."""
        top = raw.topk(top_k, sorted=False).values if top_k and not greedy else logits
        _sample_blocks_kernel[(self.blocks,)](
            logits, top, self.seed, self.draws, neg_inv_temperature, self.score, self.index, self.max, self.sum,
            self.vocab_size, top_k, GREEDY=greedy, TOP_K=bool(top_k) and not greedy, BLOCK=SAMPLE_BLOCK,
            BLOCK_TOPK=_pow2(max(top_k, 1)))
        _sample_finish_kernel[(1,)](
            logits, self.score, self.index, self.max, self.sum, position, self.draws, out_tokens, out_probs,
            token_in, self.blocks, BLOCK_B=_pow2(self.blocks))
