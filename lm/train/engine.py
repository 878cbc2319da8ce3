"""How a training step runs fast: compilation, CUDA graphs, activation checkpointing, the compile cache.

The model (:mod:`lm.model`) says what the network computes; this module only
decides how it is run, for the trainer and the benchmarks alike:

- **Regional compilation.** Each transformer block is compiled in place
  (``block.compile()``); the blocks share one code object and their graphs are
  identical, so Inductor compiles the block once and serves the others from its
  FX graph cache: compile time grows little with depth. The model's
  :meth:`~lm.model.TransformerLM.loss` (final norm + the fused chunked LM head
  and cross-entropy) is a region of its own, so the loss runs compiled too.
- **CUDA graphs** (Inductor's ``reduce-overhead`` mode, ``training.cuda_graphs``):
  on by default for CUDA models under 50M parameters, whose steps are bound by
  the host launching kernels (see :func:`plan_for`).
- **Activation checkpointing** (``training.activation_checkpointing``):
  ``full`` keeps only each block's input and recomputes the block in backward;
  ``selective`` keeps the outputs of the matmuls and attention (the expensive
  ops) and recomputes only the cheap elementwise ones (norms, RoPE, SiLU,
  dropout masks are replayed from the saved RNG state); ``weights`` keeps
  every activation and recomputes only the bf16 copies of the weights, which a
  compiled block otherwise keeps for its backward (2 bytes per parameter).
- **A persistent compile cache** under the lab cache (``~/.cache/lab/inductor``
  unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise), so a second run of the
  same shapes skips most of Inductor's and Triton's work.

Compiling changes no state-dict name: ``module.compile()`` keeps the module.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from lm.auto import checkpointing_auto, uses_cuda_graphs

CHECKPOINTING = ("none", "full", "selective", "weights")
"""The concrete modes; training.activation_checkpointing also takes 'auto' (:func:`resolve_checkpointing`)."""


@dataclass(frozen=True)
class CompilePlan:
    """How the model's forward and loss are run."""

    compile: bool
    """Compile each block and the loss region (regional compilation)."""
    cuda_graphs: bool = False
    """Capture the compiled regions in CUDA graphs (Inductor mode 'reduce-overhead')."""

    @property
    def mode(self) -> str | None:
        return "reduce-overhead" if self.cuda_graphs else None

    def describe(self) -> str:
        if not self.compile:
            return "eager"
        return "compiled per block" + (", CUDA graphs" if self.cuda_graphs else "")


def plan_for(compile: bool, device: torch.device, num_params: int, cuda_graphs: str = "auto", *,
             distributed: bool = False, checkpointing: str = "none") -> CompilePlan:
    """The plan for a policy's ``compile`` switch and ``training.cuda_graphs`` (auto | on | off).

    Graphs follow :func:`lm.auto.uses_cuda_graphs` (bench/engine_check.py found the graphed step's
    gradients equal to the eager step's).
    """
    return CompilePlan(compile, uses_cuda_graphs(cuda_graphs, compiled=compile, device_type=device.type,
                                                 distributed=distributed, num_params=num_params,
                                                 checkpointing=checkpointing))


def resolve_checkpointing(setting: str, plan: CompilePlan, device: torch.device, bf16: bool, num_params: int, *,
                          distributed: bool = False) -> str:
    """training.activation_checkpointing with 'auto' made concrete (:func:`lm.auto.checkpointing_auto`)."""
    if setting != "auto":
        return setting
    return checkpointing_auto(num_params=num_params, compiled=plan.compile, cuda_graphs=plan.cuda_graphs,
                              device_type=device.type, bf16=bf16, distributed=distributed)


def describe(plan: CompilePlan, checkpointing: str) -> str:
    """How a step runs, for the start event and benchmarks: the plan, and any checkpointing."""
    return plan.describe() + ("" if checkpointing == "none" else f", checkpointing {checkpointing}")


def use_compile_cache(cache_dir: str | os.PathLike | None = None) -> str:
    """Point Inductor's on-disk caches (FX graphs, AOT autograd, Triton kernels) into the lab cache.

    An explicit ``TORCHINDUCTOR_CACHE_DIR`` wins. Read by Inductor when it first
    compiles, so this must run before the first compiled call. Returns the directory.
    """
    from lm.data.paths import cache_root

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current:
        return current
    path = str(cache_root(cache_dir) / "inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def prepare(model: torch.nn.Module, plan: CompilePlan, checkpointing: str = "none") -> torch.nn.Module:
    """Apply checkpointing, then the compile plan, to ``model`` in place; returns it."""
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"activation checkpointing must be one of {CHECKPOINTING}, got {checkpointing!r}")
    if checkpointing != "none":
        enable_checkpointing(model, policy=None if checkpointing == "full" else checkpointing,
                             compiled=plan.compile)
    if plan.compile:
        # Dynamo re-guards each block (it recompiled per layer on an H200 with torch 2.11) and falls
        # back to eager after recompile_limit (8) entries: deeper models must stay compiled. The
        # re-traced graphs are identical, so Inductor's FX graph cache serves all but the first.
        need = len(model.layers) + 8
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name) and getattr(torch._dynamo.config, name) < need:
                setattr(torch._dynamo.config, name, need)
        mark_graph_functions_cacheable()
        for layer in model.layers:
            layer.compile(mode=plan.mode)
        # An instance attribute shadows the method: forward(targets=...) then runs the compiled loss region.
        model.loss = torch.compile(model.loss, mode=plan.mode)
    return model


