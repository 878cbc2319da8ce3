"""What 'auto' means for the training engine's switches, torch-free so the calculator follows the trainer.

:mod:`lm.train.engine` applies these rules to a run; :mod:`lm.calc` applies the
same ones to the config it sizes, without importing torch.
"""

from __future__ import annotations

CUDA_GRAPH_MAX_PARAMS = 50_000_000
"""Below this many parameters a CUDA step is launch-bound: where CUDA graphs help ('auto' turns them on)."""


def cuda_graphs_auto(num_params: int, checkpointing: str) -> bool:
    """training.cuda_graphs = 'auto' for a compiled CUDA step in one process.

    On for models under :data:`CUDA_GRAPH_MAX_PARAMS` without activation checkpointing: there the
    step is launch-bound (measured on an H200, torch 2.11: a 10.8M model's step took 6.1 ms instead
    of 12.9). Larger models gain nothing and would hold the graphs' memory pools.
    """
    return num_params < CUDA_GRAPH_MAX_PARAMS and checkpointing in ("auto", "none")


def uses_cuda_graphs(setting: str, *, compiled: bool, device_type: str, distributed: bool, num_params: int,
                     checkpointing: str) -> bool:
    """Whether a step with training.cuda_graphs = ``setting`` (auto | on | off) is captured in CUDA graphs.

    Only a compiled CUDA step in one process (DDP/FSDP2 communicate between the captured regions);
    'auto' follows :func:`cuda_graphs_auto`, 'on' asks for them at any size.
    """
    if not compiled or device_type != "cuda" or distributed or setting == "off":
        return False
    return cuda_graphs_auto(num_params, checkpointing) if setting == "auto" else setting == "on"


WEIGHT_RECOMPUTE_MIN_PARAMS = 1_500_000_000
"""From this many parameters up, 'auto' recomputes the blocks' bf16 weight copies in backward."""


def checkpointing_auto(*, num_params: int, compiled: bool, cuda_graphs: bool, device_type: str, bf16: bool,
                       distributed: bool) -> str:
    """training.activation_checkpointing = 'auto': 'weights' or 'none'.

    'weights' where a compiled block would otherwise keep a bf16 copy of each weight for its
    backward and those copies are a large share of the memory: a compiled bf16 CUDA step in one
    process, not captured in CUDA graphs, of a model with at least
    :data:`WEIGHT_RECOMPUTE_MIN_PARAMS` parameters (xl and 2.7B; 2 bytes per parameter, 4 to 7 GB
    there). On an H100 (torch 2.11) it took 2.7B at batch 4 from 62.7 to 56.5 GiB at the same step
    time (252.5 vs 253.5 ms, separate processes). Smaller models save little for about 1% of the
    step (same process, H100: small b16 43.70 vs 43.28 ms for 0.2 GiB, medium b16 117.99 vs
    117.00 ms for 0.7 GiB), so they keep 'none'; so do DDP/FSDP2 runs (not measured there).
    """
    weights = (num_params >= WEIGHT_RECOMPUTE_MIN_PARAMS and compiled and not cuda_graphs
               and device_type == "cuda" and bf16 and not distributed)
    return "weights" if weights else "none"
