"""Device profiles: peak FLOP/s per dtype, memory, bandwidth, overheads, as data.

The built-in profiles live in ``devices.toml`` next to this module. Users add
or override entries in ``~/.config/lab/devices.toml`` (``$XDG_CONFIG_HOME`` is
honoured) or in a file passed with ``--devices``; an entry may say
``based_on = "rtx4090"`` to change only a few figures of a known device.
Every number is a :class:`Figure` that remembers whether it was measured,
taken from a datasheet or estimated, so reports can say how far to trust it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lm.errors import ConfigError, LabError

BUILTIN_FILE = Path(__file__).with_name("devices.toml")
SOURCES = ("measured", "datasheet", "estimate")  # preference order
KINDS = ("cuda", "mps", "cpu")
PEAK_DTYPES = ("fp32", "tf32", "bf16")
FALLBACK_CUDA = "generic-gpu"
FALLBACK_OTHER = "cpu"
GIB = 2**30  # memory sizes are binary (an "80 GB" H100 has 80 GiB); bandwidths are decimal GB/s

# The time model's factors (host costs and kernel efficiencies) live with the device they were
# calibrated on; lm.calc.settings.Efficiency overrides any of them for one estimate.
TIME_FIGURES = ("launch_overhead_us", "backward_launch", "einx_call_us", "cpp_launch_us", "matmul_efficiency",
                "tf32_matmul_efficiency", "attention_efficiency", "bandwidth_efficiency")
INTERCONNECT_FIGURES = ("nvlink_gbs", "pcie_gbs", "collective_efficiency")
_FIGURE_KEYS = ("memory_gib", "usable_memory_gib", "overhead_gib", "fragmentation", "bandwidth_gbs", *TIME_FIGURES,
                *INTERCONNECT_FIGURES)
_EFFICIENCY_FIGURES = ("matmul_efficiency", "tf32_matmul_efficiency", "attention_efficiency",
                       "bandwidth_efficiency", "collective_efficiency")  # in (0, 1]
_REQUIRED_FIGURES = ("memory_gib", "bandwidth_gbs")
_FIGURE_DEFAULTS = {"overhead_gib": 0.5, "fragmentation": 0.05, "launch_overhead_us": 10.0, "backward_launch": 1.0,
                    "einx_call_us": 60.0, "cpp_launch_us": 5.0, "matmul_efficiency": 0.75, "attention_efficiency": 0.55,
                    "bandwidth_efficiency": 0.8}
_BOOL_KEYS = {"bf16_autocast": False, "compile": False, "flash_attention": False}
_ENTRY_KEYS = {"title", "kind", "match", "aliases", "based_on", "peak_tflops", *_FIGURE_KEYS, *_BOOL_KEYS}


@dataclass(frozen=True)
class Figure:
    """One number with its provenance: measured, datasheet and/or estimate values."""

    measured: float | None = None
    datasheet: float | None = None
    estimate: float | None = None
    note: str = ""

    @property
    def value(self) -> float:
        """The most trustworthy value: measured, else datasheet, else estimate."""
        for s in SOURCES:
            v = getattr(self, s)
            if v is not None:
                return v
        raise ValueError("a Figure needs at least one value")

    @property
    def source(self) -> str:
        """Which of measured/datasheet/estimate :attr:`value` comes from."""
        return next(s for s in SOURCES if getattr(self, s) is not None)

    @property
    def estimated(self) -> bool:
        return self.source == "estimate"

    def to_dict(self) -> dict:
        d = {s: getattr(self, s) for s in SOURCES if getattr(self, s) is not None}
        d.update(value=self.value, source=self.source)
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class DeviceProfile:
    """What the calculator needs to know about one accelerator (or CPU)."""

    key: str
    title: str
    kind: str
    memory_gib: Figure
    bandwidth_gbs: Figure
    peak_tflops: dict[str, Figure]
    usable_memory_gib: Figure | None = None
    overhead_gib: Figure = Figure(estimate=0.5)
    fragmentation: Figure = Figure(estimate=0.05)
    launch_overhead_us: Figure = Figure(estimate=_FIGURE_DEFAULTS["launch_overhead_us"])
    """Host time per eager forward op (Python, dispatcher, autograd recording, launch), microseconds."""
    backward_launch: Figure = Figure(estimate=_FIGURE_DEFAULTS["backward_launch"])
    """Host time per backward kernel (autograd's engine) relative to ``launch_overhead_us``."""
    einx_call_us: Figure = Figure(estimate=_FIGURE_DEFAULTS["einx_call_us"])
    """Host time of one einx call on top of the ops it dispatches (expression handling in Python)."""
    cpp_launch_us: Figure = Figure(estimate=_FIGURE_DEFAULTS["cpp_launch_us"])
    """Host time of a kernel issued from C++ with no Python of its own (autocast's casts, foreach chunks)."""
    matmul_efficiency: Figure = Figure(estimate=_FIGURE_DEFAULTS["matmul_efficiency"])
    """Fraction of the peak matmul FLOP/s (measured when known) the model's GEMMs reach."""
    tf32_matmul_efficiency: Figure | None = None
    """The same for fp32 training's TF32 GEMMs, where it differs (None: ``matmul_efficiency``)."""
    attention_efficiency: Figure = Figure(estimate=_FIGURE_DEFAULTS["attention_efficiency"])
    """Fraction of the peak a fused attention kernel reaches."""
    bandwidth_efficiency: Figure = Figure(estimate=_FIGURE_DEFAULTS["bandwidth_efficiency"])
    """Fraction of ``bandwidth_gbs`` that elementwise and optimizer kernels reach."""
    nvlink_gbs: Figure | None = None
    """NVLink bandwidth per GPU and direction, GB/s (None: no NVLink; collectives go over PCIe)."""
    pcie_gbs: Figure | None = None
    """PCIe bandwidth per GPU and direction, GB/s (x16 Gen4 ~32, Gen5 ~64)."""
    collective_efficiency: Figure | None = None
    """Fraction of the link bandwidth NCCL's ring collectives reach as bus bandwidth (default 0.8)."""
    bf16_autocast: bool = False
    compile: bool = False
    flash_attention: bool = False
    match: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    origin: str = "built-in"

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib.value * GIB

    @property
    def usable_bytes(self) -> float:
        """Bytes one process may allocate, before framework overhead."""
        return (self.usable_memory_gib or self.memory_gib).value * GIB

    @property
    def overhead_bytes(self) -> float:
        """Memory the framework uses outside the allocator (CUDA context, library handles)."""
        return self.overhead_gib.value * GIB

    @property
    def bandwidth(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.bandwidth_gbs.value * 1e9

    def matmul_dtype(self, dtype: str) -> str:
        """The peak table entry a training dtype's matmuls run at.

        fp32 training on CUDA runs its matmuls in TF32 (lab's trainer turns it
        on), so it is rated at the tf32 peak where the profile has one.
        """
        if dtype == "fp32" and self.kind == "cuda" and "tf32" in self.peak_tflops:
            return "tf32"
        if dtype == "tf32" and "tf32" not in self.peak_tflops:
            return "fp32"
        if dtype == "bf16" and "bf16" not in self.peak_tflops:
            return "fp32"
        return dtype

    def peak(self, dtype: str) -> Figure:
        """Peak matmul FLOP/s figure (in TFLOP/s) for a training dtype."""
        return self.peak_tflops[self.matmul_dtype(dtype)]

    def peak_flops(self, dtype: str) -> float:
        """Peak matmul FLOP/s for a training dtype (measured if known)."""
        return self.peak(dtype).value * 1e12

    def to_dict(self) -> dict:
        d = {"key": self.key, "title": self.title, "kind": self.kind, "origin": self.origin}
        for k in _FIGURE_KEYS:
            fig = getattr(self, k)
            if fig is not None:
                d[k] = fig.to_dict()
        d["peak_tflops"] = {k: f.to_dict() for k, f in self.peak_tflops.items()}
        d.update({k: getattr(self, k) for k in _BOOL_KEYS})
        d["match"], d["aliases"] = list(self.match), list(self.aliases)
        return d


# ----------------------------------------------------------------------------- loading

def user_devices_file() -> Path:
    """~/.config/lab/devices.toml (or $XDG_CONFIG_HOME/lab/devices.toml)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "lab" / "devices.toml"


def load_devices(extra_file: str | os.PathLike | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles, then the user's file, then ``extra_file``; later entries win.

    Raises ConfigError naming the file, entry and key of every problem.
    """
    devices = _fit_cpu_to_host(_read_file(BUILTIN_FILE, {}, "built-in"))
    user = user_devices_file()
    if user.is_file():
        devices = _read_file(user, devices, str(user))
    if extra_file is not None:
        path = Path(extra_file).expanduser()
        if not path.is_file():
            raise ConfigError([f"devices file {extra_file} does not exist"], source=str(extra_file))
        devices = _read_file(path, devices, str(extra_file))
    return devices


PROFILE_CPU_CORES = 8
"""The core count the built-in ``cpu`` profile's peak estimates are written for."""


def host_cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _host_memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _fit_cpu_to_host(devices: dict[str, DeviceProfile]) -> dict[str, DeviceProfile]:
    """The built-in ``cpu`` profile scaled to this machine: its peak estimates per core times the real core
    count, and the real memory (a user's devices.toml, read after this, can still set measured figures)."""
    cpu = devices.get("cpu")
    if cpu is None:
        return devices
    cores = host_cpu_cores()
    scale = cores / PROFILE_CPU_CORES
    peaks = {dt: dataclasses.replace(f, estimate=f.estimate * scale,
                                     note=f"{f.note}; scaled to this machine's {cores} cores".lstrip("; "))
             if f.estimated else f for dt, f in cpu.peak_tflops.items()}
    changes: dict = {"peak_tflops": peaks}
    mem = _host_memory_gib()
    if mem is not None:
        changes["memory_gib"] = Figure(estimate=round(mem, 1), note="this machine's memory")
        changes["usable_memory_gib"] = Figure(estimate=round(mem * 0.75, 1),
                                              note="three quarters of it: the OS and other programs need the rest")
    title = f"CPU ({cores} cores{f', {mem:.0f} GiB' if mem is not None else ''})"
    return devices | {"cpu": dataclasses.replace(cpu, title=title, **changes)}


def _read_file(path: Path, known: dict[str, DeviceProfile], label: str) -> dict[str, DeviceProfile]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], source=str(path)) from None
    except OSError as e:
        raise ConfigError([f"cannot read it: {e.strerror}"], source=str(path)) from None
    out = dict(known)
    problems: list[str] = []
    for key, entry in data.items():
        if not isinstance(entry, dict):
            problems.append(f"{key} must be a table ([{key}]) describing a device, got {_show(entry)}")
            continue
        try:
            out[key] = _parse_entry(key, entry, out, label)
        except _EntryProblems as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    return out


