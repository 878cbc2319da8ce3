"""``lab run --gpus N``: N local worker processes through torch's own launcher.

This is torchrun: :func:`torch.distributed.run.config_from_args` turns the
same flags torchrun takes into a launch config and
:func:`torch.distributed.launcher.api.elastic_launch` runs the elastic agent
(rendezvous, worker monitoring, and on any failure the stop of every other
worker: SIGTERM, then SIGKILL after its shutdown timeout). Each worker is
``python -m lab run ...`` with torchrun's RANK/WORLD_SIZE/... variables, and
:func:`lm.train.experiment.run_experiment` does the rest. ``torchrun
--nproc-per-node N -m lab run x.toml`` is the same thing started by hand.

Restarts are off (``--max-restarts 0``): a failed run ends, says which rank
failed and why, and continues with ``lab run --resume``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from lm.errors import ConfigError


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpu_count(requested: int, device: str) -> None:
    """``--gpus N`` needs N local GPUs, unless the run is on the CPU (then N gloo processes)."""
    if requested < 1:
        raise ConfigError([f"--gpus must be at least 1, got {requested}"])
    if (device or "auto").startswith("cpu"):
        return
    have = visible_gpus()
    if requested > have:
        where = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})" \
            if "CUDA_VISIBLE_DEVICES" in os.environ else ""
        raise ConfigError([f"--gpus {requested} asks for {requested} GPUs but this machine has {have}{where}; "
                           f"use --gpus {have} or fewer" if have else
                           f"--gpus {requested} asks for {requested} GPUs but this machine has 0 (no CUDA device); "
                           "run without --gpus, or with --device cpu to start CPU processes (gloo)"])


def torchrun_args(nproc: int, child: list[str], *, nnodes: str = "1", node_rank: int = 0,
                  rdzv_endpoint: str = "", rdzv_id: str = "") -> list[str]:
    """torchrun's command line for ``python -m lab <child...>`` on ``nproc`` processes per node."""
    args = ["--nproc-per-node", str(nproc), "--nnodes", str(nnodes), "--max-restarts", "0",
            "--rdzv-backend", "c10d"]
    if rdzv_endpoint:
        args += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id or "lab", "--node-rank", str(node_rank)]
    else:  # torchrun --standalone: a private rendezvous on a free local port
        args += ["--rdzv-endpoint", "localhost:0", "--rdzv-id", rdzv_id or str(uuid.uuid4())]
    return args + ["-m", "lab", *child]


def launch(nproc: int, child: list[str], *, run_dir: str | os.PathLike | None = None, **rdzv) -> int:
    """Run the workers to the end; return the run's exit code (the workers' own, or 1 when a rank died)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    from lm.distributed.faults import describe_failures

    config, cmd, cmd_args = config_from_args(parse_args(torchrun_args(nproc, child, **rdzv)))
    try:
        elastic_launch(config, cmd)(*cmd_args)
        return 0
    except ChildFailedError as e:
        code, message, orderly = describe_failures(e.failures)
        if not orderly and run_dir is not None:
            record_failure(Path(run_dir), message, code)
        if message:
            import sys

            print(f"lab: {message}; resume with: lab run --resume {run_dir}" if run_dir else f"lab: {message}",
                  file=sys.stderr, flush=True)
        return code
    except SignalException:
        return 5  # the agent forwarded the signal; the workers checkpointed and rank 0 wrote the status


def record_failure(run_dir: Path, message: str, code: int) -> None:
    """status.json and an ``error`` event naming the failed rank (rank 0 may have died without a word)."""
    from lm.runs import RunDir
    from lm.train.recorder import RunRecorder

    raw = RunDir(run_dir).raw_status()
    if not raw:
        return
    rec = RunRecorder(run_dir, int(raw.get("total_steps") or 0))
    try:
        rank = message.split()[1] if message.startswith("rank ") else None
        rec.event("error", int(raw.get("step") or 0), 0.0, message,
                  rank=int(rank) if rank and rank.isdigit() else None)
        rec.finish("failed", code, f"{message}; the run resumes from its last checkpoint: "
                                   f"lab run --resume {run_dir}")
    finally:
        rec.close()
