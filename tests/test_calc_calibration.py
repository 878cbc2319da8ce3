"""The time model against the recorded H100 measurements, the calibration fit, and the host/device queue."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lm.calc as C
from lm.calc import calibration as cal
from lm.calc.devices import get_device
from lm.config.schema import ModelConfig
from lm.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "calc_h100_2026-11-22.json"
FITTED_ON = ("small", "medium")  # what lm/calc/devices.toml's [h100] calibration says it was fitted on


@pytest.fixture(autouse=True)
def _no_user_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def h100_run():
    return cal.load_records(FIXTURE)


def test_fixture_is_the_h100_run_of_the_cs336_presets(h100_run):
    meta, records = h100_run
    assert meta["environment"]["device"] == "NVIDIA H100 80GB HBM3"
    assert {(r.label, r.dtype) for r in records} == {(s, d) for s in ("small", "medium", "large", "xl", "2.7B")
                                                     for d in ("bf16", "fp32")}
    assert all(r.context_length == 512 and not r.compile and r.tf32 for r in records)
    assert all(r.model == ModelConfig.from_name(r.label) for r in records)


def test_calibrated_h100_predicts_the_held_out_step_times_within_25_percent(h100_run):
    _, records = h100_run
    comps = cal.compare(records, "h100", fitted_on=FITTED_ON)
    held_out = [c for c in comps if not c.fitted]
    assert {c.record.label for c in held_out} == {"large", "xl", "2.7B"}
    for c in held_out:
        assert abs(c.ratio("step_s") - 1) <= 0.25, (c.record.key, c.ratio("step_s"))
    for c in comps:  # the memory model was never fitted: every case is a check
        assert abs(c.ratio("peak_memory") - 1) <= 0.10, (c.record.key, c.ratio("peak_memory"))


def test_the_issue_targets_bf16_cases_all_within_25_percent(h100_run):
    _, records = h100_run
    for c in cal.compare([r for r in records if r.dtype == "bf16"], "h100"):
        assert abs(c.ratio("step_s") - 1) <= 0.25, (c.record.key, c.ratio("step_s"))


def test_refitting_on_small_and_medium_gives_the_profile_figures(h100_run):
    _, records = h100_run
    fit = cal.fit_factors(records, "h100", FITTED_ON)
    h100 = get_device("h100")
    assert fit["launch_overhead_us"] == pytest.approx(h100.launch_overhead_us.measured, rel=0.03)
    assert fit["backward_launch"] == pytest.approx(h100.backward_launch.measured, rel=0.05)
    assert fit["tf32_matmul_efficiency"] == pytest.approx(h100.tf32_matmul_efficiency.measured, rel=0.05)
    assert sorted(fit["fitted_cases"]) == sorted(f"{s} {d} b8" for s in FITTED_ON for d in ("bf16", "fp32"))


def test_uncalibrated_model_was_far_too_optimistic(h100_run):
    """With the factors the profile had before calibration (5 us per launch, an einx call as six launches,
    backward launches at half price) every case is off by more than 25%: the fitted host costs are what
    close the gap, not the other changes to the model."""
    _, records = h100_run
    old = C.Efficiency(launch_overhead_us=5, backward_launch=0.5, einx_call_us=30, matmul=0.75)
    ratios = [c.ratio("step_s") for c in cal.compare(records, "h100", old)]
    assert min(ratios) > 1.25


def test_bench_script_recomputes_from_the_fixture_without_a_gpu(tmp_path):
    out = tmp_path / "copy.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "calc_vs_measured.py"), "--from-json", str(FIXTURE),
                           "--write-fixture", str(out)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "held out: step time within 25% for 6/6" in proc.stdout
    assert "memory within 10%: 10/10" in proc.stdout
    assert cal.load_records(out)[1] == cal.load_records(FIXTURE)[1]  # the compact form round-trips


def test_bad_record_files_are_data_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        cal.load_records(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": [{"label": "small"}]}))
    with pytest.raises(DataError, match="bad.json"):
        cal.load_records(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        cal.load_records(bad)
    rc = subprocess.run([sys.executable, str(ROOT / "bench" / "calc_vs_measured.py"), "--from-json", str(bad)],
                        capture_output=True, text=True, timeout=60)
    assert rc.returncode == 2 and "bad.json" in rc.stderr and "Traceback" not in rc.stderr


# ----------------------------------------------------------------------------- the queue of host and device

def _small(**eff):
    return C.estimate(ModelConfig.from_name("small"), "h100", batch_size=8, context_length=512, dtype="bf16",
                      compile=False, efficiency=C.Efficiency(**eff))


def test_op_times_add_up_to_the_step():
    t = _small().time
    assert sum(o.time_s for o in t.ops) == pytest.approx(t.step_s, rel=1e-9)
    assert t.forward_s + t.backward_s + t.optimizer_s == pytest.approx(t.step_s, rel=1e-9)


def test_without_host_cost_the_step_is_the_device_time_and_nothing_is_launch_bound():
    t = _small(launch_overhead_us=0, einx_call_us=0, cpp_launch_us=0).time
    device = sum(max(o.compute_s, o.memory_s) for o in t.ops)
    # max() per op over forward+backward totals can only undercount the per-phase maxima the queue uses.
    assert t.step_s >= device * (1 - 1e-9) and t.step_s == pytest.approx(device, rel=0.05)
    assert all(o.bound != "launch" for o in t.ops)


def test_with_a_slow_host_the_step_is_the_host_time():
    t = _small(launch_overhead_us=1000).time
    host = sum(o.launch_s for o in t.ops)
    # The device finishes each op long before the host issues the next: only the last op's device time adds.
    assert host <= t.step_s <= host * 1.01
    # (the flash kernel's softmax and weighted sum are part of the scores' launch: no host time of their own)
    assert {o.bound for o in t.ops if o.group != "optimizer" and o.kernels} == {"launch"}


def test_cpu_adds_host_and_device_time():
    cfg = ModelConfig.from_name("tiny")
    e = C.estimate(cfg, "cpu", batch_size=2, context_length=64, dtype="fp32")
    for o in e.time.ops:  # each op: its host time, then its device time (per phase), nothing overlapped
        device = o.time_s - o.launch_s
        assert max(o.compute_s, o.memory_s) * (1 - 1e-9) <= device <= (o.compute_s + o.memory_s) * (1 + 1e-9)
    gpu = C.estimate(cfg, dataclasses.replace(get_device("cpu"), kind="cuda"), batch_size=2, context_length=64,
                     dtype="fp32").time  # the same figures, but host and device overlap
    assert gpu.step_s < e.time.step_s


def test_compiled_model_spends_less_host_time():
    cfg = ModelConfig.from_name("small")
    eager = C.estimate(cfg, "h100", batch_size=8, dtype="bf16", compile=False).time
    compiled = C.estimate(cfg, "h100", batch_size=8, dtype="bf16", compile=True).time
    assert sum(o.launch_s for o in compiled.ops) < 0.3 * sum(o.launch_s for o in eager.ops)
    assert compiled.step_s < eager.step_s


# ----------------------------------------------------------------------------- factors: profile vs override

def test_unset_factors_come_from_the_profile_and_overrides_win():
    h100 = get_device("h100")
    e = _small()
    assert e.efficiency.launch_overhead_us == h100.launch_overhead_us.value
    assert e.efficiency.backward_launch == h100.backward_launch.value
    assert e.efficiency.matmul == h100.matmul_efficiency.value  # bf16: the bf16 figure
    fp32 = C.estimate(ModelConfig.from_name("small"), "h100", batch_size=8, dtype="fp32")
    assert fp32.efficiency.matmul == h100.tf32_matmul_efficiency.value  # fp32 runs TF32 on CUDA
    assert _small(matmul=0.5, launch_overhead_us=3).efficiency.matmul == 0.5
    assert _small(launch_overhead_us=3).time.step_s < e.time.step_s


def test_device_file_efficiency_above_one_is_a_config_error(tmp_path):
    f = tmp_path / "devices.toml"
    f.write_text(textwrap.dedent("""
        [fast]
        based_on = "h100"
        matmul_efficiency = { measured = 1.3 }
        """))
    with pytest.raises(ConfigError, match="matmul_efficiency.*at most 1"):
        C.load_devices(f)
    f.write_text('[mine]\nbased_on = "rtx4090"\nlaunch_overhead_us = { measured = 9 }\n')
    mine = C.get_device("mine", f)
    assert mine.launch_overhead_us.value == 9 and mine.launch_overhead_us.source == "measured"
    assert mine.einx_call_us == get_device("rtx4090").einx_call_us
