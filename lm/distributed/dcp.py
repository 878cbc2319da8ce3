"""Checkpoints of a distributed run.

DDP: every rank holds the same state, so rank 0 writes one ordinary
consolidated checkpoint (``latest.pt``, format ``lm-checkpoint/1``) exactly
as a single process would; the sampler state in it is the global one.

FSDP2: the model and optimizer state are sharded, so every rank writes its
shards with torch.distributed.checkpoint (DCP) into
``checkpoints/dcp/step_NNNNNN/``: first into a hidden ``.step_NNNNNN.tmp``
folder, renamed into place by rank 0 once every rank has finished. Only then
does rank 0 write the consolidated ``latest.pt``: the full model gathered
from the shards, the sampler, RNG and counters, and ``"sharded"`` naming the
DCP folder that holds the optimizer state. So ``latest.pt`` is always a
complete, readable checkpoint for ``lab sample``, ``lab chat``, export and
the console on one device, and resuming (on any number of ranks, FSDP2, DDP
or one process) reads the optimizer state from the DCP folder it names,
resharded by DCP to the new world. A crash mid-save leaves only a hidden
temp folder, removed at the next start.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from lm.atomic import atomic_rename
from lm.checkpoint_file import dcp_reader
from lm.errors import CheckpointError

DCP_DIR = "dcp"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def save_distributed(trainer, *, step_file: bool, best: bool) -> list[Path]:
    """Write the checkpoint of a distributed run (collective); returns rank 0's written paths."""
    par, env = trainer.par, trainer.dist
    extra = {"rng_ranks": gather_rng(trainer)}
    if par.shards_state:
        rel = save_sharded(trainer)
        extra["sharded"] = rel
    if par.shards_state or env.is_main:
        obj = trainer.checkpoint_dict()  # under FSDP2 gathering the full model is collective
    if not env.is_main:
        return []
    if par.shards_state:
        obj.pop("optimizer", None)
    obj.update(extra)
    paths = trainer.checkpoints.save(obj, trainer.state.step, keep_step_file=step_file, best=best)
    if par.shards_state:
        _rotate_sharded(trainer.checkpoints.path, keep=_referenced_steps(trainer, best))
    return paths


def gather_rng(trainer) -> list[dict] | None:
    """Every rank's RNG states, on rank 0 (collective): each rank resumes its own dropout stream."""
    from lm.train.run_checkpoints import capture_rng

    mine = capture_rng(trainer.policy.device)
    if trainer.dist.control is None:
        return [mine]
    out = [None] * trainer.dist.world_size if trainer.dist.is_main else None
    dist.gather_object(mine, out, dst=0, group=trainer.dist.control)
    return out


def _flat_optimizer(optimizer) -> dict:
    sd = optimizer.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def save_sharded(trainer) -> str:
    """DCP-save model and optimizer shards of every rank; return the folder relative to checkpoints/."""
    import torch.distributed.checkpoint as dcp

    root = trainer.checkpoints.path / DCP_DIR
    name = f"step_{trainer.state.step:06d}"
    tmp, final = root / f".{name}.tmp", root / name
    if trainer.dist.is_main:
        remove_stale_temp_dirs(trainer.checkpoints.path)  # what a save killed midway left behind
        tmp.mkdir(parents=True, exist_ok=True)
    trainer.dist.barrier()
    dcp.save({"model": trainer.model.state_dict(), "optimizer": _flat_optimizer(trainer.optimizer)},
             checkpoint_id=str(tmp))
    trainer.dist.barrier()
    if trainer.dist.is_main:
        if final.exists():
            shutil.rmtree(final)
        atomic_rename(tmp, final)
    trainer.dist.barrier()
    return f"{DCP_DIR}/{name}"


