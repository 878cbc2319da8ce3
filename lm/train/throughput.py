"""The calculator's numbers the trainer needs for MFU: FLOPs per token, the device's peak, Muon's extra FLOPs."""

from __future__ import annotations

import sys

from lm.config.schema import ExperimentConfig
from lm.errors import LabError
from lm.train.policy import DevicePolicy


def mfu_inputs(model_cfg, policy: DevicePolicy) -> tuple[float | None, float | None, bool]:
    """(training FLOPs per token, peak FLOP/s, peak is an estimate) from the calculator."""
    from lm.calc import peak_flops, training_flops_per_token

    try:
        peak, estimated = peak_flops(policy.device_name, policy.dtype)
    except LabError as e:  # e.g. a malformed ~/.config/lab/devices.toml: train anyway, without MFU
        print(f"lab: MFU left out: {e}", file=sys.stderr)
        return None, None, True
    return float(training_flops_per_token(model_cfg)), float(peak), bool(estimated)


def newton_schulz_flops(cfg: ExperimentConfig) -> float:
    """Muon's Newton-Schulz FLOPs per optimizer step (0 for AdamW), from the calculator."""
    if getattr(cfg.optimizer, "name", "adamw") != "muon":
        return 0.0
    from lm.calc.optimizer import newton_schulz_flops_per_step

    return float(newton_schulz_flops_per_step(cfg.model, cfg.optimizer.muon_ns_steps))
