"""The parameter / FLOP / memory / time calculator (torch-free).

Public API (kept stable for the trainer, the CLI and the console):

* :func:`training_flops_per_token` - forward + backward matmul FLOPs per token (dense; MFU's basis)
* :func:`peak_flops` - (peak FLOP/s, is it an estimate?) for a torch device name and dtype
* :func:`estimate` - parameters, FLOPs, memory, time and a verdict for a config on a device
* :func:`max_batch_size` - the largest batch that fits
* :func:`get_device` / :func:`list_devices` - device profiles (``lm/calc/devices.toml`` + the user's)
"""

from __future__ import annotations

from lm.calc.devices import (
    DeviceProfile,
    Figure,
    device_for_torch_name,
    get_device,
    list_devices,
    load_devices,
    user_devices_file,
)
from lm.calc.estimate import Estimate, Verdict, estimate, max_batch_size
from lm.calc.flops import FlopCount, count_flops, training_flops_per_token
from lm.calc.params import ParamCount, count_params
from lm.calc.settings import Efficiency, Settings, normalize_dtype

__all__ = [
    "DeviceProfile", "Efficiency", "Estimate", "Figure", "FlopCount", "ParamCount", "Settings", "Verdict",
    "count_flops", "count_params", "estimate", "get_device", "list_devices", "load_devices", "max_batch_size",
    "peak_flops", "training_flops_per_token", "user_devices_file",
]


def peak_flops(device_name: str, dtype: str) -> tuple[float, bool]:
    """Peak matmul FLOP/s for ``dtype`` on a device, and whether that figure is an estimate.

    ``device_name`` is what ``torch.cuda.get_device_name()`` returns
    ("NVIDIA H100 80GB HBM3"), or "cpu" / "mps", or a profile key; it is
    matched by substring against the profiles. A measured figure is preferred
    to the datasheet (the H100's measured 805 TFLOP/s bf16). fp32 on CUDA is
    rated at the TF32 peak, as lab trains fp32 with TF32 matmuls. An unknown
    device gets a generic figure with ``estimated=True``.
    """
    dev, fallback = device_for_torch_name(device_name)
    dt = normalize_dtype(dtype)
    if dt == "auto":
        dt = "bf16" if dev.bf16_autocast else "fp32"
    fig = dev.peak(dt)
    return fig.value * 1e12, bool(fallback or fig.estimated)