class _EntryProblems(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


def _show(v) -> str:
    return repr(v) if not isinstance(v, dict) else "a table"


def _parse_figure(where: str, raw, problems: list[str]) -> Figure | None:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, dict)):
        problems.append(f"{where} must be a number or a table like {{ datasheet = 80 }}, got {_show(raw)}")
        return None
    if not isinstance(raw, dict):
        raw = {"estimate": raw}
    unknown = sorted(set(raw) - {*SOURCES, "note"})
    if unknown:
        problems.append(f"{where} has unknown key(s) {', '.join(unknown)}; "
                        f"allowed: measured, datasheet, estimate, note")
    values = {}
    for s in SOURCES:
        if s in raw:
            v = raw[s]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                problems.append(f"{where}.{s} must be a positive number, got {_show(v)}")
            else:
                values[s] = float(v)
    if not values and not unknown and not any(s in raw for s in SOURCES):
        problems.append(f"{where} needs at least one of measured, datasheet or estimate")
    note = raw.get("note", "")
    if not isinstance(note, str):
        problems.append(f"{where}.note must be a string, got {_show(note)}")
        note = ""
    return Figure(note=note, **values) if values else None


def _parse_entry(key: str, entry: dict, known: dict[str, DeviceProfile], label: str) -> DeviceProfile:
    problems: list[str] = []
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        problems.append(f"[{key}] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    base: DeviceProfile | None = None
    if "based_on" in entry:
        b = entry["based_on"]
        if not isinstance(b, str) or b not in known:
            problems.append(f"[{key}] based_on must name a known device ({', '.join(sorted(known))}), got {_show(b)}")
        else:
            base = known[b]
    elif key in known:
        base = known[key]  # overriding a known key changes only the figures given
    fields: dict = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)} if base else {}
    fields["key"], fields["origin"] = key, label
    if not base:
        fields.setdefault("title", key)
    for name in ("title",):
        if name in entry:
            if not isinstance(entry[name], str):
                problems.append(f"[{key}] {name} must be a string, got {_show(entry[name])}")
            else:
                fields[name] = entry[name]
    if "kind" in entry:
        if entry["kind"] not in KINDS:
            problems.append(f"[{key}] kind must be one of {', '.join(KINDS)}, got {_show(entry['kind'])}")
        else:
            fields["kind"] = entry["kind"]
    elif not base:
        problems.append(f"[{key}] needs kind = one of {', '.join(KINDS)}")
    for name in ("match", "aliases"):
        if name in entry:
            v = entry[name]
            if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
                problems.append(f"[{key}] {name} must be a list of non-empty strings, got {_show(v)}")
            else:
                fields[name] = tuple(v)
    for name, default in _BOOL_KEYS.items():
        if name in entry:
            if not isinstance(entry[name], bool):
                problems.append(f"[{key}] {name} must be true or false, got {_show(entry[name])}")
            else:
                fields[name] = entry[name]
        elif not base:
            fields[name] = default
    for name in _FIGURE_KEYS:
        if name in entry:
            fig = _parse_figure(f"[{key}] {name}", entry[name], problems)
            if fig is not None and name in _EFFICIENCY_FIGURES and fig.value > 1:
                problems.append(f"[{key}] {name} is a fraction of the peak and must be at most 1, got {fig.value:g}")
            elif fig is not None:
                fields[name] = fig
        elif not base and name in _REQUIRED_FIGURES:
            problems.append(f"[{key}] needs {name} (for example {name} = {{ datasheet = 24 }})")
        elif not base and name in _FIGURE_DEFAULTS:
            fields[name] = Figure(estimate=_FIGURE_DEFAULTS[name])
    peaks = dict(base.peak_tflops) if base else {}
    if "peak_tflops" in entry:
        raw = entry["peak_tflops"]
        if not isinstance(raw, dict):
            problems.append(f"[{key}] peak_tflops must be a table ([{key}.peak_tflops]), got {_show(raw)}")
        else:
            for dt, v in raw.items():
                if dt not in PEAK_DTYPES:
                    problems.append(f"[{key}.peak_tflops] {dt} is not a dtype; use {', '.join(PEAK_DTYPES)}")
                    continue
                fig = _parse_figure(f"[{key}.peak_tflops] {dt}", v, problems)
                if fig is not None:
                    peaks[dt] = fig
    if "fp32" not in peaks and not any(p.startswith(f"[{key}.peak_tflops] fp32") for p in problems):
        problems.append(f"[{key}] needs [{key}.peak_tflops] with at least fp32 = {{ datasheet = ... }}")
    fields["peak_tflops"] = peaks
    if problems:
        raise _EntryProblems(problems)
    return DeviceProfile(**fields)


