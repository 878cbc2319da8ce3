"""Several GPUs: per-GPU memory under DDP and FSDP2, gradient communication time, scaling efficiency.

The experiment's ``training.batch_size`` is the global batch; each of the N
GPUs runs ``batch_size / N`` of it, so the single-GPU estimate at that
per-GPU batch gives the compute time and activations of one rank.

Memory per GPU:

- DDP: a whole replica (weights, gradients, optimizer state) plus DDP's
  gradient buckets, one more fp32 copy of the gradients that the all-reduce
  works on (``gradient_as_bucket_view`` is off).
- FSDP2: weights, gradients and optimizer state divided by N, plus what is
  gathered at a time: the root unit (embeddings, final norm, LM head) and two
  blocks (the one computing and the one prefetched), in the compute dtype,
  and one block's unsharded fp32 gradients before their reduce-scatter.

Communication per optimizer step, on NCCL's ring (bus bandwidth = link
bandwidth x ``collective_efficiency``; NVLink where the profile has it, else
PCIe; each figure says whether it is a datasheet value or measured):

- DDP: one all-reduce of the fp32 gradients, ``2 (N-1)/N x 4P`` bytes over
  the bus, overlapped with the backward of the last micro-step (buckets of
  25 MB; the last one is exposed).
- FSDP2: every micro-step all-gathers the weights twice (forward and
  backward, ``(N-1)/N x P x bytes`` each) and the last reduce-scatters the
  fp32 gradients (``(N-1)/N x 4P``), overlapped with the forward and backward
  compute (one block's all-gather is exposed); its hooks add host time per
  unit (``FSDP_LAUNCHES_PER_UNIT`` launches at the profile's launch overhead).

Scaling efficiency is the one-GPU step time at the per-GPU batch over the
predicted distributed step time: the fraction of N times one GPU's
throughput. One node only; across nodes the network (not modelled) decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lm.errors import ConfigError

DDP_BUCKET_BYTES = 25 * 2**20
"""DDP's default bucket_cap_mb: the last bucket's all-reduce cannot overlap the backward."""


FSDP_LAUNCHES_PER_UNIT = 12
"""Host launches per FSDP2 unit and micro-step (copy-in, all-gather, copy-out, free, reduce-scatter): estimate."""


@dataclass(frozen=True)
class DistributedEstimate:
    """What N GPUs of one device profile do with an experiment in one parallel mode."""

    mode: str
    world_size: int
    device: str
    per_gpu_batch: int
    link: str
    """'NVLink', 'PCIe' or 'none' (no interconnect figure: communication time unknown)."""
    link_gbs: float | None
    link_source: str
    bus_gbs: float | None
    params_bytes: float
    grads_bytes: float
    optimizer_bytes: float
    comm_buffer_bytes: float
    gathered_bytes: float
    activations_bytes: float
    peak_bytes: float
    total_bytes: float
    capacity_bytes: float
    comm_bytes: float
    """Bytes each GPU moves over the bus per optimizer step (the ring formula's volume)."""
    comm_s: float | None
    exposed_comm_s: float | None
    compute_s: float
    step_s: float | None
    tokens_per_s: float | None
    scaling_efficiency: float | None

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fits"] = self.fits
        return d


def _link(dev) -> tuple[str, float | None, str, float | None]:
    fig, name = (dev.nvlink_gbs, "NVLink") if dev.nvlink_gbs is not None else (dev.pcie_gbs, "PCIe")
    if fig is None:
        return "none", None, "", None
    eff = dev.collective_efficiency.value if dev.collective_efficiency is not None else 0.8
    return name, fig.value, fig.source, fig.value * eff


def estimate_distributed(exp, device, world_size: int, mode: str, **settings) -> DistributedEstimate:
    """Predict ``mode`` ('ddp' or 'fsdp') on ``world_size`` GPUs of ``device`` for experiment ``exp``.

    ``settings`` are :func:`lm.calc.estimate`'s keywords; ``batch_size`` there
    is the global batch (default: the experiment's), split over the GPUs.
    """
    from lm.calc import estimate
    from lm.calc.devices import get_device
    from lm.distributed.data import batch_split_problem

    if mode not in ("ddp", "fsdp"):
        raise ValueError(f"mode must be 'ddp' or 'fsdp', got {mode!r}")
    if world_size < 1:
        raise ConfigError([f"--gpus must be at least 1, got {world_size}"])
    dev = get_device(device, settings.get("devices_file"))
    global_batch = settings.pop("batch_size", None) or exp.training.batch_size
    if problem := batch_split_problem(global_batch, world_size, "the batch size"):
        raise ConfigError([problem])
    local = global_batch // world_size
    est = estimate(exp, dev, batch_size=local, distributed=world_size > 1, **settings)
    m, t, p = est.memory, est.time, est.params
    s = est.settings
    P = p.total
    N = world_size
    compute_bytes = 2 if s.dtype == "bf16" else 4
    accum = s.grad_accum
    link, link_gbs, source, bus = _link(dev)
    if mode == "ddp":
        params_b, grads_b, opt_b = m.params, m.grads, m.optimizer
        buffers_b = m.grads if N > 1 else 0.0
        gathered = 0.0
        peak = m.peak + buffers_b
        comm = 2 * (N - 1) / N * 4 * P
        compute = t.step_s
        exposed_of = lambda c: max(0.0, c - t.backward_s) + min(c, 2 * (N - 1) / N * DDP_BUCKET_BYTES / (bus * 1e9))
    else:
        persistent = m.params + m.grads + m.optimizer
        params_b, grads_b, opt_b = m.params / N, m.grads / N, m.optimizer / N
        block = (p.attention + p.ffn + p.norms) / max(1, exp.model.num_layers)
        root = p.embeddings + p.lm_head
        gathered = (root + 2 * block) * compute_bytes + block * 4 if N > 1 else 0.0
        buffers_b = 0.0
        peak = m.peak - persistent + persistent / N + gathered
        comm = (N - 1) / N * (2 * P * compute_bytes * accum + 4 * P)
        # Each rank updates only its shard; each unit's all-gather/reshard/reduce-scatter hooks cost host time
        # (about a dozen launches per unit and micro-step, an estimate until issue 18 measures it).
        units = exp.model.num_layers + 1
        hooks = FSDP_LAUNCHES_PER_UNIT * units * accum * dev.launch_overhead_us.value * 1e-6 if N > 1 else 0.0
        compute = t.step_s - t.optimizer_s * (1 - 1 / N) + hooks
        first = (N - 1) / N * block * compute_bytes
        exposed_of = lambda c: max(0.0, c - (t.forward_s + t.backward_s) * accum) + min(c, first / (bus * 1e9))
    total = peak + m.fragmentation + m.overhead
    if N == 1:
        comm = 0.0
    if bus is None:
        comm_s = exposed = step = tps = eff = None
    else:
        comm_s = comm / (bus * 1e9)
        exposed = exposed_of(comm_s) if N > 1 else 0.0
        step = compute + exposed
        tps = N * s.tokens_per_step / step
        eff = t.step_s / step
    return DistributedEstimate(mode=mode, world_size=N, device=dev.key, per_gpu_batch=local, link=link,
                               link_gbs=link_gbs, link_source=source, bus_gbs=bus, params_bytes=params_b,
                               grads_bytes=grads_b, optimizer_bytes=opt_b, comm_buffer_bytes=buffers_b,
                               gathered_bytes=gathered, activations_bytes=m.activations, peak_bytes=peak,
                               total_bytes=total, capacity_bytes=m.capacity, comm_bytes=comm, comm_s=comm_s,
                               exposed_comm_s=exposed, compute_s=compute, step_s=step, tokens_per_s=tps,
                               scaling_efficiency=eff)
