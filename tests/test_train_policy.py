"""Device, dtype and compile policy with the machine faked: CUDA boxes and Macs tested on a CPU."""

from __future__ import annotations

import pytest
import torch

from lm.config.schema import TrainingConfig
from lm.errors import ConfigError
from lm.train import policy as P


@pytest.fixture
def machine(monkeypatch):
    """Fake what torch reports: set(cuda=..., bf16=..., mps=..., count=...)."""
    def set_(cuda=False, bf16=False, mps=False, count=1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA Fake 4090")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return set_


def resolve(**training):
    return P.resolve_policy(TrainingConfig(**training))


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=True, bf16=True, mps=True)
    assert P.select_device("auto").type == "cuda"
    machine(cuda=False, mps=True)
    assert P.select_device("auto").type == "mps"
    machine(cuda=False, mps=False)
    assert P.select_device("auto").type == "cpu"


def test_cuda_with_bf16_gets_bf16_autocast_and_compile(machine):
    machine(cuda=True, bf16=True)
    pol = resolve()
    assert (pol.device.type, pol.dtype, pol.compile) == ("cuda", "bf16", True)
    assert pol.autocast_dtype is torch.bfloat16
    assert pol.device_name == "NVIDIA Fake 4090"


def test_old_cuda_without_bf16_trains_fp32_and_refuses_explicit_bf16(machine):
    machine(cuda=True, bf16=False)
    assert resolve().dtype == "fp32"
    with pytest.raises(ConfigError, match="bfloat16"):
        resolve(dtype="bf16")


def test_mps_defaults_to_fp32_without_compile_and_never_asks_cuda(machine, monkeypatch):
    machine(cuda=False, mps=True)

    def cuda_call(*a, **k):
        raise AssertionError("a CUDA-only call was made on an MPS policy")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", cuda_call)
    monkeypatch.setattr(torch.cuda, "get_device_name", cuda_call)
    pol = resolve()
    assert (pol.device.type, pol.dtype, pol.compile, pol.device_name) == ("mps", "fp32", False, "mps")
    assert pol.autocast_dtype is None
    # Asked for explicitly, bf16 and compile are obeyed on MPS.
    pol = resolve(dtype="bf16", compile="on")
    assert (pol.dtype, pol.compile) == ("bf16", True)


def test_cpu_defaults_to_fp32_without_compile(machine):
    machine()
    pol = resolve()
    assert (pol.device.type, pol.dtype, pol.compile, pol.device_name) == ("cpu", "fp32", False, "cpu")


def test_compile_switch_overrides_auto(machine):
    machine(cuda=True, bf16=True)
    assert resolve(compile="off").compile is False
    machine()
    assert resolve(compile="on").compile is True


@pytest.mark.parametrize("device,present", [("cuda", dict(mps=True)), ("mps", dict(cuda=True, bf16=True)),
                                            ("cuda:3", dict(cuda=True, count=2))])
def test_asking_for_a_missing_device_is_a_config_error_listing_what_exists(machine, device, present):
    machine(**present)
    with pytest.raises(ConfigError) as e:
        resolve(device=device)
    assert device in str(e.value) and "available: cpu" in str(e.value)


def test_explicit_cuda_index_is_kept(machine):
    machine(cuda=True, bf16=True, count=2)
    assert P.select_device("cuda:1") == torch.device("cuda", 1)


def test_device_override_beats_config(machine):
    machine(cuda=True, bf16=True)
    assert P.resolve_policy(TrainingConfig(device="auto"), device_override="cpu").device.type == "cpu"


def test_autocast_context_runs_matmuls_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    cpu_bf16 = P.DevicePolicy(torch.device("cpu"), "bf16", False, "cpu")
    cpu_fp32 = P.DevicePolicy(torch.device("cpu"), "fp32", False, "cpu")
    with cpu_bf16.autocast():
        assert (a @ a).dtype == torch.bfloat16
    with cpu_fp32.autocast():
        assert (a @ a).dtype == torch.float32


def test_peak_memory_on_cpu_is_the_process_peak_rss():
    import resource

    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert P.peak_memory(torch.device("cpu")) >= rss_kib * 1024 * 0.9
