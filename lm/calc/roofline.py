"""Predicted step time: a roofline per op on the device, host time per op, and a queue between them.

Each op takes ``max(FLOPs / (peak x efficiency), bytes / (bandwidth x efficiency))``
on the device: compute-bound when its arithmetic intensity (FLOPs per byte)
is above the device's ridge point (peak / bandwidth), memory-bound below.
Eager PyTorch also spends host time on every op (Python, einx's expression
handling, the dispatcher, autograd's bookkeeping, the launch). On a GPU the
host only queues kernels, so the two run concurrently: the step is simulated
op by op, layer by layer, as a queue (the host issues op i at its running
host clock ``h``; the GPU starts it at ``max(h, GPU clock)``). Where the GPU's
work per op is shorter than the host's, the GPU waits and the step is
host-bound ("launch"), as eager training of these models on an H100 is.
On a CPU both happen on the same cores and add up. Backward costs twice the
forward FLOPs (a fused attention kernel more, as it recomputes the scores),
about twice the bytes and launches, each launch priced by autograd's engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lm.calc.devices import DeviceProfile
from lm.calc.flops import FlopCount
from lm.calc.ops import Op
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
    """Kernel launches (dispatched ops), forward + backward."""
    forward_launches: float
    backward_launches: float
    einx_calls: float
    """einx calls of the forward (each costs ``einx_call_us`` of host time; none when compiled)."""
    intensity: float
    """Forward FLOPs per byte moved."""
    compute_s: float
    """Device time at the compute roofline, forward + backward."""
    memory_s: float
    """Device time at the bandwidth roofline, forward + backward."""
    launch_s: float
    """Host time (launches, Python, einx), forward + backward."""
    time_s: float
    """What the op adds to the step: its device time plus the time the device waited for the host to issue it."""
    forward_s: float
    bound: str
    """'compute', 'memory' or 'launch' (host-bound: the device mostly waited for the host)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TimeEstimate:
    """Predicted time of a training step and what it implies."""

    forward_s: float
    """One micro-batch forward (incl. loss), from an idle device (what a forward alone takes)."""
    backward_s: float
    """One micro-batch backward (what it adds after the forward: the two overlap on the device queue)."""
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


@dataclass
class _Cost:
    """Per-occurrence costs of one op, forward and backward, and what it added to the step so far."""

    op: Op
    f_host: float
    f_compute: float
    f_memory: float
    b_host: float
    b_compute: float
    b_memory: float
    f_bytes: float
    b_bytes: float
    f_kernels: float
    b_kernels: float
    einx_calls: float
    added_forward: float = 0.0
    added: float = 0.0
    waited: float = 0.0

    @property
    def f_device(self) -> float:
        return max(self.f_compute, self.f_memory)

    @property
    def b_device(self) -> float:
        return max(self.b_compute, self.b_memory)


class _Queue:
    """The host issuing kernels into the device's queue; ``serial`` when host and device are one (a CPU)."""

    def __init__(self, serial: bool):
        self.serial = serial
        self.host = 0.0
        self.device = 0.0

    def run(self, host_s: float, device_s: float) -> tuple[float, float]:
        """Issue one op; returns (seconds it added to the device's clock, seconds the device sat waiting)."""
        if self.serial:
            self.host += host_s + device_s
            added, self.device = self.host - self.device, self.host
            return added, host_s
        self.host += host_s
        start = max(self.device, self.host)
        waited = start - self.device
        self.device = start + device_s
        return waited + device_s, waited


def _costs(op: Op, device: DeviceProfile, s: Settings, eff: Efficiency) -> _Cost:
    peak_mm = device.peak_flops(s.dtype)
    peak_vector = device.peak_tflops["fp32"].value * 1e12  # elementwise math runs on plain FP32 units
    bw = device.bandwidth * eff.bandwidth
    # Compiled: the model and (fused engine) the loss; the optimizer stays eager. A compiled region
    # also skips the Python of each op (einx's included); its elementwise kernels are fused.
    eager_groups = ("optimizer",) if s.engine == "fused" else ("loss", "optimizer")
    compiled = s.compile and op.group not in eager_groups
    fused = compiled and op.kind == "elementwise"
    attention_peak = peak_mm
    if s.dtype == "fp32" and device.matmul_dtype("fp32") == "tf32":
        # fp32 sdpa runs the memory-efficient kernel (flash needs 16-bit inputs) with 3xTF32
        # arithmetic (cutlass OpMultiplyAddFastF32: three TF32 products per multiply-add).
        attention_peak = peak_mm / 3
    rate = {"matmul": peak_mm * eff.matmul, "attention": attention_peak * eff.attention}.get(op.kind, peak_vector)
    f_bytes = op.bytes * (eff.compile_bytes if fused else 1.0)
    squeeze = eff.compile_kernels if fused else 1.0
    f_kernels, b_kernels = op.kernels * squeeze, op.backward_kernels * squeeze
    if compiled:
        # The compiled graph's generated wrapper launches its kernels (forward and backward) with
        # none of the eager per-op Python, dispatcher or autograd bookkeeping.
        f_host_us, b_launch_us = f_kernels * eff.cpp_launch_us, eff.cpp_launch_us
    else:
        python_kernels = op.kernels - op.cpp_kernels
        f_host_us = python_kernels * eff.launch_overhead_us + op.cpp_kernels * eff.cpp_launch_us
        b_launch_us = eff.launch_overhead_us * eff.backward_launch
    b_bytes = f_bytes * (2.0 if op.backward_flops else 0.0)
    einx = 0.0 if compiled else op.einx_calls
    return _Cost(op, f_host=(f_host_us + einx * eff.einx_call_us) * 1e-6,
                 f_compute=op.exec_flops / rate, f_memory=f_bytes / bw,
                 b_host=b_kernels * b_launch_us * 1e-6,
                 b_compute=op.exec_flops * op.backward_flops / rate, b_memory=b_bytes / bw,
                 f_bytes=f_bytes, b_bytes=b_bytes, f_kernels=f_kernels, b_kernels=b_kernels, einx_calls=einx)


