"""The calculator against recorded GPU measurements: recompute, compare, fit the host-side factors.

``bench/calc_vs_measured.py`` times real training steps on a GPU and writes
them to JSON. This module (torch-free, no GPU) reads such a record, or the
compact copy of one kept as a test fixture, recomputes the calculator's
predictions for every case with the current model and device profiles, and
fits the factors eager training on a GPU is most sensitive to:

1. the host's cost per op (``launch_overhead_us``) and per backward kernel
   (``backward_launch``), from the bf16 cases of the fitted sizes: eager bf16
   steps of these models leave the GPU waiting on the host most of the time,
   so their step time is nearly all host time;
2. then the TF32 matmul efficiency, from the fp32 cases of the same sizes.

Every other factor keeps its profile value. The cases not fitted on are the
held-out check (:func:`compare` marks which is which).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lm.calc.devices import DeviceProfile, Figure, get_device
from lm.calc.estimate import Estimate, estimate, resolve_settings, time_estimate
from lm.calc.settings import Efficiency
from lm.config.schema import ModelConfig
from lm.errors import DataError

TIME_TARGET, MEMORY_TARGET = 0.25, 0.10  # the targets: step time within 25%, peak memory within 10%


@dataclass(frozen=True)
class Recorded:
    """One measured case: what was run and what it took (median seconds, peak bytes)."""

    label: str
    model: ModelConfig
    batch_size: int
    context_length: int
    dtype: str
    compile: bool
    tf32: bool
    """fp32 matmuls ran as TF32 (the trainer's setting), not in full fp32."""
    forward_s: float
    forward_backward_s: float
    step_s: float
    peak_memory: float | None = None
    spread: dict = field(default_factory=dict)
    """(max - min) / median of the timed repeats, per mode."""
    host: dict = field(default_factory=dict)
    """Host-side seconds per mode (time until the call returned, before synchronising), when recorded."""
    engine: str = "unfused"
    """The trainer's engine the case ran (lm.calc.settings.Settings.engine); records from before the
    field existed ran the unfused one."""

    @property
    def key(self) -> str:
        return f"{self.label} {self.dtype}{' compiled' if self.compile else ''} b{self.batch_size}"

    def to_dict(self) -> dict:
        d = {"label": self.label, "model": dataclasses.asdict(self.model), "batch_size": self.batch_size,
             "context_length": self.context_length, "dtype": self.dtype, "compile": self.compile, "tf32": self.tf32,
             "forward_s": self.forward_s, "forward_backward_s": self.forward_backward_s, "step_s": self.step_s,
             "peak_memory": self.peak_memory, "spread": self.spread, "engine": self.engine}
        if self.host:
            d["host"] = self.host
        return d


def record_from_bench_row(row: dict) -> Recorded | None:
    """A row of bench/calc_vs_measured.py's JSON (None for a case that failed, e.g. out of memory)."""
    if row.get("error") or "measured" not in row:
        return None
    case, m = row["result"]["case"], row["measured"]
    return Recorded(label=row["size"], model=ModelConfig(**case["model"]), batch_size=int(case["batch_size"]),
                    context_length=int(case["context_length"]), dtype=case["dtype"], compile=bool(case["compile"]),
                    tf32=bool(row.get("tf32", True)),  # runs before the field existed all used TF32
                    forward_s=m["forward_s"], forward_backward_s=m["forward_backward_s"], step_s=m["step_s"],
                    peak_memory=m.get("peak_memory"), spread=m.get("spread", {}), host=row.get("host", {}),
                    engine=row.get("engine", "unfused"))


def _record_from_compact(item: dict) -> Recorded:
    return Recorded(label=item["label"], model=ModelConfig(**item["model"]), batch_size=int(item["batch_size"]),
                    context_length=int(item["context_length"]), dtype=item["dtype"], compile=bool(item["compile"]),
                    tf32=bool(item.get("tf32", True)), forward_s=item["forward_s"],
                    forward_backward_s=item["forward_backward_s"], step_s=item["step_s"],
                    peak_memory=item.get("peak_memory"), spread=item.get("spread", {}), host=item.get("host", {}),
                    engine=item.get("engine", "unfused"))


def load_records(path: str | os.PathLike) -> tuple[dict, list[Recorded]]:
    """(metadata, cases) from bench/calc_vs_measured.py's JSON or its compact form (:func:`compact`).

    Metadata: the environment (GPU, torch, CUDA, date) and the peaks measured in the same run.
    Raises DataError naming the file when it is missing or not such a record.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no such file (expected the JSON bench/calc_vs_measured.py writes)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: cannot read it as JSON ({e})") from None
    try:
        if "rows" in data:  # the full record the bench script writes
            records = [r for r in map(record_from_bench_row, data["rows"]) if r is not None]
        else:
            records = [_record_from_compact(item) for item in data["cases"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{p}: not a calc_vs_measured record: missing or bad field {e}; expected the JSON "
                        f"bench/calc_vs_measured.py writes (with 'rows') or its compact form (with 'cases')") from None
    meta = {k: data.get(k) for k in ("environment", "measured_peaks", "note") if data.get(k) is not None}
    return meta, records


def compact(meta: dict, records: list[Recorded]) -> dict:
    """The numbers a comparison needs, small enough to commit as a test fixture."""
    return {**meta, "cases": [r.to_dict() for r in records]}


def settings_for(rec: Recorded, device: DeviceProfile):
    """(model, Settings) of a recorded case, as the calculator resolves them."""
    return resolve_settings(rec.model, device, batch_size=rec.batch_size, context_length=rec.context_length,
                            dtype=rec.dtype, compile=rec.compile, grad_clip=True, engine=rec.engine,
                            activation_checkpointing="none")  # the recorded cases kept every tensor


def device_for(rec: Recorded, device: DeviceProfile) -> DeviceProfile:
    """The profile as the case ran: without TF32, fp32 matmuls are rated at the plain fp32 peak."""
    if not rec.tf32 and "tf32" in device.peak_tflops:
        return dataclasses.replace(device, peak_tflops={k: v for k, v in device.peak_tflops.items() if k != "tf32"})
    return device


def predict(rec: Recorded, device: DeviceProfile | str, efficiency: Efficiency | None = None) -> Estimate:
    """The calculator's full estimate for a recorded case."""
    dev = device_for(rec, get_device(device))
    return estimate(rec.model, dev, batch_size=rec.batch_size, context_length=rec.context_length, dtype=rec.dtype,
                    compile=rec.compile, grad_clip=True, efficiency=efficiency, engine=rec.engine)


@dataclass(frozen=True)
class Comparison:
    """Measured / predicted for one recorded case."""

    record: Recorded
    predicted: dict
    """forward_s, forward_backward_s, optimizer_s, step_s, peak_memory."""
    fitted: bool
    """Whether this case was used to fit the factors (False: a held-out check)."""

    def ratio(self, quantity: str) -> float | None:
        """measured / predicted for 'forward_s', 'forward_backward_s', 'step_s', 'optimizer_s', 'peak_memory'."""
        r = self.record
        measured = {"forward_s": r.forward_s, "forward_backward_s": r.forward_backward_s, "step_s": r.step_s,
                    "optimizer_s": r.step_s - r.forward_backward_s, "peak_memory": r.peak_memory}[quantity]
        p = self.predicted[quantity]
        return measured / p if measured is not None and p else None

    @property
    def time_ok(self) -> bool:
        return abs(self.ratio("step_s") - 1) <= TIME_TARGET

    @property
    def memory_ok(self) -> bool | None:
        r = self.ratio("peak_memory")
        return None if r is None else abs(r - 1) <= MEMORY_TARGET


def compare(records: list[Recorded], device: DeviceProfile | str, efficiency: Efficiency | None = None,
            fitted_on: tuple[str, ...] = ()) -> list[Comparison]:
    """Recompute every case; ``fitted_on``: the labels (sizes) whose cases the factors were fitted on."""
    out = []
    for rec in records:
        e = predict(rec, device, efficiency)
        t = e.time
        out.append(Comparison(rec, {"forward_s": t.forward_s, "forward_backward_s": t.forward_s + t.backward_s
                                    + t.recompute_s, "optimizer_s": t.optimizer_s, "step_s": t.step_s,
                                    "peak_memory": e.memory.peak}, rec.label in fitted_on))
    return out


def _time(rec: Recorded, device: DeviceProfile, eff: Efficiency):
    dev = device_for(rec, device)
    model, s = settings_for(rec, dev)
    return time_estimate(model, dev, s, eff.resolve(dev, s.dtype))


def _misfit(records: list[Recorded], device: DeviceProfile, eff: Efficiency) -> float:
    """Sum of squared log ratios of the forward and step times: symmetric in over- and under-prediction."""
    total = 0.0
    for rec in records:
        t = _time(rec, device, eff)
        total += math.log(rec.forward_s / t.forward_s) ** 2 + math.log(rec.step_s / t.step_s) ** 2
    return total


def _grid_search(objective, ranges: dict[str, tuple[float, float]], steps: int = 12, rounds: int = 3) -> dict:
    """Minimise ``objective(**values)`` over a box: a grid, then finer grids around the best point."""
    lo = {k: r[0] for k, r in ranges.items()}
    hi = {k: r[1] for k, r in ranges.items()}
    best_val, best = math.inf, {}
    for _ in range(rounds):
        names = list(ranges)
        axes = [[lo[n] + (hi[n] - lo[n]) * i / steps for i in range(steps + 1)] for n in names]
        for point in itertools.product(*axes):
            values = dict(zip(names, point))
            v = objective(**values)
            if v < best_val:
                best_val, best = v, values
        for n in names:  # zoom in: two grid cells either side of the best point, inside the original box
            cell = (hi[n] - lo[n]) / steps
            lo[n], hi[n] = max(ranges[n][0], best[n] - 2 * cell), min(ranges[n][1], best[n] + 2 * cell)
    return {**best, "misfit": best_val}


def fit_factors(records: list[Recorded], device: DeviceProfile | str, fit_on: tuple[str, ...]) -> dict:
    """Fit the host costs on the bf16 cases of ``fit_on`` (labels), then the TF32 efficiency on their fp32 cases.

    Returns {"launch_overhead_us", "backward_launch", "tf32_matmul_efficiency" (when fp32 cases exist),
    "misfit_host", "misfit_tf32", "fitted_cases"}; each misfit is the sum of squared log ratios of
    forward and step time over the cases fitted.
    """
    dev = get_device(device)
    chosen = [r for r in records if r.label in fit_on and not r.compile]
    bf16 = [r for r in chosen if r.dtype == "bf16"]
    fp32 = [r for r in chosen if r.dtype == "fp32" and r.tf32]
    if not bf16:
        raise DataError(f"no eager bf16 cases of {', '.join(fit_on)} to fit the host costs on "
                        f"(recorded: {', '.join(sorted({r.label for r in records}))})")
    host = _grid_search(lambda launch_overhead_us, backward_launch: _misfit(
        bf16, dev, Efficiency(launch_overhead_us=launch_overhead_us, backward_launch=backward_launch)),
        {"launch_overhead_us": (2.0, 80.0), "backward_launch": (0.1, 4.0)})
    out = {"launch_overhead_us": round(host["launch_overhead_us"], 1),
           "backward_launch": round(host["backward_launch"], 2), "misfit_host": host["misfit"],
           "fitted_cases": [r.key for r in bf16 + fp32]}
    if fp32:
        tf32 = _grid_search(lambda matmul: _misfit(fp32, dev, Efficiency(
            launch_overhead_us=out["launch_overhead_us"], backward_launch=out["backward_launch"], matmul=matmul)),
            {"matmul": (0.05, 1.0)}, steps=19)
        out["tf32_matmul_efficiency"] = round(tf32["matmul"], 3)
        out["misfit_tf32"] = tf32["misfit"]
    return out


def with_fitted_profile(device: DeviceProfile | str, fit: dict) -> DeviceProfile:
    """``device`` with the fitted figures in place, marked as measured (calibrated)."""
    dev = get_device(device)
    note = "calibrated by lm.calc.calibration.fit_factors"
    changes = {k: Figure(measured=fit[k], note=note) for k in ("launch_overhead_us", "backward_launch",
                                                              "tf32_matmul_efficiency") if k in fit}
    return dataclasses.replace(dev, **changes)
