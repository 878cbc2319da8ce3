"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state sharded.

Each transformer block is its own FSDP unit (all-gathered just before its
forward and backward, resharded after), and the root module holds the
embeddings, final norm and LM head. Parameters become DTensors sharded on
dim 0; the optimizer, built afterwards over ``model.parameters()``, keeps its
state sharded alongside them. bf16 runs use FSDP2's mixed-precision policy
(bf16 all-gathered weights and compute, fp32 gradient reduction and master
weights) instead of autocast.

Gradient accumulation turns the reduce-scatter off on non-final micro-steps
(``set_requires_gradient_sync(False)``); the global gradient norm is the
square root of the all-reduced sum of every shard's squared norm.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from lm.distributed.parallel import Parallel


class FSDPParallel(Parallel):
    mode = "fsdp"
    shards_state = True

    @property
    def compiles_model(self) -> bool:
        """Under FSDP2 each block is compiled on its own (the hooks between blocks stay eager)."""
        return bool(self.policy is not None and self.policy.compile)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.model = model
        self.mesh = init_device_mesh(self.device.type, (self.env.world_size,))
        kwargs = {"mesh": self.mesh}
        if self.policy is not None and self.policy.dtype == "bf16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            if self.compiles_model:  # torchtitan's order: compile each block, then shard it
                block.compile()
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model

    def autocast(self, policy):
        return contextlib.nullcontext()  # the mixed-precision policy casts the gathered weights

    def micro_step(self, last: bool):
        self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _local_grads(self, params) -> list[torch.Tensor]:
        out = []
        for p in params:
            g = p.grad
            if g is None:
                continue
            out.append(g.to_local() if hasattr(g, "to_local") else g)
        return out

    def grad_norm(self, params) -> torch.Tensor:
        grads = self._local_grads(params)
        sq = torch.zeros((), dtype=torch.float32, device=self.device)
        if grads:
            sq = torch.stack([n.float() ** 2 for n in torch._foreach_norm(grads)]).sum()
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        return sq.sqrt()

    def clip_grad_norm(self, params, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
        """Scale every shard so the global gradient norm is at most ``max_norm``; return the pre-clip norm."""
        params = list(params)
        total = self.grad_norm(params)
        grads = self._local_grads(params)
        if grads:
            scale = torch.clamp(max_norm / (total + eps), max=1.0)
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        return total

    def full_state_dict(self) -> dict:
        """The whole model (CS336 names, on the CPU) on every rank; collective (each shard is all-gathered)."""
        out = {}
        for k, v in self.model.state_dict().items():
            v = v.full_tensor() if hasattr(v, "full_tensor") else v
            out[k] = v.detach().cpu()
        return out

    def load_full_state_dict(self, state: dict) -> None:
        """Load a consolidated (CS336-named) state dict into the sharded model: each rank keeps its shard."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        fused = dict(state)
        for name, module in self.model.named_modules():  # q/k/v back into the fused projection
            prefix = f"{name}." if name else ""
            if hasattr(module, "qkv_proj") and f"{prefix}q_proj.weight" in fused:
                qkv = [fused.pop(f"{prefix}{n}_proj.weight") for n in "qkv"]
                fused[f"{prefix}qkv_proj.weight"] = torch.cat(qkv, dim=0)
        own = dict(self.model.named_parameters())
        own.update(dict(self.model.named_buffers()))
        with torch.no_grad():
            for name, p in own.items():
                if name not in fused:
                    continue
                full = fused[name].to(device=self.device, dtype=p.dtype)
                if isinstance(p, DTensor):
                    p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements).to_local())
                else:
                    p.copy_(full)
