"""The benchmark harness behind ``lab bench`` (torch only: runs on a bare GPU box).

A :class:`BenchCase` is one model + batch + context + dtype + compile +
attention implementation. :func:`run_case` times forward, forward+backward
and a full training step (warm-up excluded, device synchronised, median over
repeats), measures the step's peak memory, optionally counts FLOPs with
``FlopCounterMode`` and asks the calculator for its prediction, so measured
and predicted sit side by side. :func:`grid` expands lists of choices into
cases; :func:`write_json` saves results with the environment they came from.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lm.bench.memory import cpu_peak_bytes, cuda_peak_bytes, live_tensor_bytes
from lm.bench.steps import build_workload, device_name
from lm.bench.timing import Measurement, time_callable
from lm.config.schema import ModelConfig

MODES = ("forward", "forward_backward", "step")
CPU_MEMORY_MAX_PARAMS = 30_000_000  # the profiler-based CPU peak is too slow beyond this


@dataclass(frozen=True)
class BenchCase:
    """One configuration to benchmark."""

    label: str
    model: ModelConfig
    batch_size: int
    context_length: int
    dtype: str = "fp32"
    compile: bool = False
    checkpointing: bool = False
    grad_accum: int = 1
    grad_clip: float = 1.0

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length * self.grad_accum

    def describe(self) -> dict:
        return {"label": self.label, "batch_size": self.batch_size, "context_length": self.context_length,
                "dtype": self.dtype, "compile": self.compile, "attention": self.model.attention,
                "checkpointing": self.checkpointing, "grad_accum": self.grad_accum,
                "model": dataclasses.asdict(self.model)}


@dataclass
class CaseResult:
    """Measurements of one case (and the calculator's prediction when asked)."""

    case: BenchCase
    device: str
    times: dict[str, Measurement] = field(default_factory=dict)
    peak_memory: int | None = None
    """Peak bytes during a steady-state training step (CUDA allocator; profiler trace on CPU)."""
    measured_flops: float | None = None
    """Forward + backward FLOPs counted by FlopCounterMode (matmuls and attention kernels it knows)."""
    prediction: dict | None = None
    mfu: float | None = None
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        step = self.times.get("step")
        return self.case.tokens_per_step / step.median_s if step else None

    def to_dict(self) -> dict:
        return {"case": self.case.describe(), "device": self.device,
                "times": {k: v.to_dict() for k, v in self.times.items()},
                "tokens_per_s": self.tokens_per_s, "mfu": self.mfu, "peak_memory": self.peak_memory,
                "measured_flops": self.measured_flops, "prediction": self.prediction, "error": self.error}


def grid(models: dict[str, ModelConfig], *, batch_sizes: dict[str, int] | int, context_lengths=(None,),
         dtypes=("fp32",), compiles=(False,), attentions=(None,), checkpointing=False, grad_accum=1,
         grad_clip=1.0) -> list[BenchCase]:
    """Every combination of the choices; ``None`` keeps the model's own context length / attention."""
    cases = []
    for (label, cfg), T, dt, comp, attn in itertools.product(models.items(), context_lengths, dtypes, compiles,
                                                             attentions):
        m = dataclasses.replace(cfg, attention=attn) if attn else cfg
        bs = batch_sizes[label] if isinstance(batch_sizes, dict) else batch_sizes
        cases.append(BenchCase(label, m, int(bs), int(T or m.context_length), dt, bool(comp), checkpointing,
                               grad_accum, grad_clip))
    return cases


def count_training_flops(work) -> float:
    """FLOPs of one forward + backward as FlopCounterMode counts them (compiled regions run eagerly)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.compiler.set_stance("force_eager"), counter:
        work.forward_backward()
    return float(counter.get_total_flops())


def predict(case: BenchCase, device: torch.device, *, tf32: bool = True, **efficiency) -> dict:
    """The calculator's numbers for this case on this device (profile matched by the device's name).

    ``tf32=False``: fp32 matmuls were run in full precision, so rate them at the fp32 peak.
    """
    from lm.calc import Efficiency, estimate
    from lm.calc.devices import device_for_torch_name

    profile, fallback = device_for_torch_name(device_name(device))
    if not tf32 and "tf32" in profile.peak_tflops:
        profile = dataclasses.replace(profile, peak_tflops={k: v for k, v in profile.peak_tflops.items()
                                                            if k != "tf32"})
    e = estimate(case.model, profile, batch_size=case.batch_size, context_length=case.context_length,
                 dtype=case.dtype, grad_accum=case.grad_accum, activation_checkpointing=case.checkpointing,
                 compile=case.compile, grad_clip=case.grad_clip > 0, efficiency=Efficiency(**efficiency))
    t = e.time
    from lm.calc.flops import flop_counter_expectation

    counted = flop_counter_expectation(case.model, case.batch_size, case.context_length, device.type,
                                       training_dropout=True)
    return {"device_profile": profile.key, "profile_is_fallback": fallback,
            "forward_s": t.forward_s, "forward_backward_s": t.forward_s + t.backward_s + t.recompute_s,
            "optimizer_s": t.optimizer_s, "step_s": t.step_s, "peak_memory": e.memory.peak,
            "peak_phase": e.memory.peak_phase, "training_flops": e.flops.training_matmul,
            "training_flops_causal": e.flops.training_matmul_causal, "flop_counter_flops": counted, "mfu": t.mfu,
            "tokens_per_s": t.tokens_per_s, "peak_tflops": t.peak_tflops, "peak_source": t.peak_source,
            "matmul_dtype": t.matmul_dtype, "bandwidth": profile.bandwidth, "memory": e.memory.to_dict(),
            "ops": [o.to_dict() for o in t.ops]}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(e, oom) or "out of memory" in str(e).lower()


def run_case(case: BenchCase, device: torch.device, *, modes=MODES, warmup: int = 2, repeats: int = 5,
             min_block_s: float = 0.02, max_case_s: float = 60.0, measure_memory: bool = True,
             flops: bool = False, with_prediction: bool = False, cpu_memory: bool | None = None,
             tf32: bool = True, efficiency: dict | None = None) -> CaseResult:
    """Build, time and measure one case. Out-of-memory is recorded as the case's error, not raised."""
    res = CaseResult(case, device_name(device))
    work = None
    try:
        work = build_workload(case.model, batch_size=case.batch_size, context_length=case.context_length,
                              dtype=case.dtype, device=device, compile=case.compile, checkpointing=case.checkpointing,
                              grad_clip=case.grad_clip, grad_accum=case.grad_accum, tf32=tf32,
                              meta_init=device.type != "cpu")
        per_mode = max_case_s / max(len(modes), 1)
        for mode in modes:
            fn = {"forward": work.forward, "forward_backward": work.forward_backward, "step": work.step}[mode]
            res.times[mode] = time_callable(fn, device, warmup=warmup, repeats=repeats, min_block_s=min_block_s,
                                            max_total_s=per_mode)
        if measure_memory:
            res.peak_memory = step_peak_memory(work, device, cpu_memory)
        if flops:
            res.measured_flops = count_training_flops(work)
    except Exception as e:  # noqa: BLE001 - a benchmark grid reports failures per case and goes on
        if not _is_oom(e):
            raise
        res.error = "out of memory"
    finally:
        del work
        _free(device)
    if with_prediction:
        res.prediction = predict(case, device, tf32=tf32, **(efficiency or {}))
    if "step" in res.times:
        from lm.calc import peak_flops, training_flops_per_token

        peak, _ = peak_flops(device_name(device), case.dtype)
        per_token = training_flops_per_token(dataclasses.replace(case.model, context_length=case.context_length))
        res.mfu = per_token * res.tokens_per_s / peak
    return res