def _referenced_steps(trainer, best: bool) -> set[int]:
    cdir = trainer.checkpoints
    keep = {s for s, _ in cdir.step_files()} | {trainer.state.step}
    marker = cdir.path / DCP_DIR / "best.json"
    if best:
        from lm.runs import atomic_write_json

        atomic_write_json(marker, {"step": trainer.state.step})
    try:
        import json

        keep.add(int(json.loads(marker.read_text())["step"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return keep


def _rotate_sharded(ckpt_dir: Path, keep: set[int]) -> None:
    root = ckpt_dir / DCP_DIR
    for p in root.iterdir() if root.is_dir() else ():
        m = _STEP_DIR.match(p.name)
        if m and int(m.group(1)) not in keep:
            shutil.rmtree(p, ignore_errors=True)


def remove_stale_temp_dirs(ckpt_dir: Path) -> None:
    """Hidden DCP temp folders a killed save left behind."""
    root = Path(ckpt_dir) / DCP_DIR
    for p in root.glob(".*.tmp") if root.is_dir() else ():
        shutil.rmtree(p, ignore_errors=True)


def _init_optimizer_state(model: torch.nn.Module, optimizer) -> None:
    """Give every parameter its optimizer state (one step at lr 0 on zero gradients), as a load template.

    Whatever the optimizer (AdamW, Muon, ...), its state then has the shapes,
    dtypes and sharding that DCP loads into; the values are overwritten.
    """
    if optimizer.state:
        return
    lrs = [g["lr"] for g in optimizer.param_groups]
    saved = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
            p.grad = None
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr


def sharded_dir(path: Path, ckpt: dict) -> Path:
    rel = ckpt.get("sharded")
    d = Path(path).parent / rel
    if not (d / ".metadata").is_file():
        raise CheckpointError(f"{path} keeps its optimizer state in {d}, which is missing or incomplete; "
                              "resume from an earlier checkpoint (checkpoints/step_*.pt) or start over")
    return d


def load_sharded_optimizer(model: torch.nn.Module, optimizer, directory: Path) -> None:
    """Load the optimizer state of a DCP folder into ``optimizer`` (sharded or not: DCP reshards)."""
    import torch.distributed.checkpoint as dcp

    _init_optimizer_state(model, optimizer)
    template = {"optimizer": _flat_optimizer(optimizer)}
    dcp.load(template, storage_reader=dcp_reader(directory), no_dist=not dist.is_initialized())
    flat = template["optimizer"]
    optimizer.load_state_dict({"state": {int(k): v for k, v in flat["state"].items()},
                               "param_groups": flat["param_groups"]})


def restore_sharded(trainer, path: Path) -> dict | None:
    """Resume an FSDP2 trainer from ``path`` (a consolidated checkpoint; its DCP folder if it names one)."""
    from lm.train.run_checkpoints import load_training_checkpoint

    ckpt = load_training_checkpoint(path)
    from lm.model import check_state_dict

    try:
        check_state_dict(_plain_model(trainer), ckpt["model"])
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    trainer.par.load_full_state_dict(ckpt["model"])
    if ckpt.get("sharded"):
        load_sharded_optimizer(trainer.model, trainer.optimizer, sharded_dir(path, ckpt))
    elif "optimizer" in ckpt:  # a DDP or one-process checkpoint continued under FSDP2: shard its state
        _init_optimizer_state(trainer.model, trainer.optimizer)
        trainer.optimizer.load_state_dict(shard_optimizer_state(trainer.model, ckpt["optimizer"]))
    return trainer._restore_progress(ckpt, path)


def _plain_model(trainer):
    from lm.model import TransformerLM

    with torch.device("meta"):
        return TransformerLM(trainer.cfg.model)


def shard_optimizer_state(model: torch.nn.Module, state: dict) -> dict:
    """A full (unsharded) optimizer state dict with every parameter-shaped tensor sharded like its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = list(model.parameters())
    out = {"state": {}, "param_groups": state["param_groups"]}
    for k, entry in state["state"].items():
        p = params[int(k)]
        new = {}
        for name, v in entry.items():
            if isinstance(p, DTensor) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape):
                v = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)
            new[name] = v
        out["state"][k] = new
    return out


def consolidate(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full model state dict (CS336 names) of a DCP folder, on one process without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    directory = Path(directory)
    meta = dcp_reader(directory).read_metadata()
    template = {}
    for fqn, md in meta.state_dict_metadata.items():
        if fqn.startswith("model.") and isinstance(md, TensorStorageMetadata):
            template[fqn[len("model."):]] = torch.empty(md.size, dtype=md.properties.dtype)
    dcp.load({"model": template}, storage_reader=dcp_reader(directory), no_dist=True)
    return template
