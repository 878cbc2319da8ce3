"""Huge sizes are refused before allocating, with the keys and the calculator's prediction."""

from __future__ import annotations

import pytest
import torch
from test_train_cli import experiment

from lm.config.loader import load_experiment, load_experiment_text
from lm.errors import ConfigError, LabError
from lm.train.memory_check import check_fits, is_out_of_memory, oom_error

CPU = torch.device("cpu")


@pytest.mark.parametrize("body, key", [
    ("[training]\nbatch_size = 10000000\n", "training.batch_size"),
    ("[model]\nd_model = 1048576\nnum_heads = 16\n", "model.d_model"),
    ("[model]\nvocab_size = 100000000\n[tokenizer]\nvocab_size = 1000\n", "model.vocab_size"),
])
def test_sizes_that_cannot_fit_are_refused_with_the_prediction(body, key):
    cfg = load_experiment_text(body, "e.toml", check_paths=False)
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, CPU, "cpu")
    msg = str(e.value)
    assert key in msg and "the calculator predicts" in msg and "lab calc" in msg and "\n" not in msg


def test_a_config_that_fits_passes():
    check_fits(load_experiment_text('[model]\npreset = "tiny"\n', "e.toml", check_paths=False), CPU, "cpu")


def test_lab_run_refuses_before_making_a_run_directory(tmp_path):
    from lm.train import run_experiment

    exp = experiment(tmp_path, training={"batch_size": 10_000_000})
    with pytest.raises(ConfigError, match="training.batch_size"):
        run_experiment(load_experiment(exp))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_an_out_of_memory_error_becomes_a_lab_error_naming_the_keys():
    cfg = load_experiment_text('[model]\npreset = "tiny"\n', "e.toml", check_paths=False)
    cpu_oom = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 80000000000 bytes")
    assert is_out_of_memory(cpu_oom) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    err = oom_error(cfg, "cpu", cpu_oom)
    assert isinstance(err, LabError) and "training.batch_size" in str(err) and "calculator predicts" in str(err)