def step_peak_memory(work, device: torch.device, cpu_memory: bool | None) -> int | None:
    """Peak bytes of one steady-state training step (the optimizer state already exists)."""
    work.step()  # make sure AdamW's state is allocated
    if device.type == "cuda":
        return cuda_peak_bytes(work.step, device)
    n_params = sum(p.numel() for p in work.model.parameters())
    if device.type == "cpu" and (cpu_memory or (cpu_memory is None and n_params <= CPU_MEMORY_MAX_PARAMS)):
        # The profiler cannot see frees of tensors allocated before it started: free the gradients first.
        work.optimizer.zero_grad(set_to_none=True)
        base = live_tensor_bytes(work.model, work.optimizer) + work.tokens.nbytes + work.targets.nbytes
        return base + cpu_peak_bytes(work.step)
    return None


def environment(device: torch.device) -> dict:
    """Where the numbers come from."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device_name(device),
           "device_type": device.type, "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, total_memory=props.total_memory,
                   tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def write_json(results: list[CaseResult], path: str | os.PathLike, device: torch.device, extra: dict | None = None
               ) -> Path:
    """Save results (and the environment) as JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(device), "results": [r.to_dict() for r in results]}
    if extra:
        payload.update(extra)
    from lm.atomic import atomic_write

    return atomic_write(p, json.dumps(payload, indent=2, default=str))
