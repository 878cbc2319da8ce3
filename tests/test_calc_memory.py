"""Memory predictions against measurements on CPU.

Two independent references: the tensors autograd really saves for backward
(``saved_tensors_hooks``, via lm.bench.saved), and the peak of a whole training
step replayed from the profiler's allocation trace (lm.bench.memory). Both are
exact on CPU, so the tolerance is tight (the task allows 15%).
"""

from __future__ import annotations

import pytest
import torch

import lm.calc as C
from lm.bench.harness import step_peak_memory
from lm.bench.saved import measure_saved
from lm.bench.steps import build_workload
from lm.calc.activations import saved_activations
from lm.config.schema import ModelConfig
from lm.model import TransformerLM

BASE = dict(vocab_size=500, context_length=48, d_model=96, num_layers=2, num_heads=4, d_ff=160)
VARIANTS = [
    {}, {"attention": "naive"}, {"norm": "post"}, {"norm": "none"}, {"position": "nope"},
    {"position": "nope", "attention": "naive"}, {"ffn": "silu", "d_ff": None}, {"tie_embeddings": True},
    {"attn_dropout": 0.1, "attention": "naive"}, {"attn_dropout": 0.1}, {"resid_dropout": 0.1},
    {"norm": "none", "attention": "naive"},
]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_activation_model_matches_what_autograd_saves(variant, autocast):
    cfg = ModelConfig(**{**BASE, **variant})
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    B, T = 3, 40  # B*T differs from every width, so no shape coincidences
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    measured = measure_saved(model, tokens, targets, autocast_dtype=torch.bfloat16 if autocast else None)
    predicted = saved_activations(cfg, B, T, autocast=autocast, device_kind="cpu")
    assert predicted.total == pytest.approx(measured.activations, rel=0.01)
    assert predicted.weight_copies == measured.weight_copies


PEAK_CASES = [
    ({}, "fp32", False, 1),
    ({}, "bf16", False, 1),
    ({"attention": "naive", "vocab_size": 64}, "fp32", False, 1),  # a block's backward is the peak
    ({"attention": "naive"}, "bf16", False, 1),
    ({}, "fp32", True, 1),  # activation checkpointing
    ({}, "bf16", True, 1),
    ({}, "fp32", False, 2),  # gradient accumulation keeps gradients through the forward
    ({"vocab_size": 64, "norm": "none", "ffn": "silu", "d_ff": None}, "bf16", False, 3),
]


@pytest.mark.parametrize("variant,dtype,checkpointing,accum", PEAK_CASES)
def test_peak_memory_of_a_training_step_matches_the_allocator_trace(variant, dtype, checkpointing, accum):
    cfg = ModelConfig(**{**BASE, "num_layers": 3, "context_length": 128, **variant})
    B, T = 4, 128
    work = build_workload(cfg, batch_size=B, context_length=T, dtype=dtype, device="cpu",
                          checkpointing=checkpointing, grad_accum=accum)
    measured = step_peak_memory(work, torch.device("cpu"), True)
    e = C.estimate(cfg, "cpu", batch_size=B, context_length=T, dtype=dtype, activation_checkpointing=checkpointing,
                   grad_accum=accum)
    assert e.memory.peak == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_peak_of_a_big_model_at_a_tiny_batch_is_the_optimizer_step(dtype):
    # Weights + gradients + two moments + AdamW's sqrt(v) temporaries for every matrix at once.
    cfg = ModelConfig(vocab_size=8000, context_length=16, d_model=256, num_layers=4, num_heads=4)
    work = build_workload(cfg, batch_size=1, context_length=16, dtype=dtype, device="cpu")
    measured = step_peak_memory(work, torch.device("cpu"), True)
    e = C.estimate(cfg, "cpu", batch_size=1, context_length=16, dtype=dtype)
    assert e.memory.peak_phase == "optimizer step"
    assert e.memory.peak == pytest.approx(measured, rel=0.01)


def test_checkpointing_keeps_only_block_inputs():
    cfg = ModelConfig.from_name("small")
    full = C.estimate(cfg, "h100", batch_size=8, dtype="bf16")
    ckpt = C.estimate(cfg, "h100", batch_size=8, dtype="bf16", activation_checkpointing=True)
    N = 8 * cfg.context_length
    assert ckpt.activations.per_layer_kept == N * cfg.d_model * 4
    assert ckpt.memory.peak < full.memory.peak
    assert ckpt.time.step_s > full.time.step_s  # the blocks' forward runs twice
    assert ckpt.verdict.max_batch_size > full.verdict.max_batch_size


