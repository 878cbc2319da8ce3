"""The calculator on N GPUs: DDP / FSDP2 memory per GPU, collective volumes and times, scaling."""

from __future__ import annotations

import json

import pytest

from lm.calc import count_params, estimate, get_device
from lm.calc.distributed import estimate_distributed
from lm.config.schema import ExperimentConfig, ModelConfig, TrainingConfig
from lm.errors import ConfigError


def exp(preset="small", batch=32, dtype="bf16", accum=1):
    return ExperimentConfig(model=ModelConfig.from_name(preset),
                            training=TrainingConfig(batch_size=batch, dtype=dtype, grad_accum=accum))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ddp_moves_the_ring_all_reduce_volume_of_the_fp32_gradients(n):
    e = exp()
    d = estimate_distributed(e, "h100", n, "ddp")
    P = count_params(e.model).total
    assert d.comm_bytes == pytest.approx(2 * (n - 1) / n * 4 * P)
    assert d.link == "NVLink" and d.link_gbs == 450 and d.link_source == "datasheet"
    assert d.bus_gbs == pytest.approx(450 * 0.8)
    assert d.comm_s == pytest.approx(d.comm_bytes / (450 * 0.8 * 1e9))
    one = estimate(e, "h100", batch_size=32 // n, distributed=True)  # a rank runs the per-GPU batch
    assert d.per_gpu_batch == 32 // n
    assert d.total_bytes == pytest.approx(one.memory.total + one.memory.grads)  # + DDP's bucket copy
    assert d.compute_s == pytest.approx(one.time.step_s)
    assert d.step_s >= d.compute_s and 0 < d.scaling_efficiency <= 1


def test_fsdp_shards_weights_grads_and_optimizer_and_gathers_bf16_weights_each_micro_step():
    e = exp("2.7B", batch=16, accum=2)
    n = 8
    d = estimate_distributed(e, "rtx4090", n, "fsdp")
    one = estimate(e, "rtx4090", batch_size=2)
    P = count_params(e.model).total
    assert d.params_bytes == pytest.approx(one.memory.params / n)
    assert d.optimizer_bytes == pytest.approx(one.memory.optimizer / n)
    assert d.comm_bytes == pytest.approx((n - 1) / n * (2 * P * 2 * 2 + 4 * P))  # 2 all-gathers x 2 micro-steps + RS
    assert d.fits and not one.memory.fits  # what FSDP2 is for: 2.7B does not fit one 24 GB card in full
    ddp = estimate_distributed(e, "rtx4090", n, "ddp")
    assert d.total_bytes < ddp.total_bytes / 2


def test_one_gpu_costs_no_communication_and_pcie_costs_more_than_nvlink():
    e = exp()
    for mode in ("ddp", "fsdp"):
        d = estimate_distributed(e, "h100", 1, mode)
        assert d.comm_bytes == 0 and d.exposed_comm_s == 0 and d.scaling_efficiency == pytest.approx(1.0)
    nv = estimate_distributed(e, "h100", 4, "ddp")
    pcie = estimate_distributed(e, "rtx4090", 4, "ddp")
    assert pcie.link == "PCIe" and pcie.link_gbs == 32
    assert get_device("rtx4090").collective_efficiency.source == "estimate"
    assert pcie.comm_s > 10 * nv.comm_s and pcie.scaling_efficiency < nv.scaling_efficiency


def test_no_interconnect_figure_means_no_time_and_a_bad_split_is_a_config_error():
    d = estimate_distributed(exp("tiny", batch=8, dtype="fp32"), "cpu", 2, "ddp")
    assert d.link == "none" and d.comm_s is None and d.step_s is None and d.scaling_efficiency is None
    with pytest.raises(ConfigError, match="divide evenly over 3"):
        estimate_distributed(exp(batch=32), "h100", 3, "ddp")


def test_lab_calc_gpus_prints_both_modes(capsys):
    from lab.cli import main

    assert main(["calc", "--preset", "small", "--device", "h100", "--gpus", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(d["mode"], d["world_size"], d["device"]) for d in out["distributed"]] == [("ddp", 2, "h100"),
                                                                                         ("fsdp", 2, "h100")]
    assert main(["calc", "--preset", "small", "--device", "rtx4090", "--gpus", "2"]) == 0
    text = capsys.readouterr().out
    assert "2 GPUs" in text and "PCIe 32 (d)" in text and "FSDP" in text


@pytest.mark.parametrize("gpus", ["0", "-2"])
def test_lab_calc_refuses_fewer_than_one_gpu(gpus, capsys):
    from lab.cli import main

    assert main(["calc", "--preset", "small", "--gpus", gpus]) == 2
    err = capsys.readouterr().err
    assert f"--gpus must be at least 1, got {gpus}" in err and "Traceback" not in err
