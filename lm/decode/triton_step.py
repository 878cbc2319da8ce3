"""Triton kernels for the decode step on CUDA, for any batch of slots: a layer in six kernels.

Profiled on a GPU (timings in docs/performance.md, Decoding), the torch version of the
step (:class:`lm.decode.torch_step.TorchStep`) is bound by kernel count and by cuBLAS's
matrix-vector kernels, which cost a fixed few microseconds each whatever their size,
plus cuDNN attention over a padded window. Here each layer is:

1. RMSNorm + QKV projection + RoPE + writing K and V into the cache at each
   row's position (read on the device, so the kernel replays in a CUDA graph);
2. attention, split over blocks of cache slots (flash-decoding): each block
   of slots up to the row's position gives its max, sum and weighted values;
3. the combination of those blocks per (row, head);
4. output projection + residual add, in place;
5. RMSNorm + W1 and W3 + SiLU(W1 h) * W3 h;
6. W2 + residual add, in place.

At batch B each program of a matrix-vector kernel reads its tile of the weight
once and multiplies it with up to MAX_BLOCK_B rows (up to that batch a step reads
the weights once), and attention reads a row's own cache only up to that row's
position. A row's products reduce over the same column tile in the same order at
every batch (:func:`tile`), so its result does not depend on the other rows, on
which slot it sits in, or on how many slots the engine has: ``lab sample`` (one
slot) and ``lab serve`` (eight) give one seed the same text
(``bench/decode.py --check`` checks it on a GPU).
Every product accumulates in fp32 and rounds its output to the model's dtype
where ``TransformerLM.forward`` does, so the two agree to the dtype's rounding
(``bench/decode.py --check`` compares them in fp32 on a GPU; the tests run the
kernels in Triton's interpreter on the CPU). Models the kernels do not cover
(post-norm) use the torch step.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from lm.decode import triton_sampler
from lm.decode.launches import pow2, run_launches

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only torch, macOS, Windows): the torch step is used
    triton = tl = None

# Cache slots per attention block: each (row, head, block) is one program; blocks after the position exit at once.
ATTENTION_BLOCK = 64
# Weight rows (QKV: row pairs) x columns per program of each matrix-vector kernel at batch 1 (picked on an
# H100; see docs/performance.md (Decoding)). At batch B see :func:`tile`.
TILES = {"qkv": (8, 256), "swiglu": (4, 256), "residual": (2, 1024), "head": (16, 256)}
# Input rows per program of a matrix-vector kernel: a batch of more slots runs in chunks of this many
# (a second grid axis). With a fixed column tile the partial sums grow with the rows; at 8 the largest
# kernel (W2 at 1024 columns) takes ~126 registers a thread on sm_90 and spills nothing, at 16 ~220.
MAX_BLOCK_B = 8


def tile(kind: str, block_b: int, columns: int) -> tuple[int, int]:
    """Weight rows and columns per program of ``kind``'s kernel for ``block_b`` rows of input over ``columns``.

    The column tile is batch 1's whatever ``block_b``: it fixes the order in which
    a row's products are summed (Triton lays the fp32 partial sums out along the
    columns the same way at every batch), so a row's output is bitwise the same
    alone or batched. Larger batches take fewer weight rows instead, down to one.
    """
    rows, cols = TILES[kind]
    return max(1, rows // block_b), min(cols, pow2(columns))


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
    def _rms_scales(x_ptr, b0, B, D: tl.constexpr, eps, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
        """1 / rms(x_b) for rows b0 + [0, BLOCK_B) of x (B, D), as (BLOCK_B,) (rows past B: anything finite)."""
        b = b0 + tl.arange(0, BLOCK_B)
        total = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + b[:, None] * D + k[None, :], mask=(b[:, None] < B) & (k[None, :] < D), other=0.0)
            x = x.to(tl.float32)
            total += x * x
        return tl.rsqrt(tl.sum(total, 1) / D + eps)

    @triton.jit
    def _input_rows(x_ptr, g_ptr, scale, k, b0, B, D: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK_B: tl.constexpr):
        """Columns ``k`` of rows b0 + [0, BLOCK_B) of x (B, D), RMS-normed with gain g when HAS_NORM (fp32, then
        rounded to the model's dtype, as the model's RMSNorm does): (BLOCK_B, len(k)) in fp32."""
        dtype = x_ptr.dtype.element_ty
        b = b0 + tl.arange(0, BLOCK_B)
        kmask = k < D
        h = tl.load(x_ptr + b[:, None] * D + k[None, :], mask=(b[:, None] < B) & kmask[None, :], other=0.0)
        h = h.to(tl.float32)
        if HAS_NORM:
            gain = tl.load(g_ptr + k, mask=kmask, other=0.0).to(tl.float32)
            h = (h * scale[:, None] * gain[None, :]).to(dtype).to(tl.float32)
        return h

    @triton.jit
    def _norm_qkv_rope_kernel(x_ptr, g_ptr, w_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, eps, C, B,
                              D: tl.constexpr, DH: tl.constexpr, HAS_NORM: tl.constexpr, ROPE: tl.constexpr,
                              BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
        """Rows [2 P pid, 2 P (pid + 1)) of W_qkv h_b for rows b of chunk pid_1 (BLOCK_B rows), as (even, odd) row pairs so RoPE stays in
        the program; q into q (B, D), k and v into the caches (B, H, C, DH) at each row's position."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * 2 * BLOCK_P + 2 * tl.arange(0, BLOCK_P)  # even rows of W
        b0 = tl.program_id(1) * BLOCK_B
        b = b0 + tl.arange(0, BLOCK_B)
        bmask = b < B
        scale = tl.zeros((BLOCK_B,), tl.float32)
        if HAS_NORM:
            scale = _rms_scales(x_ptr, b0, B, D, eps, BLOCK_B, BLOCK_K)
        acc_e = tl.zeros((BLOCK_B, BLOCK_P, BLOCK_K), dtype=tl.float32)
        acc_o = tl.zeros((BLOCK_B, BLOCK_P, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = _input_rows(x_ptr, g_ptr, scale, k, b0, B, D, HAS_NORM, BLOCK_B)[:, None, :]
            w_e = tl.load(w_ptr + rows[:, None] * D + k[None, :], mask=kmask[None, :], other=0.0)
            w_o = tl.load(w_ptr + (rows[:, None] + 1) * D + k[None, :], mask=kmask[None, :], other=0.0)
            acc_e += w_e.to(tl.float32)[None, :, :] * h
            acc_o += w_o.to(tl.float32)[None, :, :] * h
        even = tl.sum(acc_e, 2).to(dtype).to(tl.float32)  # (BLOCK_B, BLOCK_P)
        odd = tl.sum(acc_o, 2).to(dtype).to(tl.float32)
        part = tl.program_id(0) * 2 * BLOCK_P // D  # 0 q, 1 k, 2 v: a program's rows are all one of them
        col = (rows % D)[None, :]  # head * DH + d
        pos = tl.load(pos_ptr + b, mask=bmask, other=0)[:, None]
        if ROPE:
            if part < 2:
                pair = (col % DH) // 2
                c = tl.load(cos_ptr + pos * (DH // 2) + pair).to(dtype).to(tl.float32)
                s = tl.load(sin_ptr + pos * (DH // 2) + pair).to(dtype).to(tl.float32)
                even, odd = even * c - odd * s, even * s + odd * c
        if part == 0:
            dst = q_ptr + b[:, None] * D + col
        else:
            slot = b[:, None] * (D * C) + (col // DH) * C * DH + pos * DH + col % DH  # cache (B, H, C, DH)
            if part == 1:
                dst = k_ptr + slot
            else:
                dst = v_ptr + slot
        tl.store(dst, even.to(dtype), mask=bmask[:, None])
        tl.store(dst + 1, odd.to(dtype), mask=bmask[:, None])

    @triton.jit
    def _attention_block_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, sm_scale, C, H, NBLOCKS,
                                DH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
        """Head (b, h) = program_id(0) = b H + h, cache slots [BLOCK_L j, BLOCK_L (j + 1)) with j = program_id(1),
        up to row b's position: the block's max score, sum of exp(score - max) and weighted values."""
        row, block = tl.program_id(0), tl.program_id(1)
        pos = tl.load(pos_ptr + row // H)
        start = block * BLOCK_L
        if start <= pos:
            slots = start + tl.arange(0, BLOCK_L)
            d = tl.arange(0, BLOCK_D)
            live = slots <= pos
            q = tl.load(q_ptr + row * DH + d, mask=d < DH, other=0.0).to(tl.float32)  # q (B, H, DH)
            offs = row * C * DH + slots[:, None] * DH + d[None, :]  # cache (B, H, C, DH)
            mask = live[:, None] & (d[None, :] < DH)
            k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            scores = tl.where(live, tl.sum(k * q[None, :], 1) * sm_scale, float("-inf"))
            m = tl.max(scores, 0)
            e = tl.exp(scores - m)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            out = row * NBLOCKS + block
            tl.store(m_ptr + out, m)
            tl.store(l_ptr + out, tl.sum(e, 0))
            tl.store(acc_ptr + out * BLOCK_D + d, tl.sum(e[:, None] * v, 0))

    @triton.jit
    def _attention_combine_kernel(m_ptr, l_ptr, acc_ptr, pos_ptr, out_ptr, H, NBLOCKS,
                                  DH: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
                                  BLOCK_J: tl.constexpr):
        """softmax(q K^T / sqrt(d)) V of head (b, h) = program_id(0) from its blocks' (max, sum, weighted values)."""
        dtype = out_ptr.dtype.element_ty
        row = tl.program_id(0)
        used = tl.load(pos_ptr + row // H) // BLOCK_L + 1
        j = tl.arange(0, BLOCK_J)
        jmask = j < used
        m = tl.load(m_ptr + row * NBLOCKS + j, mask=jmask, other=float("-inf"))
        weight = tl.where(jmask, tl.exp(m - tl.max(m, 0)), 0.0)
        total = tl.sum(weight * tl.load(l_ptr + row * NBLOCKS + j, mask=jmask, other=0.0), 0)
        d = tl.arange(0, BLOCK_D)
        acc = tl.load(acc_ptr + (row * NBLOCKS + j)[:, None] * BLOCK_D + d[None, :], mask=jmask[:, None], other=0.0)
        out = tl.sum(weight[:, None] * acc, 0) / total
        tl.store(out_ptr + row * DH + d, out.to(dtype), mask=d < DH)

    @triton.jit
    def _gemv_residual_kernel(a_ptr, w_ptr, x_ptr, N, B, K: tl.constexpr, BLOCK_B: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """x_b += W a_b for rows [BLOCK_N pid, BLOCK_N (pid + 1)) of W and rows b of chunk pid_1 of a (B, K) and x (B, N),
        in place (W a_b rounded first, as the model does)."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        b0 = tl.program_id(1) * BLOCK_B
        b = b0 + tl.arange(0, BLOCK_B)
        bmask = b < B
        acc = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < K
            a = tl.load(a_ptr + b[:, None] * K + k[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0)
            w = tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            acc += w.to(tl.float32)[None, :, :] * a.to(tl.float32)[:, None, :]
        y = tl.sum(acc, 2).to(dtype).to(tl.float32)  # (BLOCK_B, BLOCK_N)
        at = b[:, None] * N + rows[None, :]
        mask = bmask[:, None] & rmask[None, :]
        x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        tl.store(x_ptr + at, (x + y).to(dtype), mask=mask)

    @triton.jit
    def _norm_ffn_in_kernel(x_ptr, g_ptr, w1_ptr, w3_ptr, out_ptr, eps, N, B, D: tl.constexpr,
                            HAS_NORM: tl.constexpr, GATED: tl.constexpr, BLOCK_B: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """SiLU(W1 h_b) * W3 h_b (GATED) or SiLU(W1 h_b), h_b = RMSNorm(x_b), for rows [BLOCK_N pid,
        BLOCK_N (pid + 1)) of W1 and rows b of chunk pid_1, into out (B, N)."""
        dtype = w1_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        b0 = tl.program_id(1) * BLOCK_B
        b = b0 + tl.arange(0, BLOCK_B)
        scale = tl.zeros((BLOCK_B,), tl.float32)
        if HAS_NORM:
            scale = _rms_scales(x_ptr, b0, B, D, eps, BLOCK_B, BLOCK_K)
        acc1 = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = _input_rows(x_ptr, g_ptr, scale, k, b0, B, D, HAS_NORM, BLOCK_B)[:, None, :]
            wmask = rmask[:, None] & kmask[None, :]
            w1 = tl.load(w1_ptr + rows[:, None] * D + k[None, :], mask=wmask, other=0.0)
            acc1 += w1.to(tl.float32)[None, :, :] * h
            if GATED:
                w3 = tl.load(w3_ptr + rows[:, None] * D + k[None, :], mask=wmask, other=0.0)
                acc3 += w3.to(tl.float32)[None, :, :] * h
        a = tl.sum(acc1, 2).to(dtype).to(tl.float32)
        out = (a * tl.sigmoid(a)).to(dtype).to(tl.float32)
        if GATED:
            out = out * tl.sum(acc3, 2).to(dtype).to(tl.float32)
        tl.store(out_ptr + b[:, None] * N + rows[None, :], out.to(dtype), mask=(b[:, None] < B) & rmask[None, :])

    @triton.jit
    def _norm_head_kernel(x_ptr, g_ptr, w_ptr, out_ptr, raw_ptr, eps, N, B, D: tl.constexpr, HAS_NORM: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Logits W RMSNorm(x_b) of rows b of chunk pid_1: in the model's dtype into raw (B, N), and as fp32 into out."""
        dtype = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        b0 = tl.program_id(1) * BLOCK_B
        b = b0 + tl.arange(0, BLOCK_B)
        scale = tl.zeros((BLOCK_B,), tl.float32)
        if HAS_NORM:
            scale = _rms_scales(x_ptr, b0, B, D, eps, BLOCK_B, BLOCK_K)
        acc = tl.zeros((BLOCK_B, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < D
            h = _input_rows(x_ptr, g_ptr, scale, k, b0, B, D, HAS_NORM, BLOCK_B)[:, None, :]
            w = tl.load(w_ptr + rows[:, None] * D + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            acc += w.to(tl.float32)[None, :, :] * h
        y = tl.sum(acc, 2).to(dtype)
        at = b[:, None] * N + rows[None, :]
        mask = (b[:, None] < B) & rmask[None, :]
        tl.store(raw_ptr + at, y, mask=mask)
        tl.store(out_ptr + at, y.to(tl.float32), mask=mask)


    @triton.jit
    def _embed_kernel(emb_ptr, token_ptr, x_ptr, D: tl.constexpr, BLOCK: tl.constexpr):
        """x_b = the embedding row of token b = program_id(0)."""
        b = tl.program_id(0)
        k = tl.arange(0, BLOCK)
        row = tl.load(token_ptr + b)
        tl.store(x_ptr + b * D + k, tl.load(emb_ptr + row * D + k, mask=k < D), mask=k < D)


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
        for kernel in (_rms_scales, _input_rows, _norm_qkv_rope_kernel, _attention_block_kernel, _attention_combine_kernel,
                       _gemv_residual_kernel, _norm_ffn_in_kernel, _norm_head_kernel, _embed_kernel,
                       *triton_sampler.KERNELS):
            kernel.cache_key  # noqa: B018 (hashes the source once, under Triton's own lock)
    except Exception:  # only a head start: the first launch computes whatever is missing
        pass


_PREFETCH = None
if triton is not None and os.environ.get("LAB_TRITON_PREFETCH", "1") != "0" and torch.cuda.is_available():
    _PREFETCH = threading.Thread(target=_prefetch_triton_runtime, name="lm-triton-prefetch", daemon=True)
    _PREFETCH.start()


def precompile(launches: list[tuple], threads: int | None = None) -> int:
    """Compile the kernels of ``launches`` ((kernel, grid, args, kwargs), as :meth:`TritonStep.launches` gives)
    before their first launch, several at once; returns the number of distinct specializations.

    Triton compiles a kernel at its first launch with new argument types or
    constexprs, one after another: a step and its sampler have about fifteen
    distinct ones (the layers share theirs), ~0.1-0.5 s each, and on CUDA each
    also loads its module and builds its launcher, so a first reply on a machine
    with an empty Triton cache waited seconds (docs/performance.md, Serving).
    ptxas and the launcher's C compiler run as subprocesses and some MLIR/LLVM
    work releases the GIL, so on threads they overlap. Errors are left to the real
    launch, which reports them where they happen. Kernels already in Triton's
    caches only load.
    """
    unique: dict[tuple, tuple] = {}
    for kernel, grid, args, kwargs in launches:
        types = tuple(str(a.dtype) if isinstance(a, torch.Tensor) else a for a in args)
        unique.setdefault((kernel, types, tuple(sorted(kwargs.items()))), (kernel, grid, args, kwargs))
    by_kernel: dict[object, list[tuple]] = {}
    for kernel, grid, args, kwargs in unique.values():
        by_kernel.setdefault(kernel, []).append((grid, args, kwargs))
    device = next((a.device for *_, args, _ in launches for a in args if isinstance(a, torch.Tensor)), None)

    def compile_kernel(kernel) -> None:
        # A thread starts on CUDA device 0; Triton keys its kernels by the current device.
        with torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext():
            for grid, args, kwargs in by_kernel[kernel]:
                compiled = kernel.warmup(*args, grid=grid, **kwargs)
                # What the first launch does next: load the module and make the launcher, which Triton
                # 3.6 (torch 2.11's) builds per signature with a C compiler, ~0.2 s each, one after
                # another during the first reply. gcc runs outside the GIL, so here they overlap.
                init_handles = getattr(compiled, "_init_handles", None)
                if init_handles is not None and device is not None and device.type == "cuda":
                    init_handles()

    kernels = list(by_kernel)
    try:
        if kernels:  # the first compile of a process initialises LLVM's targets: not on several threads at once
            compile_kernel(kernels[0])
        with ThreadPoolExecutor(threads or max(1, min(len(kernels) - 1, os.cpu_count() or 1))) as pool:
            list(pool.map(compile_kernel, kernels[1:]))
    except Exception:  # only a head start: the launch compiles (and reports) whatever is missing
        pass
    return len(unique)


class TritonStep:
    """The decode step of ``model`` for B slots in Triton kernels: same call as :class:`lm.decode.torch_step.TorchStep`.

    ``caches``: the model's KV caches for B rows (``joint_kv_caches(model, B)`` or
    ``model.new_kv_caches(B)``). Reads the model's weights and the caches in
    place (nothing is copied, so weights changed by training or
    ``load_state_dict`` are seen at once). Attention reads each row's cache only
    up to its position, so it needs no window.
    """

    uses_windows = False
    collect: list | None = None
    """When a list, calls append their launches to it instead of running them (see :func:`precompile`)."""

    def __init__(self, model: torch.nn.Module, caches):
        cfg = self.cfg = model.cfg
        self.model = model
        self.caches = caches
        self.batch = B = caches[0].k.shape[0]
        for cache in caches:
            for t in (cache.k, cache.v):
                if not t.is_contiguous():
                    raise ValueError("the Triton step needs contiguous (B, heads, context, d_head) caches")
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
        self.block_b = min(pow2(B), MAX_BLOCK_B)
        self.chunks = -(-B // self.block_b)  # the matrix-vector kernels' second grid axis
        self.block_d = pow2(dh)
        self.n_blocks = -(-cfg.context_length // ATTENTION_BLOCK)
        self.x = torch.zeros(B, D, dtype=dtype, device=dev)  # the residual stream
        self.q = torch.zeros(B, D, dtype=dtype, device=dev)
        self.att = torch.zeros(B, D, dtype=dtype, device=dev)
        self.ffn = torch.zeros(B, cfg.ffn_dim, dtype=dtype, device=dev)
        self.raw = torch.zeros(B, cfg.vocab_size, dtype=dtype, device=dev)
        self.block_max = torch.zeros(B * H * self.n_blocks, dtype=torch.float32, device=dev)
        self.block_sum = torch.zeros(B * H * self.n_blocks, dtype=torch.float32, device=dev)
        self.block_acc = torch.zeros(B * H * self.n_blocks * self.block_d, dtype=torch.float32, device=dev)
        self.sm_scale = dh ** -0.5
        qkv_p, qkv_k = tile("qkv", self.block_b, D)
        while D % (2 * qkv_p):  # a program's rows must be whole pairs of one of q, k, v
            qkv_p //= 2
        self.tiles = {"qkv": (qkv_p, qkv_k), "swiglu": tile("swiglu", self.block_b, D),
                      "attn_out": tile("residual", self.block_b, D),
                      "ffn_out": tile("residual", self.block_b, cfg.ffn_dim), "head": tile("head", self.block_b, D)}
        if _PREFETCH is not None:
            _PREFETCH.join()  # rather than computing the same hashes a second time

    def refresh(self) -> None:
        """Nothing to refresh: the kernels read the model's own weights."""

    def __call__(self, token_in: torch.Tensor, position: torch.Tensor, window: int | None = None,
                 logits_out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) in the model's dtype for ``token_in`` (B,) at ``position`` (B,), one per slot; also
        into ``logits_out`` (fp32, B x V entries) if given. Writes each token's K/V into its row of the caches."""
        out = logits_out if logits_out is not None else torch.empty(self.batch, self.cfg.vocab_size, device=self.x.device)
        run_launches(self.launches(token_in, position, out), self.collect)
        return self.raw

    def launches(self, token_in: torch.Tensor, position: torch.Tensor, logits_out: torch.Tensor) -> list[tuple]:
        """The step's kernel launches in order, as (kernel, grid, args, kwargs)."""
        c, m = self.cfg, self.model
        B, BB, NB, D, H, dh, eps, C = self.batch, self.block_b, self.chunks, c.d_model, c.num_heads, c.d_head, c.rmsnorm_eps, c.context_length
        F, V = c.ffn_dim, c.vocab_size
        x, t = self.x, self.tiles
        qkv_p, qkv_k = t["qkv"]
        (ao_n, ao_k), (fi_n, fi_k), (fo_n, fo_k), (hd_n, hd_k) = t["attn_out"], t["swiglu"], t["ffn_out"], t["head"]
        out = [(_embed_kernel, (B,), (m.token_embeddings.weight, token_in, x), dict(D=D, BLOCK=pow2(D)))]
        for layer, cache in zip(m.layers, self.caches):
            ln1 = layer.ln1.weight if self.norms else x
            ln2 = layer.ln2.weight if self.norms else x
            w3 = layer.ffn.w3.weight if self.gated else layer.ffn.w1.weight
            out += [
                (_norm_qkv_rope_kernel, (3 * D // (2 * qkv_p), NB),
                 (x, ln1, layer.attn.qkv_proj.weight, self.cos, self.sin, position, self.q, cache.k, cache.v, eps, C, B),
                 dict(D=D, DH=dh, HAS_NORM=self.norms, ROPE=self.rope, BLOCK_B=BB, BLOCK_P=qkv_p, BLOCK_K=qkv_k)),
                (_attention_block_kernel, (B * H, self.n_blocks),
                 (self.q, cache.k, cache.v, position, self.block_max, self.block_sum, self.block_acc, self.sm_scale,
                  C, H, self.n_blocks),
                 dict(DH=dh, BLOCK_D=self.block_d, BLOCK_L=ATTENTION_BLOCK)),
                (_attention_combine_kernel, (B * H,),
                 (self.block_max, self.block_sum, self.block_acc, position, self.att, H, self.n_blocks),
                 dict(DH=dh, BLOCK_D=self.block_d, BLOCK_L=ATTENTION_BLOCK, BLOCK_J=pow2(self.n_blocks))),
                (_gemv_residual_kernel, (-(-D // ao_n), NB), (self.att, layer.attn.output_proj.weight, x, D, B),
                 dict(K=D, BLOCK_B=BB, BLOCK_N=ao_n, BLOCK_K=ao_k)),
                (_norm_ffn_in_kernel, (-(-F // fi_n), NB), (x, ln2, layer.ffn.w1.weight, w3, self.ffn, eps, F, B),
                 dict(D=D, HAS_NORM=self.norms, GATED=self.gated, BLOCK_B=BB, BLOCK_N=fi_n, BLOCK_K=fi_k)),
                (_gemv_residual_kernel, (-(-D // fo_n), NB), (self.ffn, layer.ffn.w2.weight, x, D, B),
                 dict(K=F, BLOCK_B=BB, BLOCK_N=fo_n, BLOCK_K=fo_k)),
            ]
        final = m.ln_final.weight if self.norms else x
        out.append((_norm_head_kernel, (-(-V // hd_n), NB), (x, final, m.lm_head.weight, logits_out, self.raw, eps, V, B),
                    dict(D=D, HAS_NORM=self.norms, BLOCK_B=BB, BLOCK_N=hd_n, BLOCK_K=hd_k)))
        return out