def _forward(q: _Queue, c: _Cost, phase_forward: bool = True) -> float:
    added, waited = q.run(c.f_host, c.f_device)
    c.added += added
    c.waited += waited
    if phase_forward:
        c.added_forward += added
    return added


def _backward(q: _Queue, c: _Cost) -> None:
    added, waited = q.run(c.b_host, c.b_device)
    c.added += added
    c.waited += waited


def _micro_batch(costs: list[_Cost], num_layers: int, q: _Queue, checkpointing: bool) -> tuple[float, float]:
    """One forward + backward through the queue, layer by layer; returns (forward_s, recompute_s)."""
    first = next((i for i, c in enumerate(costs) if c.op.per_layer), len(costs))
    last = max((i for i, c in enumerate(costs) if c.op.per_layer), default=first - 1) + 1
    prefix, layer, suffix = costs[:first], costs[first:last], costs[last:]
    for c in prefix:
        for _ in range(c.op.count):
            _forward(q, c)
    for _ in range(num_layers):
        for c in layer:
            _forward(q, c)
    for c in suffix:
        for _ in range(c.op.count):
            _forward(q, c)
    forward = q.device
    recompute = 0.0
    for c in reversed(suffix):
        for _ in range(c.op.count):
            _backward(q, c)
    for _ in range(num_layers):
        if checkpointing:  # the block's forward runs again (Python included) before its backward
            recompute += sum(_forward(q, c, phase_forward=False) for c in layer)
        for c in reversed(layer):
            _backward(q, c)
    for c in reversed(prefix):
        for _ in range(c.op.count):
            _backward(q, c)
    return forward, recompute


def _op_time(c: _Cost, repeats: float) -> OpTime:
    """The op's totals over its ``repeats`` occurrences in one micro-batch (or one step: the optimizer)."""
    op = c.op
    compute = (c.f_compute + c.b_compute) * repeats
    memory = (c.f_memory + c.b_memory) * repeats
    host = (c.f_host + c.b_host) * repeats
    device_part = c.added - c.waited
    if c.waited > device_part:
        bound = "launch"
    else:
        bound = "compute" if compute >= memory else "memory"
    intensity = op.flops / op.bytes if op.bytes else float("inf")
    return OpTime(op.name, op.group, op.kind, op.exec_flops * (1 + op.backward_flops) * repeats,
                  (c.f_bytes + c.b_bytes) * repeats, (c.f_kernels + c.b_kernels) * repeats,
                  c.f_kernels * repeats, c.b_kernels * repeats, c.einx_calls * repeats, intensity,
                  compute, memory, host, c.added, c.added_forward, bound)


def estimate_time(forward: list[Op], optimizer: list[Op], accumulate: Op | None, flops: FlopCount,
                  device: DeviceProfile, s: Settings, eff: Efficiency, num_layers: int | None = None) -> TimeEstimate:
    """Queue the forward, backward and optimizer ops; sum into a step time, tokens/s and MFU.

    ``eff`` must be resolved (:meth:`Efficiency.resolve`); ``num_layers`` is the
    repeat count of the per-layer ops (taken from them when not given).
    """
    if num_layers is None:
        num_layers = max((op.count for op in forward if op.per_layer), default=1)
    serial = device.kind == "cpu"
    q = _Queue(serial)
    model_costs = [_costs(op, device, s, eff) for op in forward]
    fwd, recompute = _micro_batch(model_costs, num_layers, q, s.activation_checkpointing)
    micro = q.device
    opt_costs = [_costs(op, device, s, eff) for op in optimizer]
    for c in opt_costs:
        # A foreach op issues its kernels (one per chunk of tensors) one after the other: queue them
        # in slices so the device starts on the first while the host issues the rest.
        slices = max(1, min(int(c.f_kernels), 256))
        for _ in range(slices):
            added, waited = q.run(c.f_host / slices, c.f_device / slices)
            c.added += added
            c.waited += waited
    opt = q.device - micro
    opt_ops = [_op_time(c, 1) for c in opt_costs]
    if accumulate is not None and s.grad_accum > 1:
        # Adding into .grad happens inside each later micro-batch's backward, overlapped like its neighbours.
        acc = _costs(accumulate, device, s, eff)
        extra = s.grad_accum - 1
        if serial:
            acc.added, acc.waited = (acc.f_host + acc.f_device) * extra, acc.f_host * extra
        else:
            acc.added = max(acc.f_host, acc.f_device) * extra
            acc.waited = max(0.0, acc.f_host - acc.f_device) * extra
        opt += acc.added
        opt_ops.append(_op_time(acc, extra))
    step = s.grad_accum * micro + opt
    model_ops = [_op_time(c, num_layers if c.op.per_layer else c.op.count) for c in model_costs]
    peak = device.peak(s.dtype)
    useful = flops.training_matmul * s.grad_accum
    achieved = useful / step if step > 0 else 0.0
    return TimeEstimate(forward_s=fwd, backward_s=micro - fwd - recompute, recompute_s=recompute, optimizer_s=opt,
                        step_s=step, tokens_per_s=s.tokens_per_step / step if step > 0 else 0.0,
                        mfu=achieved / (peak.value * 1e12), achieved_tflops=achieved / 1e12,
                        peak_tflops=peak.value, peak_source=peak.source, matmul_dtype=device.matmul_dtype(s.dtype),
                        ops=model_ops + opt_ops)
