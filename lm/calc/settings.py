"""How a model is run: batch, context, dtype, compile, checkpointing; plus the tuning knobs.

:class:`Settings` is what the memory and time models take besides the model
config and the device. :class:`Efficiency` gathers the factors that turn
peak hardware numbers into achievable ones and price the host's work; unset
ones come from the device profile (docs/performance.md (Calculator) says which are calibrated
and how, with bench/calc_vs_measured.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from lm.errors import ConfigError

_DTYPE_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32", "32": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "tf32": "tf32",
    "auto": "auto",
}
DTYPES = ("fp32", "bf16")


def normalize_dtype(dtype) -> str:
    """'fp32', 'bf16', 'tf32' or 'auto' from the many ways people spell them."""
    key = str(dtype).strip().lower()
    if key not in _DTYPE_ALIASES:
        raise ConfigError([f"dtype must be one of fp32, bf16 or auto (also float32, bfloat16), got {dtype!r}"])
    return _DTYPE_ALIASES[key]


ENGINES = ("fused", "unfused")


@dataclass(frozen=True)
class Settings:
    """One training configuration to size: everything but the model and the device."""

    batch_size: int
    """Sequences per micro-batch."""
    context_length: int
    """Tokens per sequence."""
    dtype: str = "fp32"
    """'fp32' (TF32 matmuls on CUDA) or 'bf16' (autocast: fp32 master weights, bf16 matmuls)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; gradients stay allocated across them."""
    activation_checkpointing: bool = False
    """Recompute each block in backward instead of keeping its activations."""
    recompute_weight_copies: bool = False
    """Keep every activation but recast the weights' bf16 copies in backward instead of keeping them
    (training.activation_checkpointing = 'weights')."""
    compile: bool = False
    """torch.compile: fewer, fused elementwise kernels."""
    grad_clip: bool = True
    """Whether the step clips the global gradient norm (one more pass over the gradients)."""
    optimizer: str = "adamw"
    """'adamw' (two fp32 moments per parameter) or 'muon' (one momentum for the blocks' matrices,
    plus Newton-Schulz matmuls each step: optimizer work, outside MFU)."""
    ns_steps: int = 5
    """Muon's Newton-Schulz steps per optimizer step."""
    engine: str = "fused"
    """'fused': today's trainer (the LM head and loss as one chunked op inside the compiled region,
    AdamW as one fused kernel on CUDA); 'unfused': the engine before it (full logits, F.cross_entropy
    outside the compiled region, multi-tensor AdamW), which older recorded measurements ran."""

    def problems(self) -> list[str]:
        out = []
        if self.batch_size < 1:
            out.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.context_length < 1:
            out.append(f"context_length must be at least 1, got {self.context_length}")
        if self.grad_accum < 1:
            out.append(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.engine not in ENGINES:
            out.append(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.dtype not in DTYPES:
            out.append(f"dtype must be one of {', '.join(DTYPES)} once resolved, got {self.dtype!r}")
        return out

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch."""
        return self.batch_size * self.context_length

    @property
    def tokens_per_step(self) -> int:
        return self.tokens * self.grad_accum


# Efficiency fields whose default comes from the device profile (lm/calc/devices.toml), by profile key.
PROFILE_FACTORS = {"matmul": "matmul_efficiency", "attention": "attention_efficiency",
                   "bandwidth": "bandwidth_efficiency", "launch_overhead_us": "launch_overhead_us",
                   "backward_launch": "backward_launch", "einx_call_us": "einx_call_us",
                   "cpp_launch_us": "cpp_launch_us"}


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak that real kernels reach, and the host's fixed costs. All tunable.

    A field left at None takes the device profile's figure (``devices.toml``:
    calibrated on the H100 with ``bench/calc_vs_measured.py``, estimates
    elsewhere); setting it overrides the profile for one estimate.
    :meth:`resolve` fills the Nones in for a device.
    """

    matmul: float | None = None
    """Fraction of the device's peak matmul FLOP/s that the model's GEMMs reach (of the measured peak when known)."""
    attention: float | None = None
    """Fraction of peak a fused (flash) attention kernel reaches; small head sizes keep it below GEMMs."""
    bandwidth: float | None = None
    """Fraction of datasheet memory bandwidth that elementwise and optimizer kernels reach."""
    launch_overhead_us: float | None = None
    """Host time per eager forward op (Python, dispatcher, autograd recording, kernel launch), microseconds."""
    backward_launch: float | None = None
    """Host time per backward kernel relative to ``launch_overhead_us`` (autograd's C++ engine issues them)."""
    einx_call_us: float | None = None
    """Host time of one einx call on top of the ops it dispatches, microseconds (gone under torch.compile)."""
    cpp_launch_us: float | None = None
    """Host time of a kernel issued from C++ with no Python call of its own (autocast's casts, foreach chunks)."""
    compile_bytes: float = 0.5
    """With torch.compile, elementwise memory traffic is multiplied by this (fusion keeps values in registers)."""
    compile_kernels: float = 0.3
    """With torch.compile, the number of kernel launches is multiplied by this."""
    flash_backward: float = 2.5
    """A fused attention backward does this many times its forward FLOPs (it recomputes the scores)."""

    def resolve(self, device, dtype: str = "bf16") -> Efficiency:
        """A copy with every None replaced by ``device``'s profile figure (a DeviceProfile).

        ``dtype``: the training dtype; fp32 on a device that runs it as TF32 takes the
        profile's ``tf32_matmul_efficiency`` when it has one.
        """
        filled = {name: getattr(device, key).value for name, key in PROFILE_FACTORS.items()
                  if getattr(self, name) is None}
        tf32 = device.tf32_matmul_efficiency
        if self.matmul is None and tf32 is not None and device.matmul_dtype(dtype) == "tf32":
            filled["matmul"] = tf32.value
        return replace(self, **filled)

    def problems(self) -> list[str]:
        out = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in ("matmul", "attention", "bandwidth", "compile_bytes", "compile_kernels") and not 0 < v <= 1:
                out.append(f"efficiency.{f.name} must be in (0, 1], got {v}")
            elif f.name in ("launch_overhead_us", "backward_launch", "einx_call_us", "cpp_launch_us") and v < 0:
                out.append(f"efficiency.{f.name} must be >= 0, got {v}")
            elif f.name == "flash_backward" and v <= 0:
                out.append(f"efficiency.{f.name} must be positive, got {v}")
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
