"""The process's place in a distributed run, and the process group's life cycle.

torchrun (``torch.distributed.run``, also what ``lab run --gpus N`` starts)
sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every worker; a process without them is a world of one
and nothing here creates a process group.

Backends: NCCL between CUDA devices, gloo on the CPU (tests, CI). Besides the
default group there is a gloo *control* group on the CPU with a long timeout:
it carries the host-side decisions (stop requested, time up, data prepared),
so they never wait on the GPU queue and a long tokenizer training on rank 0
does not trip NCCL's watchdog on the others.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch

from lm.errors import ConfigError

CONTROL_TIMEOUT = datetime.timedelta(hours=6)
"""How long the control group waits at a barrier (rank 0 preparing a large corpus)."""


def launched_by_torchrun() -> bool:
    """Whether this process is a worker that torchrun (or ``lab run --gpus``) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


@dataclass
class DistEnv:
    """Rank, world size and the groups of this process (a world of one when not launched)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    backend: str = ""
    control: object = None
    """The gloo control group (None in a world of one)."""
    nccl_notes: list[str] = field(default_factory=list)
    """What was set in NCCL's environment and why (said in the start event)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend != ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "DistEnv":
        """Read torchrun's variables (no process group yet)."""
        if not launched_by_torchrun():
            return cls()
        return cls(rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]),
                   world_size=int(os.environ["WORLD_SIZE"]),
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))

    def rank_device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA run (one GPU per process), else ``device``.

        Called before the process group exists (a world of one under torchrun that asked for DDP or
        FSDP2 by name too: NCCL needs an indexed device)."""
        if device.type != "cuda" or not (self.distributed or launched_by_torchrun()):
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError([f"this node runs {self.local_world_size} processes but has {count} GPU(s): "
                               f"local rank {self.local_rank} has no GPU; use --nproc-per-node {count} or fewer"])
        return torch.device("cuda", self.local_rank)

    def init(self, device: torch.device) -> None:
        """Create the default process group (NCCL on CUDA, gloo otherwise) and the control group."""
        import torch.distributed as dist

        if not launched_by_torchrun() or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
            self.nccl_notes = configure_nccl_for_topology()
            self.backend = "nccl"
            dist.init_process_group("nccl", device_id=device)
        else:
            self.backend = "gloo"
            dist.init_process_group("gloo")
        self.control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)

    def barrier(self) -> None:
        """Wait for every rank on the control group (a no-op in a world of one)."""
        if self.control is not None:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def close(self) -> None:
        """Destroy the process groups (every rank, at the end of a run)."""
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a peer already gone: nothing left to tear down cleanly
                pass
        self.control = None


def configure_nccl_for_topology() -> list[str]:
    """Turn NCCL's peer-to-peer transport off when some local GPU pair cannot reach each other directly.

    Consumer cards (RTX 4090s) report no P2P access, and NCCL's P2P transport
    can then hang on the first all-reduce; with ``NCCL_P2P_DISABLE=1`` it goes
    through host memory instead. A value the user set is never overridden,
    and ``NCCL_NVLS_ENABLE`` (NVLink SHARP multicast) is left exactly as the
    environment has it.
    """
    notes: list[str] = []
    n = torch.cuda.device_count()
    if n > 1 and "NCCL_P2P_DISABLE" not in os.environ:
        missing = [(i, j) for i in range(n) for j in range(n)
                   if i != j and not torch.cuda.can_device_access_peer(i, j)]
        if missing:
            os.environ["NCCL_P2P_DISABLE"] = "1"
            i, j = missing[0]
            notes.append(f"GPU {i} cannot access GPU {j} peer-to-peer ({len(missing)} pair(s) without P2P): "
                         "set NCCL_P2P_DISABLE=1 so NCCL goes through host memory instead of hanging")
    for name in ("NCCL_P2P_DISABLE", "NCCL_NVLS_ENABLE", "NCCL_IB_DISABLE"):
        if name in os.environ and not any(name in n_ for n_ in notes):
            notes.append(f"{name}={os.environ[name]} (from the environment)")
    return notes


def all_reduce_max(env: DistEnv, values: list[float]) -> list[float]:
    """Element-wise maximum over ranks of a few host numbers, on the control group."""
    if env.control is None:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control)
    return t.tolist()
