"""The calculator's front door: one call sizes a config on a device.

``estimate(cfg, "rtx4090", batch_size=16)`` returns parameters, FLOPs, memory,
time and a verdict (fits or not, by how much, and which batch size would).
Pure arithmetic: no torch, so the console's calculator tab stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from lm.auto import checkpointing_auto, uses_cuda_graphs
from lm.calc.activations import Activations, saved_activations, sdpa_path
from lm.calc.devices import DeviceProfile, get_device
from lm.calc.flops import FlopCount, count_flops
from lm.calc.memory import MemoryEstimate, estimate_memory
from lm.calc.ops import forward_ops, grad_accumulate_op, optimizer_ops
from lm.calc.optimizer import newton_schulz_flops_per_step, newton_schulz_op
from lm.calc.params import ParamCount, count_params
from lm.calc.roofline import TimeEstimate, estimate_time
from lm.calc.settings import Efficiency, Settings, normalize_dtype
from lm.calc.units import fmt_bytes, fmt_rate, fmt_seconds
from lm.config.schema import ModelConfig, TrainingConfig
from lm.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    """Whether the configuration fits the device, and what to do if it does not."""

    fits: bool
    text: str
    """One line for a table or a status bar."""
    over_by: float
    """Bytes over the device's capacity (0 when it fits)."""
    max_batch_size: int
    """Largest batch size that fits at this context length and dtype (0: not even 1)."""
    suggestion: str = ""

    def to_dict(self) -> dict:
        return {"fits": self.fits, "text": self.text, "over_by": self.over_by,
                "max_batch_size": self.max_batch_size, "suggestion": self.suggestion}


@dataclass(frozen=True)
class Estimate:
    """Everything the calculator predicts for one (model, device, settings)."""

    model: ModelConfig
    device: DeviceProfile
    settings: Settings
    efficiency: Efficiency
    params: ParamCount
    flops: FlopCount
    activations: Activations
    memory: MemoryEstimate
    time: TimeEstimate
    verdict: Verdict

    def to_dict(self) -> dict:
        s = self.settings
        return {
            "device": self.device.to_dict(),
            "settings": {"batch_size": s.batch_size, "context_length": s.context_length, "dtype": s.dtype,
                         "grad_accum": s.grad_accum, "activation_checkpointing": s.activation_checkpointing,
                         "recompute_weight_copies": s.recompute_weight_copies,
                         "compile": s.compile, "grad_clip": s.grad_clip, "tokens_per_step": s.tokens_per_step,
                         "optimizer": s.optimizer},
            "efficiency": {n: getattr(self.efficiency, n) for n in Efficiency.field_names()},
            "params": self.params.to_dict(),
            "flops": self.flops.to_dict(),
            "activations": self.activations.to_dict(),
            "memory": self.memory.to_dict(),
            "time": self.time.to_dict(),
            "verdict": self.verdict.to_dict(),
            "optimizer": {"name": s.optimizer, "state_bytes": self.memory.optimizer,
                          "newton_schulz_flops_per_step": (newton_schulz_flops_per_step(self.model, s.ns_steps)
                                                           if s.optimizer == "muon" else 0)},
        }


def _split(cfg_or_exp) -> tuple[ModelConfig, object | None]:
    if isinstance(cfg_or_exp, ModelConfig):
        return cfg_or_exp, None
    if hasattr(cfg_or_exp, "model") and hasattr(cfg_or_exp, "training"):
        return cfg_or_exp.model, cfg_or_exp
    raise TypeError(f"estimate() takes a ModelConfig or an ExperimentConfig, got {type(cfg_or_exp).__name__}")


def resolve_settings(cfg_or_exp, device: DeviceProfile, *, batch_size=None, context_length=None, dtype=None,
                     grad_accum=None, activation_checkpointing=None, compile=None, grad_clip=None,
                     engine: str = "fused", distributed: bool = False) -> tuple[ModelConfig, Settings]:
    """Fill unspecified settings from the experiment (or training defaults) and the device's defaults.

    ``distributed``: the step runs in one of several processes (DDP/FSDP2), which resolves
    activation_checkpointing = 'auto' as the trainer does there."""
    model, exp = _split(cfg_or_exp)
    training = exp.training if exp is not None else TrainingConfig()
    problems = model.problems()
    T = context_length if context_length is not None else model.context_length
    if T > model.context_length:
        problems.append(f"context_length {T} is longer than model.context_length ({model.context_length}); "
                        f"the model cannot run sequences longer than it was built for")
    dt = normalize_dtype(dtype if dtype is not None else training.dtype)
    if dt == "auto":
        dt = "bf16" if device.bf16_autocast else "fp32"
    if dt == "tf32":
        dt = "fp32"  # fp32 training; on CUDA its matmuls run in TF32 anyway
    ac = activation_checkpointing if activation_checkpointing is not None else training.activation_checkpointing
    comp = compile if compile is not None else training.compile
    if isinstance(comp, str):
        if comp not in ("auto", "on", "off"):
            problems.append(f"compile must be 'auto', 'on' or 'off', got {comp!r}")
        comp = device.compile if comp == "auto" else comp == "on"
    if ac == "auto":
        ac = _auto_checkpointing(model, device, training, compiled=bool(comp), bf16=dt == "bf16",
                                 distributed=distributed)
    clip = grad_clip if grad_clip is not None else (exp.optimizer.grad_clip > 0 if exp is not None else True)
    opt_name = getattr(exp.optimizer, "name", "adamw") if exp is not None else "adamw"
    ns_steps = getattr(exp.optimizer, "muon_ns_steps", 5) if exp is not None else 5
    s = Settings(optimizer=opt_name, ns_steps=ns_steps,
                 batch_size=int(batch_size if batch_size is not None else training.batch_size),
                 context_length=int(T), dtype=dt,
                 grad_accum=int(grad_accum if grad_accum is not None else training.grad_accum),
                 activation_checkpointing=_checkpointing(ac),
                 recompute_weight_copies=ac == "weights", compile=bool(comp),
                 grad_clip=bool(clip), engine=engine)
    problems += s.problems()
    if problems:
        raise ConfigError(problems)
    return model, s