def test_persistent_state_is_16_bytes_per_parameter_also_under_bf16():
    cfg = ModelConfig.from_name("medium")
    for dtype in ("fp32", "bf16"):
        e = C.estimate(cfg, "h100", batch_size=1, dtype=dtype)
        P = e.params.total
        assert e.memory.params == 4 * P and e.memory.grads == 4 * P and e.memory.optimizer == 8 * P
    bf16 = C.estimate(cfg, "h100", batch_size=1, dtype="bf16", compile=False)
    # autocast keeps fp32 master weights and saves bf16 copies of every block's matmul weights; the
    # eager fused LM head + loss keeps none (its bf16 copy of the head lives only during its forward)
    assert bf16.memory.weight_copies == 2 * (e.params.attention + e.params.ffn)
    # compiled, the LM head and loss are Inductor's: the head's bf16 copy is saved too
    compiled = C.estimate(cfg, "h100", batch_size=1, dtype="bf16", compile=True)
    assert compiled.memory.weight_copies == 2 * (e.params.attention + e.params.ffn + cfg.vocab_size * cfg.d_model)


def test_memory_grows_with_batch_and_max_batch_size_is_the_boundary():
    cfg = ModelConfig.from_name("large")
    peaks = [C.estimate(cfg, "rtx4090", batch_size=b, dtype="bf16").memory.total for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and len(set(peaks)) == 4
    best = C.max_batch_size(cfg, "rtx4090", dtype="bf16")
    assert best >= 1
    assert C.estimate(cfg, "rtx4090", batch_size=best, dtype="bf16").verdict.fits
    assert not C.estimate(cfg, "rtx4090", batch_size=best + 1, dtype="bf16").verdict.fits


def test_a_config_that_does_not_fit_says_by_how_much_and_what_fits():
    cfg = ModelConfig.from_name("medium")
    e = C.estimate(cfg, "rtx4090", batch_size=256, dtype="bf16")
    v = e.verdict
    assert not v.fits
    assert v.over_by == pytest.approx(e.memory.total - e.memory.capacity)
    assert v.max_batch_size == C.max_batch_size(cfg, "rtx4090", dtype="bf16")
    assert "over by" in v.text and f"batch_size {v.max_batch_size} fits" in v.text
    assert "grad_accum" in v.text  # how to keep the same tokens per step


def test_a_model_too_big_for_the_device_blames_the_persistent_state():
    e = C.estimate(ModelConfig.from_name("2.7B"), "rtx4090", batch_size=1, dtype="bf16")
    assert not e.verdict.fits and e.verdict.max_batch_size == 0
    assert "16 bytes per parameter" in e.verdict.text
    assert e.memory.persistent > e.memory.capacity


def test_device_defaults_for_dtype_and_compile():
    cfg = ModelConfig.from_name("tinystories")
    m4 = C.estimate(cfg, "m4", batch_size=8)
    assert m4.settings.dtype == "fp32" and not m4.settings.compile
    gpu = C.estimate(cfg, "rtx4090", batch_size=8)
    assert gpu.settings.dtype == "bf16" and gpu.settings.compile
    assert C.estimate(cfg, "rtx4090", batch_size=8, dtype="fp32", compile="off").settings.compile is False


def test_2p7b_fits_an_h100_at_small_batch():
    e = C.estimate(ModelConfig.from_name("2.7B"), "h100", batch_size=2, dtype="bf16", compile=False)
    assert e.verdict.fits
    assert e.memory.persistent == pytest.approx(16 * e.params.total + 4 * e.params.rope_buffer_elements)


def test_auto_checkpointing_is_sized_as_the_trainer_resolves_it():
    """'auto' (the default) drops the blocks' bf16 weight copies where the trainer's lm.auto does:
    a compiled bf16 GPU step of a model of 1.5B parameters or more in one process without CUDA
    graphs; elsewhere it sizes 'none'."""
    big, small = ModelConfig.from_name("xl"), ModelConfig.from_name("tinystories")

    def settings(cfg, device, **kw):
        return C.estimate(cfg, device, batch_size=4, **kw).settings

    assert not settings(ModelConfig.from_name("medium"), "h100").recompute_weight_copies  # under 1.5B
    assert settings(big, "h100").recompute_weight_copies  # the training default: 'auto'
    auto, weights = (C.estimate(big, "h100", batch_size=4, activation_checkpointing=a) for a in ("auto", "weights"))
    assert auto.memory.total == weights.memory.total
    assert not settings(big, "h100", distributed=True).recompute_weight_copies
    assert not settings(big, "h100", compile="off").recompute_weight_copies
    assert not settings(big, "h100", dtype="fp32").recompute_weight_copies
    assert not settings(big, "m4").recompute_weight_copies and not settings(big, "cpu").recompute_weight_copies
    assert not settings(small, "h100").recompute_weight_copies  # under 50M parameters: CUDA graphs
    for s in (settings(big, "h100"), settings(big, "h100", activation_checkpointing="none")):
        assert not s.activation_checkpointing  # neither recomputes a block