# ----------------------------------------------------------------------------- lookup

def _norm(s: str) -> str:
    return s.strip().lower()


def get_device(name: str | DeviceProfile, devices_file: str | os.PathLike | None = None) -> DeviceProfile:
    """A profile by key or alias (``rtx4090``, ``m4``, ``h100`` ...), or by a torch device name.

    Raises LabError listing the known devices when nothing matches.
    """
    if isinstance(name, DeviceProfile):
        return name
    devices = load_devices(devices_file)
    found = _lookup(name, devices)
    if found is None:
        known = ", ".join(sorted(k for k in devices if k != FALLBACK_CUDA))
        raise LabError(f"unknown device {name!r}; known devices: {known} "
                       f"(add your own in {user_devices_file()} or pass --devices FILE)")
    return found


def _lookup(name: str, devices: dict[str, DeviceProfile]) -> DeviceProfile | None:
    n = _norm(name)
    for key, dev in devices.items():
        if n == _norm(key) or n in (_norm(a) for a in dev.aliases):
            return dev
    return match_device_name(name, devices)


def match_device_name(device_name: str, devices: dict[str, DeviceProfile]) -> DeviceProfile | None:
    """The profile whose longest ``match`` substring occurs in ``device_name`` (case-insensitive)."""
    n = _norm(device_name)
    best, best_len = None, 0
    for dev in devices.values():
        for pattern in dev.match:
            p = _norm(pattern)
            if p and p in n and len(p) > best_len:
                best, best_len = dev, len(p)
    return best


def device_for_torch_name(device_name: str, devices_file: str | os.PathLike | None = None
                          ) -> tuple[DeviceProfile, bool]:
    """(profile, is a fallback guess) for a torch device name like "NVIDIA H100 80GB HBM3", "cpu", "mps"."""
    devices = load_devices(devices_file)
    found = _lookup(device_name, devices)
    if found is not None:
        return found, False
    n = _norm(device_name)
    generic = FALLBACK_CUDA if any(w in n for w in ("nvidia", "cuda", "geforce", "tesla", "quadro")) else FALLBACK_OTHER
    return devices[generic], True


def list_devices(devices_file: str | os.PathLike | None = None) -> list[DeviceProfile]:
    """Every known profile (built-in and the user's), the generic fallback last."""
    devs = load_devices(devices_file)
    return sorted(devs.values(), key=lambda d: (d.key == FALLBACK_CUDA, d.origin != "built-in", d.key))
