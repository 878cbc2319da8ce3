"""The M4's three memory sizes, and a CPU profile scaled to the machine it runs on."""

from __future__ import annotations

import pytest

from lm.calc import devices
from lm.calc.devices import get_device


@pytest.mark.parametrize("name, gib", [("m4", 24), ("m4-24gb", 24), ("m4-16gb", 16), ("m4-32gb", 32)])
def test_m4_variants(name, gib):
    d = get_device(name)
    assert d.memory_bytes == gib * 2**30 and f"{gib} GB" in d.title
    assert d.usable_bytes < d.memory_bytes  # macOS keeps about a third for itself
    assert d.peak("fp32").value == get_device("m4").peak("fp32").value


def test_an_apple_m4_is_taken_for_the_24_gb_model():
    profile, guessed = devices.device_for_torch_name("Apple M4")
    assert profile.key == "m4" and not guessed


@pytest.mark.parametrize("cores", [2, 8, 32])
def test_cpu_peak_scales_with_the_real_core_count(monkeypatch, cores):
    monkeypatch.setattr(devices, "host_cpu_cores", lambda: cores)
    cpu = get_device("cpu")
    assert cpu.peak("fp32").value == pytest.approx(0.5 * cores / 8)
    assert f"{cores} cores" in cpu.title and cpu.peak("fp32").estimated
