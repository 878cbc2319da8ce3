"""The benchmark harness: timing bookkeeping, measurements vs the calculator, profiling ranges, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lm.functional as LF
from lab.cli import main
from lm.bench.harness import BenchCase, grid, run_case
from lm.bench.profiling import instrument, module_ranges, ranged_attention
from lm.bench.steps import build_workload
from lm.train.engine import enable_checkpointing
from lm.bench.timing import time_callable
from lm.config.schema import ModelConfig
from lm.model import TransformerLM

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig.from_name("tiny")


@pytest.fixture(autouse=True)
def _no_user_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_time_callable_excludes_warmup_and_reports_a_consistent_median():
    calls = []
    m = time_callable(lambda: calls.append(1), "cpu", warmup=3, repeats=4, min_block_s=0.0)
    assert m.calls_per_block == 1 and m.blocks == 4
    assert len(calls) == 3 + 1 + 4  # warm-up, one probe that sizes the blocks, the timed blocks
    assert m.min_s <= m.median_s <= m.max_s and m.iqr_s >= 0


def test_grid_expands_every_combination():
    cases = grid({"tiny": TINY}, batch_sizes=2, context_lengths=(16, None), dtypes=("fp32", "bf16"),
                 compiles=(False,), attentions=("sdpa", "naive"))
    assert len(cases) == 8
    assert {c.context_length for c in cases} == {16, TINY.context_length}
    assert {c.model.attention for c in cases} == {"sdpa", "naive"}


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
def test_run_case_measures_times_memory_and_flops_against_the_calculator(attention):
    cfg = ModelConfig(**{**TINY.__dict__, "attention": attention})
    case = BenchCase("tiny", cfg, batch_size=2, context_length=32)
    res = run_case(case, torch.device("cpu"), warmup=1, repeats=1, min_block_s=0.0, flops=True,
                   with_prediction=True)
    assert res.error is None and set(res.times) == {"forward", "forward_backward", "step"}
    p = res.prediction
    assert res.peak_memory == pytest.approx(p["peak_memory"], rel=0.05)
    assert res.measured_flops == pytest.approx(p["flop_counter_flops"], rel=0.02)
    assert 0 < res.mfu < 1
    json.dumps(res.to_dict())  # serialisable


def test_ranged_attention_is_the_same_computation():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 4) for _ in range(3))
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    ranged = ranged_attention(nvtx=False)
    assert torch.equal(ranged(q, k, v, mask), LF.scaled_dot_product_attention(q, k, v, mask))
    assert torch.equal(ranged(q, k, v), LF.scaled_dot_product_attention(q, k, v))


def test_instrument_emits_named_ranges_and_cleans_up():
    from torch.profiler import ProfilerActivity, profile

    cfg = ModelConfig(**{**TINY.__dict__, "attention": "naive"})
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    expected = model(tokens)
    original = LF.scaled_dot_product_attention
    with instrument(model, nvtx=False):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            got = model(tokens)
    assert torch.equal(got, expected)
    names = {e.name for e in prof.events()}
    assert set(module_ranges(model)) <= names
    assert {"scores", "softmax", "weighted_sum", "block1.attention", "block0.ffn", "lm_head"} <= names
    assert LF.scaled_dot_product_attention is original
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = TransformerLM(TINY)
    ckpt = TransformerLM(TINY)
    ckpt.load_state_dict(plain.state_dict())
    enable_checkpointing(ckpt)
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    for m in (plain, ckpt):
        m(tokens).float().square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_meta_init_workload_builds_a_runnable_model():
    work = build_workload(TINY, batch_size=2, context_length=16, meta_init=True)
    reference = TransformerLM(TINY)
    assert torch.equal(work.model.layers[0].attn.rope.cos, reference.layers[0].attn.rope.cos)
    assert torch.equal(work.model.layers[0].ln1.weight, torch.ones_like(work.model.layers[0].ln1.weight))
    work.optimizer.param_groups[0]["lr"] = 1e-2
    first = work.step().item()
    for _ in range(5):
        last = work.step().item()
    assert last < first - 0.1  # the same batch every step: gradients flow, the loss falls
    assert all(torch.isfinite(p).all() for p in work.model.parameters())


def test_lab_bench_smoke_with_comparison_and_profile(tmp_path, capsys):
    out = tmp_path / "bench.json"
    prof = tmp_path / "prof"
    code = main(["bench", "--preset", "tiny", "--attention", "naive", "--batch-size", "2", "--context-length", "32",
                 "--modes", "forward,step", "--repeats", "1", "--warmup", "0", "--compare-calculator",
                 "--profile", str(prof), "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "measured vs predicted" in text and "peak memory" in text
    data = json.loads(out.read_text())
    r = data["results"][0]
    assert r["case"]["attention"] == "naive" and r["prediction"]["step_s"] > 0
    assert set(r["times"]) == {"forward", "step"}
    traces = list(prof.glob("*.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"embedding", "block0.attention", "scores", "softmax", "weighted_sum", "lm_head"} <= names


def test_lab_bench_bad_input_is_a_user_error(capsys):
    assert main(["bench", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--modes", "backward"]) == 2
    assert "--modes" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--preset", "tiny", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and "not available" in err and "available: cpu" in err


@pytest.mark.slow
def test_calc_vs_measured_script_runs_end_to_end_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "calc_vs_measured.py"), "--device", "cpu",
                           "--sizes", "tiny", "--dtypes", "fp32", "--repeats", "1", "--warmup", "0", "--threads", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "memory within 10%: 1/1" in proc.stdout
    data = json.loads((tmp_path / "calc_vs_measured.json").read_text())
    row = data["rows"][0]
    assert row["ratios"]["peak_memory"] == pytest.approx(1.0, rel=0.05)
    assert "calibration" in data
