"""Predicted step time: a roofline per op, plus kernel-launch overhead.

Each op takes ``max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency))``
on the device: compute-bound when its arithmetic intensity (FLOPs per byte)
is above the device's ridge point (peak / bandwidth), memory-bound below.
Eager PyTorch also pays a host-side cost per kernel launch; on a GPU the
host runs ahead of the device, so an op costs the larger of its device time
and its launch time; on a CPU both happen on the same cores and add up.
Backward costs twice the forward FLOPs (a fused attention kernel more, as it
recomputes the scores) and about twice the bytes and launches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lm.calc.devices import DeviceProfile
from lm.calc.flops import FlopCount
from lm.calc.ops import EINX_CALL, Op
from lm.calc.settings import Efficiency, Settings


@dataclass(frozen=True)
class OpTime:
    """Predicted cost of one op (all its occurrences) in one micro-batch, forward + backward."""

    name: str
    group: str
    kind: str
    flops: float
    """Executed FLOPs, forward + backward."""
    bytes: float
    kernels: float
    """Launches, forward (einx calls counted as launch-equivalents) + backward."""
    forward_launches: float
    backward_launches: float
    intensity: float
    """Forward FLOPs per byte moved."""
    compute_s: float
    memory_s: float
    launch_s: float
    time_s: float
    forward_s: float
    bound: str
    """'compute', 'memory' or 'launch': which term sets the time."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TimeEstimate:
    """Predicted time of a training step and what it implies."""

    forward_s: float
    """One micro-batch forward (incl. loss)."""
    backward_s: float
    """One micro-batch backward."""
    recompute_s: float
    """Activation checkpointing's extra forward of the blocks, per micro-batch."""
    optimizer_s: float
    """Gradient clipping + AdamW (+ accumulating gradients), once per step."""
    step_s: float
    tokens_per_s: float
    mfu: float
    """Dense training matmul FLOPs / step time / the device's peak (measured if known)."""
    achieved_tflops: float
    peak_tflops: float
    peak_source: str
    matmul_dtype: str
    ops: list[OpTime] = field(default_factory=list)

    def by_group(self) -> dict[str, float]:
        """Seconds per micro-batch (forward + backward) by component group; optimizer per step."""
        out: dict[str, float] = {}
        for o in self.ops:
            out[o.group] = out.get(o.group, 0.0) + o.time_s
        return out

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "ops"}
        d["ops"] = [o.to_dict() for o in self.ops]
        d["by_group"] = self.by_group()
        return d


def _op_time(op: Op, device: DeviceProfile, s: Settings, eff: Efficiency, launch_us: float) -> OpTime:
    peak_mm = device.peak_flops(s.dtype)
    peak_vector = device.peak_tflops["fp32"].value * 1e12  # elementwise math runs on plain FP32 units
    bw = device.bandwidth * eff.bandwidth
    elementwise = op.kind == "elementwise"
    # torch.compile wraps the model only: the loss and the optimizer stay eager. A compiled model
    # also skips the Python of each op (einx's included); its elementwise kernels are fused.
    compiled = s.compile and op.group not in ("loss", "optimizer")
    fused = compiled and elementwise
    f_flops = op.count * op.exec_flops
    f_bytes = op.count * op.bytes * (eff.compile_bytes if fused else 1.0)
    f_kernels = op.count * (op.kernels * (eff.compile_kernels if fused else 1.0)
                            + (0.0 if compiled else EINX_CALL * op.einx_calls))
    b_flops = f_flops * op.backward_flops
    b_bytes = f_bytes * (2.0 if op.backward_flops else 0.0)
    b_kernels = op.count * op.backward_kernels * (eff.compile_kernels if fused else 1.0)

    def device_time(flops, nbytes):
        if op.kind == "matmul":
            c = flops / (peak_mm * eff.matmul)
        elif op.kind == "attention":
            c = flops / (peak_mm * eff.attention)
        else:
            c = flops / peak_vector
        return c, nbytes / bw

    def total(c, m, k, cost_us):
        launch = k * cost_us * 1e-6
        dev = max(c, m)
        return (dev + launch if device.kind == "cpu" else max(dev, launch)), launch

    fc, fm = device_time(f_flops, f_bytes)
    bc, bm = device_time(b_flops, b_bytes)
    ft, fl = total(fc, fm, f_kernels, launch_us)
    bt, bl = total(bc, bm, b_kernels, launch_us * eff.backward_launch)
    compute, memory, launch = fc + bc, fm + bm, fl + bl
    if device.kind != "cpu" and launch >= max(compute, memory):
        bound = "launch"
    else:
        bound = "compute" if compute >= memory else "memory"
    intensity = (op.count * op.flops) / (op.count * op.bytes) if op.bytes else float("inf")
    return OpTime(op.name, op.group, op.kind, f_flops + b_flops, f_bytes + b_bytes, f_kernels + b_kernels,
                  f_kernels, b_kernels, intensity, compute, memory, launch, ft + bt, ft, bound)


def estimate_time(forward: list[Op], optimizer: list[Op], accumulate: Op | None, flops: FlopCount,
                  device: DeviceProfile, s: Settings, eff: Efficiency) -> TimeEstimate:
    """Sum the per-op roofline times into a step time, tokens/s and MFU."""
    launch_us = eff.launch_overhead_us if eff.launch_overhead_us is not None else device.launch_overhead_us.value
    model_ops = [_op_time(op, device, s, eff, launch_us) for op in forward]
    opt_ops = [_op_time(op, device, s, eff, launch_us) for op in optimizer]
    fwd = sum(o.forward_s for o in model_ops)
    bwd = sum(o.time_s - o.forward_s for o in model_ops)
    recompute = sum(t.forward_s for t, op in zip(model_ops, forward) if op.per_layer) if s.activation_checkpointing else 0.0
    opt = sum(o.time_s for o in opt_ops)
    if accumulate is not None and s.grad_accum > 1:
        acc = _op_time(accumulate, device, s, eff, launch_us)
        opt += (s.grad_accum - 1) * acc.time_s
        opt_ops.append(acc)
    step = s.grad_accum * (fwd + bwd + recompute) + opt
    peak = device.peak(s.dtype)
    useful = flops.training_matmul * s.grad_accum
    achieved = useful / step if step > 0 else 0.0
    return TimeEstimate(forward_s=fwd, backward_s=bwd, recompute_s=recompute, optimizer_s=opt, step_s=step,
                        tokens_per_s=s.tokens_per_step / step if step > 0 else 0.0,
                        mfu=achieved / (peak.value * 1e12), achieved_tflops=achieved / 1e12,
                        peak_tflops=peak.value, peak_source=peak.source, matmul_dtype=device.matmul_dtype(s.dtype),
                        ops=model_ops + opt_ops)