def _auto_checkpointing(model: ModelConfig, device: DeviceProfile, training: TrainingConfig, *, compiled: bool,
                        bf16: bool, distributed: bool) -> str:
    """training.activation_checkpointing = 'auto' as the trainer resolves it (lm.auto)."""
    num_params = count_params(model).total
    graphed = uses_cuda_graphs(training.cuda_graphs, compiled=compiled, device_type=device.kind,
                               distributed=distributed, num_params=num_params, checkpointing="auto")
    return checkpointing_auto(num_params=num_params, compiled=compiled, cuda_graphs=graphed,
                              device_type=device.kind, bf16=bf16, distributed=distributed)


def _checkpointing(value) -> bool:
    """``activation_checkpointing`` as a bool or as training.activation_checkpointing's name
    ('weights' keeps the activations: see Settings.recompute_weight_copies)."""
    if isinstance(value, str):
        return value not in ("", "none", "weights")
    return bool(value)


def _memory(model: ModelConfig, device: DeviceProfile, s: Settings, params: ParamCount
            ) -> tuple[Activations, MemoryEstimate]:
    act = saved_activations(model, s.batch_size, s.context_length, autocast=s.dtype == "bf16",
                            device_kind=device.kind, checkpointing=s.activation_checkpointing,
                            fused_loss=s.engine == "fused", compiled_loss=s.engine == "fused" and s.compile,
                            compiled_blocks=s.engine == "fused" and s.compile and device.kind == "cuda")
    naive = model.attention == "naive" or sdpa_path(model, device.kind) != "fused"
    mem = estimate_memory(model, s, params, act, capacity=device.usable_bytes, overhead=device.overhead_bytes,
                          fragmentation=device.fragmentation.value, naive_attention=naive,
                          device_kind=device.kind)
    return act, mem


def _fits_with(model, device, s: Settings, params, batch: int, **changes) -> bool:
    fields = {**s.__dict__, **changes, "batch_size": batch}
    return _memory(model, device, Settings(**fields), params)[1].fits


def _largest_batch(model, device, s: Settings, params, limit: int = 1 << 20, **changes) -> int:
    """Largest batch size that fits (memory grows with batch), 0 if none."""
    if not _fits_with(model, device, s, params, 1, **changes):
        return 0
    lo, hi = 1, 2
    while hi <= limit and _fits_with(model, device, s, params, hi, **changes):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits_with(model, device, s, params, mid, **changes):
            lo = mid
        else:
            hi = mid
    return lo


