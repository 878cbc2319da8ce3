"""Named ranges in profiler traces and Nsight timelines, without touching lm/model.py.

:func:`instrument` registers forward pre/post hooks on the model's modules;
each pre-hook opens a ``torch.profiler.record_function`` range (and an NVTX
range on CUDA) and the matching post-hook closes it, so a trace shows
``embedding``, ``block3.attention``, ``block3.ffn``, ``lm_head`` ... Backward
kernels are linked to these forward ranges by the profiler's sequence numbers.

Inside attention, module hooks cannot see the steps of one function, so for
``attention = "naive"`` the harness also swaps ``lm.functional.scaled_dot_product_attention``
(looked up at call time by the model) for :func:`ranged_attention`, the same
computation with ``scores`` / ``softmax`` / ``weighted_sum`` ranges. The fused
sdpa kernel is one opaque call: only the block's attention range is shown.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import einx
import torch
import torch.nn.functional as F

import lm.functional as LF


class _Range:
    """A profiler range (plus NVTX on CUDA) opened and closed by separate calls."""

    def __init__(self, name: str, nvtx: bool):
        self.name = name
        self.nvtx = nvtx
        self.handle = None

    def open(self):
        self.handle = torch.autograd.profiler.record_function(self.name)
        self.handle.__enter__()
        if self.nvtx:
            torch.cuda.nvtx.range_push(self.name)

    def close(self):
        if self.nvtx:
            torch.cuda.nvtx.range_pop()
        if self.handle is not None:
            self.handle.__exit__(None, None, None)
            self.handle = None


@contextlib.contextmanager
def _range(name: str, nvtx: bool):
    r = _Range(name, nvtx)
    r.open()
    try:
        yield
    finally:
        r.close()


def ranged_attention(nvtx: bool):
    """lm.functional.scaled_dot_product_attention with scores/softmax/weighted_sum ranges (same math)."""

    def attention(q, k, v, mask=None, dropout_p: float = 0.0):
        with _range("scores", nvtx):
            scores = einx.dot("... q d, ... k d -> ... q k", q, k) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
        with _range("softmax", nvtx):
            probs = LF.softmax(scores, dim=-1)
            if dropout_p:
                probs = F.dropout(probs, dropout_p, training=True)
        with _range("weighted_sum", nvtx):
            return einx.dot("... q k, ... k d -> ... q d", probs, v)

    return attention


def module_ranges(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{range name: module} for the parts of a TransformerLM worth seeing in a trace."""
    named = {"embedding": model.token_embeddings}
    for i, layer in enumerate(model.layers):
        named[f"block{i}"] = layer
        named[f"block{i}.attention"] = layer.attn
        named[f"block{i}.ffn"] = layer.ffn
    if hasattr(model, "ln_final"):
        named["ln_final"] = model.ln_final
    named["lm_head"] = model.lm_head  # for logits; in training it runs inside the fused loss, ranged there
    return named


@contextlib.contextmanager
def instrument(model: torch.nn.Module, *, nvtx: bool | None = None, attention_steps: bool = True):
    """Within the block, forward passes of ``model`` emit named ranges; hooks are removed on exit."""
    nvtx = torch.cuda.is_available() if nvtx is None else nvtx
    handles = []
    for name, module in module_ranges(model).items():
        stack: list[_Range] = []

        def pre(mod, args, _name=name, _stack=stack):
            r = _Range(_name, nvtx)
            r.open()
            _stack.append(r)

        def post(mod, args, out, _stack=stack):
            if _stack:
                _stack.pop().close()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    original, original_head = LF.scaled_dot_product_attention, LF.linear_cross_entropy
    if attention_steps:
        LF.scaled_dot_product_attention = ranged_attention(nvtx)

    def head(*args, **kwargs):
        with _range("lm_head", nvtx):
            return original_head(*args, **kwargs)
    LF.linear_cross_entropy = head
    try:
        yield
    finally:
        LF.scaled_dot_product_attention, LF.linear_cross_entropy = original, original_head
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null: kineto prints ``USDT: ... profiler_start/stop`` from C++ there."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet_profile(**kwargs):
    """``torch.profiler.profile(**kwargs)`` without the native log lines its start and stop print.

    Only the start and the stop are silenced; whatever runs inside keeps its stderr.
    """
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _native_stderr_silenced():
        prof.start()
    try:
        yield prof
    finally:
        with _native_stderr_silenced():
            prof.stop()


def profile_workload(work, out_dir: str | os.PathLike, *, steps: int = 2, warmup: int = 2,
                     tag: str = "bench") -> dict[str, str]:
    """Run ``steps`` training steps under the profiler with ranges; write the trace and memory snapshot.

    Returns {"trace": path, "memory_snapshot": path (CUDA only)}. The trace is
    Chrome/Perfetto JSON (open in ui.perfetto.dev); the snapshot is a pickle
    for https://pytorch.org/memory_viz.
    """
    from torch.profiler import ProfilerActivity

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for _ in range(warmup):
        work.step()
    cuda = work.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    paths: dict[str, str] = {}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    with instrument(work.model):
        with quiet_profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
            for _ in range(steps):
                with torch.autograd.profiler.record_function("train_step"):
                    work.step()
            if cuda:
                torch.cuda.synchronize()
    trace = out / f"{tag}.trace.json"
    prof.export_chrome_trace(str(trace))
    paths["trace"] = str(trace)
    if cuda:
        snap = out / f"{tag}.memory.pickle"
        torch.cuda.memory._dump_snapshot(str(snap))
        torch.cuda.memory._record_memory_history(enabled=None)
        paths["memory_snapshot"] = str(snap)
    return paths