def mark_graph_functions_cacheable() -> None:
    """Let AOTAutograd's on-disk cache keep the model's graphs.

    AOTAutograd bypasses its cache for a graph that calls any function it does not
    know, and Dynamo leaves two kinds of such calls in every block: einx's ops
    (einx registers ``einx.dot`` / ``einx.id`` with ``allow_in_graph``) and, on
    CUDA, the ``sdpa_kernel`` context that picks cuDNN attention (Dynamo replays it
    as calls to ``torch.nn.attention._sdpa_kernel`` / ``_backend_from_string``).
    So every run, warm compile cache or not, re-traced and re-partitioned each
    block's forward and backward (about 3 s of a 5 s warm first step at the
    TinyShakespeare shape on an H100). Each of these calls is fixed by its constant
    arguments (an einx expression, a backend name), which are in the cache key;
    the einx and torch versions go into the key too (the values of Inductor's
    ``unsafe_marked_cacheable_functions``).
    """
    import einx
    import torch._inductor.config as inductor_config
    import torch.nn.attention as attention

    marked = getattr(inductor_config, "unsafe_marked_cacheable_functions", None)
    if not isinstance(marked, dict):  # a torch without the setting: nothing to do
        return
    functions = [(einx.dot, f"einx {einx.__version__}"), (einx.id, f"einx {einx.__version__}")]
    functions += [(getattr(attention, name), f"torch {torch.__version__}")
                  for name in ("_sdpa_kernel", "_backend_from_string") if hasattr(attention, name)]
    for fn, version in functions:
        marked[f"{fn.__module__}.{fn.__name__}"] = version


def step_begin(plan: CompilePlan) -> None:
    """Tell the CUDA-graph trees a new iteration starts (the previous step's outputs may be overwritten)."""
    if plan.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()


# ----------------------------------------------------------------------------- checkpointing

def _selective_policy():
    """Keep the matmul and attention outputs, recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default,
            aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_cudnn_attention.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE
    return policy


def _weights_policy():
    """Keep every activation, recompute only the low-precision copies of the weights.

    The matmuls' backward needs them, so without this a compiled block saves a bf16 copy of each of
    its matrices (2 bytes per parameter) until its backward runs; recasting costs 6 bytes of memory
    traffic per parameter in backward. A 2-D cast is a weight's (Linear casts its parameter itself
    under autocast; activations are 3-D or more), and the views on its way to the matmul follow it.
    """
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    views = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
             aten.unsqueeze.default, aten.permute.default, aten.t.default, aten.transpose.int, aten.alias.default}
    fresh = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default, aten.new_empty.default}

    def policy(ctx, op, *args, **kwargs):
        if op is aten._to_copy.default and isinstance(args[0], torch.Tensor) and args[0].dim() == 2:
            return CheckpointPolicy.MUST_RECOMPUTE
        if op in views and isinstance(args[0], torch.Tensor) and _weight_like(args[0]):
            return CheckpointPolicy.PREFER_RECOMPUTE
        if op in fresh or op._schema.is_mutable:
            # Eager SAC refuses a cached output that is mutated later (SDPA's math dropout fills an
            # empty tensor in place): such buffers are replayed, with the RNG state checkpoint restores.
            return CheckpointPolicy.PREFER_RECOMPUTE
        return CheckpointPolicy.PREFER_SAVE
    return policy


def _weight_like(t: torch.Tensor) -> bool:
    """A tensor on a weight's way to a matmul: 2-D, or a 2-D one with unit dimensions added at either
    end (how einx lays a matrix out for ``bmm``). Activations keep their batch and sequence axes."""
    return t.dim() <= 2 or ((t.shape[0] == 1 or t.shape[-1] == 1) and sum(n > 1 for n in t.shape) <= 2)


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_selective_policy())


def _weights_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_weights_policy())


def enable_checkpointing(model: torch.nn.Module, policy: str | None = None, *, compiled: bool = False) -> None:
    """Recompute each block in backward (non-reentrant torch.utils.checkpoint).

    ``policy`` None: keep only each block's input. ``"selective"``: keep the
    matmul and attention outputs, recompute the rest. ``"weights"``: keep every
    activation, recompute only the weights' low-precision copies.
    ``compiled``: the blocks are compiled next, so the checkpoint must trace
    (Dynamo turns it into one graph whose partition follows the policy).
    Only the block's call is wrapped (an instance attribute over ``forward``),
    so parameters, state-dict names and the model file stay as they are.
    """
    # context_fn must be a plain function for Dynamo (a lambda or closure is refused under compile).
    contexts = {None: None, "selective": _selective_context, "weights": _weights_context}
    if policy not in contexts:
        raise ValueError(f"checkpoint policy must be one of {list(contexts)}, got {policy!r}")
    kwargs = {"context_fn": contexts[policy]} if contexts[policy] else {}
    for layer in model.layers:
        inner = layer.forward

        @functools.wraps(inner)
        def checkpointed(x, token_positions=None, kv_cache=None, _inner=inner):
            if kv_cache is not None or not torch.is_grad_enabled():
                return _inner(x, token_positions, kv_cache)
            if compiled:
                # No early-stop context: Dynamo skips set_checkpoint_early_stop, and the graph break
                # left the checkpoint running eagerly around compiled pieces (every policy then saved
                # only the block's input). Traced, a recompute never raises to stop.
                return torch.utils.checkpoint.checkpoint(_inner, x, token_positions, None, use_reentrant=False,
                                                         **kwargs)
            # No early stop: it aborts the recompute by raising inside an op, and einx wraps
            # exceptions raised inside its operations, which would turn that into a failure.
            with torch.utils.checkpoint.set_checkpoint_early_stop(False):
                return torch.utils.checkpoint.checkpoint(_inner, x, token_positions, None, use_reentrant=False,
                                                         **kwargs)

        layer.forward = checkpointed