def _verdict(model, device, s: Settings, params, mem: MemoryEstimate, t: TimeEstimate) -> Verdict:
    cap = fmt_bytes(mem.capacity)
    best = _largest_batch(model, device, s, params)
    speed = f"{fmt_seconds(t.step_s)}/step, {fmt_rate(t.tokens_per_s)}, MFU {t.mfu:.0%}"
    if mem.fits:
        text = (f"fits: {fmt_bytes(mem.total)} of {cap} ({mem.total / mem.capacity:.0%}); {speed}; "
                f"batch_size up to {best} fits")
        return Verdict(True, text, 0.0, best)
    over = -mem.headroom
    where = f"at context {s.context_length}, {s.dtype}"
    if best >= 1:
        tip = f"batch_size {best} fits ({where})"
        if s.grad_accum * s.batch_size > best:
            accum = -(-s.batch_size * s.grad_accum // best)
            tip += f"; keep {s.batch_size * s.grad_accum} sequences per step with grad_accum {accum}"
        text = f"does not fit: needs {fmt_bytes(mem.total)}, {cap} available, over by {fmt_bytes(over)}; {tip}"
        return Verdict(False, text, over, best, tip)
    persistent = mem.persistent + mem.overhead
    if persistent > mem.capacity:
        tip = (f"weights, gradients and AdamW state alone need {fmt_bytes(mem.persistent)} "
               f"(16 bytes per parameter, {params.total / 1e9:.2f}B parameters); choose a smaller model or a "
               f"larger device")
    else:
        tip = f"not even batch_size 1 fits ({where})"
        if not s.activation_checkpointing:
            ck = _largest_batch(model, device, s, params, activation_checkpointing=True)
            if ck >= 1:
                tip += f"; with activation checkpointing batch_size {ck} would fit"
        if s.context_length > 64:
            shorter = s.context_length // 2
            if _fits_with(model, device, s, params, 1, context_length=shorter):
                tip += f"; context {shorter} fits at batch_size 1"
    text = f"does not fit: needs {fmt_bytes(mem.total)}, {cap} available, over by {fmt_bytes(over)}; {tip}"
    return Verdict(False, text, over, 0, tip)


def estimate(exp_cfg_or_model_cfg, device, *, batch_size=None, context_length=None, dtype=None, grad_accum=None,
             activation_checkpointing=None, compile=None, efficiency: Efficiency | None = None,
             grad_clip: bool | None = None, devices_file=None, engine: str = "fused",
             distributed: bool = False) -> Estimate:
    """Size a training configuration on a device.

    ``exp_cfg_or_model_cfg``: an ExperimentConfig (its [training] section gives
    the defaults) or a bare ModelConfig (training defaults). ``device``: a
    profile key (``rtx4090``), a torch device name, or a DeviceProfile.
    ``dtype``: 'fp32', 'bf16' or 'auto' (bf16 where the device supports it).
    ``compile``: True/False or 'auto'/'on'/'off'. ``activation_checkpointing``: True/False or a
    training.activation_checkpointing name (None: the experiment's). ``engine``: see Settings.engine.
    ``distributed``: one process of several (resolves 'auto' settings as the trainer does there).
    Raises ConfigError on bad settings and LabError (listing known devices) on an unknown device.
    """
    dev = get_device(device, devices_file)
    eff = efficiency or Efficiency()
    if problems := eff.problems():
        raise ConfigError(problems)
    model, s = resolve_settings(exp_cfg_or_model_cfg, dev, batch_size=batch_size, context_length=context_length,
                                dtype=dtype, grad_accum=grad_accum, activation_checkpointing=activation_checkpointing,
                                compile=compile, grad_clip=grad_clip, engine=engine, distributed=distributed)
    eff = eff.resolve(dev, s.dtype)  # unset factors from the device profile
    params = count_params(model)
    flops = count_flops(model, s.batch_size, s.context_length)
    act, mem = _memory(model, dev, s, params)
    t = time_estimate(model, dev, s, eff, params, flops)
    return Estimate(model, dev, s, eff, params, flops, act, mem, t, _verdict(model, dev, s, params, mem, t))


def time_estimate(model: ModelConfig, dev: DeviceProfile, s: Settings, eff: Efficiency,
                  params: ParamCount | None = None, flops: FlopCount | None = None) -> TimeEstimate:
    """The time model alone (no memory, no verdict): what calibration fits call many times.

    ``eff`` must be resolved for the device (:meth:`Efficiency.resolve`).
    """
    params = params or count_params(model)
    flops = flops or count_flops(model, s.batch_size, s.context_length)
    fused = model.attention == "sdpa" and dev.flash_attention and sdpa_path(model, dev.kind) == "fused"
    ops = forward_ops(model, s.batch_size, s.context_length, autocast=s.dtype == "bf16",
                      exp_fp32=dev.kind != "cpu", fused_attention=fused, flash_backward=eff.flash_backward,
                      fused_loss=s.engine == "fused", compiled_loss=s.engine == "fused" and s.compile)
    groups = 2 if params.norms else 1  # decayed matrices and undecayed norm gains
    opt = optimizer_ops(params.total, params.num_tensors, grad_clip=s.grad_clip, multi_tensor=dev.kind == "cuda",
                        groups=groups, fused=s.engine == "fused" and dev.kind == "cuda")
    if s.optimizer == "muon":
        opt.append(newton_schulz_op(model, s.ns_steps))  # its FLOPs take time but are not in MFU's numerator
    return estimate_time(ops, opt, grad_accumulate_op(params.total, params.num_tensors), flops, dev, s, eff,
                         num_layers=model.num_layers)


def max_batch_size(exp_cfg_or_model_cfg, device, *, context_length=None, dtype=None, grad_accum=None,
                   activation_checkpointing=None, compile=None, devices_file=None, limit: int = 1 << 20) -> int:
    """The largest batch size whose training step fits the device's memory (0 if none)."""
    dev = get_device(device, devices_file)
    model, s = resolve_settings(exp_cfg_or_model_cfg, dev, batch_size=1, context_length=context_length,
                                dtype=dtype, grad_accum=grad_accum, activation_checkpointing=activation_checkpointing,
                                compile=compile)
    return _largest_batch(model, dev, s, count_params(model), limit=limit)
