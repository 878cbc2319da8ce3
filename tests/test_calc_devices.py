"""Device profiles: lookup by key, alias and torch device name; user files; validation; no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lm.calc as C
from lm.calc.devices import Figure
from lm.errors import ConfigError, LabError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_user_devices(tmp_path, monkeypatch):
    """The developer's own ~/.config/lab/devices.toml must not leak into the tests."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _user_file(tmp_path, text: str) -> Path:
    p = tmp_path / "config" / "lab" / "devices.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_peak_flops_prefers_the_measured_h100_figure():
    assert C.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == (805e12, False)
    assert C.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == (805e12, False)
    h100 = C.get_device("h100")
    assert h100.peak_tflops["bf16"].datasheet == pytest.approx(989.4)
    assert h100.peak_tflops["bf16"].source == "measured"


def test_peak_flops_matches_the_longest_name_and_rates_fp32_at_tf32_on_cuda():
    assert C.peak_flops("NVIDIA H100 PCIe", "bf16") == (756e12, False)
    assert C.peak_flops("NVIDIA GeForce RTX 4090", "bf16") == (pytest.approx(165.2e12), False)
    assert C.peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == (156e12, False)  # TF32, as lab trains fp32
    assert C.peak_flops("NVIDIA H200", "bf16") == (780e12, False)  # measured (datasheet 989.4)


def test_unknown_or_estimated_devices_are_flagged():
    peak, estimated = C.peak_flops("NVIDIA GeForce GTX 1080", "bf16")
    assert peak > 0 and estimated
    assert C.peak_flops("cpu", "fp32")[1] is True
    assert C.peak_flops("mps", "fp32") == (3.5e12, True)
    assert C.peak_flops("Some NPU", "fp32")[1] is True


def test_unknown_device_name_lists_the_known_ones():
    with pytest.raises(LabError) as e:
        C.get_device("rtx9090")
    msg = str(e.value)
    for key in ("rtx4090", "m4", "h100", "a100", "h200", "cpu"):
        assert key in msg
    assert "devices.toml" in msg


def test_profiles_ship_the_figures_the_task_names():
    m4, r = C.get_device("m4"), C.get_device("rtx4090")
    assert m4.peak_tflops["fp32"].value == 3.5 and m4.bandwidth_gbs.value == 120 and m4.memory_gib.value == 24
    assert not m4.bf16_autocast and not m4.compile
    assert r.peak_tflops["fp32"].datasheet == 82.6 and r.peak_tflops["bf16"].datasheet == pytest.approx(165.2)
    assert r.bandwidth_gbs.value == 1008 and r.memory_gib.value == 24
    for d in C.list_devices():
        for fig in [d.memory_gib, d.bandwidth_gbs, *d.peak_tflops.values()]:
            assert fig.source in ("measured", "datasheet", "estimate")
    assert C.get_device("4090").key == "rtx4090" and C.get_device("RTX4090").key == "rtx4090"


def test_figure_prefers_measured_then_datasheet_then_estimate():
    assert Figure(estimate=1.0, datasheet=2.0).value == 2.0
    assert Figure(estimate=1.0, datasheet=2.0, measured=3.0).source == "measured"
    assert Figure(estimate=1.0).estimated


def test_user_file_adds_and_overrides_devices(tmp_path):
    _user_file(tmp_path, """
        [mybox]
        title = "My RTX 3090"
        kind = "cuda"
        match = ["RTX 3090"]
        memory_gib = { datasheet = 24 }
        bandwidth_gbs = { datasheet = 936 }
        [mybox.peak_tflops]
        fp32 = { datasheet = 35.6 }
        bf16 = { datasheet = 71, measured = 60 }

        [rtx4090]
        memory_gib = { measured = 23.5 }

        [laptop4090]
        based_on = "rtx4090"
        memory_gib = 16
    """)
    assert C.peak_flops("NVIDIA GeForce RTX 3090", "bf16") == (60e12, False)
    r = C.get_device("rtx4090")
    assert r.memory_gib.value == 23.5 and r.peak_tflops["bf16"].datasheet == pytest.approx(165.2)
    lap = C.get_device("laptop4090")
    assert lap.memory_gib.source == "estimate" and lap.bandwidth_gbs.value == 1008
    assert "mybox" in {d.key for d in C.list_devices()}


def test_devices_option_file_and_bad_entries_name_file_and_key(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text(textwrap.dedent("""
        [fast]
        kind = "tpu"
        memory_gib = { datasheet = -1 }
        bandwith_gbs = 10
        [fast.peak_tflops]
        fp8 = 1000
    """))
    with pytest.raises(ConfigError) as e:
        C.get_device("fast", devices_file=bad)
    msg = str(e.value)
    assert str(bad) in msg
    assert "kind must be one of cuda, mps, cpu" in msg
    assert "memory_gib.datasheet must be a positive number" in msg
    assert "bandwith_gbs" in msg  # the typo is named
    assert "fp8 is not a dtype" in msg
    assert "needs bandwidth_gbs" in msg


def test_broken_toml_and_missing_file_are_config_errors(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[a\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        C.load_devices(p)
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_devices(tmp_path / "nope.toml")


def test_calculator_imports_without_torch():
    code = ("import sys, lm.calc, lm.calc.estimate; from lm.config.schema import ModelConfig; "
            "lm.calc.estimate(ModelConfig.from_name('small'), 'rtx4090', batch_size=4); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
