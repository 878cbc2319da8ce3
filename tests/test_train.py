"""The Trainer in-process on synthetic token arrays: records, checkpoints, resume, divergence, schedule."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from lm.checkpoint_file import torch_load
from lm.config.schema import ExperimentConfig, ModelConfig
from lm.errors import CheckpointError
from lm.runs import RunDir
from lm.train import Trainer
from lm.train.evaluate import evaluate
from lm.train.optimization import lr_at, parameter_groups
from lm.train.policy import DevicePolicy

VOCAB = 320
CPU = DevicePolicy(torch.device("cpu"), "fp32", False, "cpu")


def tiny_cfg(**training) -> ExperimentConfig:
    cfg = ExperimentConfig(name="t")
    cfg.model = ModelConfig.from_name("tiny", context_length=16, vocab_size=VOCAB, d_model=32, d_ff=64)
    cfg.tokenizer = dataclasses.replace(cfg.tokenizer, vocab_size=VOCAB)
    cfg.training = dataclasses.replace(cfg.training, **{"steps": 24, "batch_size": 4, "log_every": 4, **training})
    cfg.optimizer = dataclasses.replace(cfg.optimizer, lr=3e-3)
    cfg.schedule = dataclasses.replace(cfg.schedule, warmup_steps=3)
    cfg.eval = dataclasses.replace(cfg.eval, every=8, batches=2)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every=8, keep_last=2)
    return cfg


def tokens(n=6000, seed=0):
    """A learnable pattern: t[i+1] = (5 t[i] + 3) mod VOCAB, with 10% noise."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint16)
    out[0] = 1
    for i in range(1, n):
        out[i] = (5 * out[i - 1] + 3) % VOCAB if rng.random() > 0.1 else rng.integers(VOCAB)
    return out


TRAIN, VAL = tokens(6000, 0), tokens(1200, 1)


def make(cfg, run_dir, **kw):
    return Trainer(cfg, run_dir, train_tokens=TRAIN, val_tokens=VAL, val_bytes=len(VAL) * 2, policy=CPU, **kw)


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(path):
    return torch_load(path)["model"]


def test_a_run_writes_the_contracted_records_and_learns(tmp_path):
    assert make(tiny_cfg(), tmp_path).run() == 0
    rd = RunDir(tmp_path)
    train, evals = rd.metrics("train"), rd.metrics("eval")
    assert [r["step"] for r in train] == [4, 8, 12, 16, 20, 24]
    assert set(train[0]) == {"type", "step", "tokens", "time", "loss", "ppl", "lr", "grad_norm", "tokens_per_s",
                             "mfu", "mfu_estimated", "peak_mem"}
    assert train[0]["tokens"] == 4 * 4 * 16 and train[-1]["tokens"] == 24 * 4 * 16
    assert math.isclose(train[0]["ppl"], math.exp(train[0]["loss"]), rel_tol=1e-9)
    from lm.calc import peak_flops, training_flops_per_token

    peak, estimated = peak_flops("cpu", "fp32")
    for r in train:  # MFU = achieved model FLOP/s over the device's peak, from the calculator's figures
        expected = r["tokens_per_s"] * training_flops_per_token(tiny_cfg().model) / peak
        assert r["mfu"] == pytest.approx(expected, rel=1e-3) and r["mfu_estimated"] is estimated
        assert r["peak_mem"] > 0
    assert [r["step"] for r in evals] == [8, 16, 24]
    assert set(evals[0]) == {"type", "step", "tokens", "time", "val_loss", "val_ppl", "val_bpb"}
    # bits per byte from the val set's bytes/token ratio (2 bytes per token here).
    assert math.isclose(evals[-1]["val_bpb"], evals[-1]["val_loss"] / math.log(2) / 2, rel_tol=1e-9)
    assert evals[-1]["val_loss"] < math.log(VOCAB) - 1.0  # far below the uniform guess
    times = [r["time"] for r in train]
    assert times == sorted(times)
    events = [e["event"] for e in rd.events()]
    assert events[0] == "start" and events[-1] == "finish"
    assert events.count("eval") == 3 and "checkpoint" in events
    assert all(e["type"] == "event" and {"step", "time", "wall", "message"} <= set(e) for e in rd.events())
    st = rd.status()
    assert (st.state, st.step, st.total_steps, st.exit_code) == ("done", 24, 24, 0)
    assert st.best_val_loss == min(r["val_loss"] for r in evals)
    assert st.last_val_loss == evals[-1]["val_loss"]
    # keep_last = 2 step files, plus latest and best; latest is the final step.
    names = sorted(p.name for p in rd.checkpoints())
    assert names == ["best.pt", "latest.pt", "step_000016.pt", "step_000024.pt"]
    ck = torch_load(rd.checkpoint("latest"))
    assert ck["format"] == "lm-checkpoint/1" and ck["iteration"] == 24
    assert {"model", "optimizer", "config", "sampler", "rng", "trainer"} <= set(ck)
    assert "layers.0.attn.q_proj.weight" in ck["model"]  # CS336 names
    assert ck["config"]["model"]["d_model"] == 32
    assert ck["trainer"]["tokens"] == 24 * 64
    assert rd.config().model.d_model == 32  # config.toml written and loadable


def test_stop_request_checkpoints_and_resume_is_bitwise_identical(tmp_path):
    cfg = tiny_cfg()
    cfg.model = dataclasses.replace(cfg.model, attn_dropout=0.1, resid_dropout=0.1)  # dropout RNG in play
    assert make(cfg, tmp_path / "straight").run() == 0

    interrupted = make(cfg, tmp_path / "split")

    def stop_at_12(kind, rec):
        if kind == "train" and rec["step"] == 12:
            interrupted.stop.request("test")

    interrupted.progress = stop_at_12
    interrupted.recorder = None
    assert interrupted.run() == 5
    rd = RunDir(tmp_path / "split")
    assert rd.status().state == "stopped" and rd.status().exit_code == 5
    assert torch_load(rd.checkpoint("latest"))["iteration"] == 12
    assert rd.events()[-1]["event"] == "stop"

    resumed = make(cfg, tmp_path / "split")
    assert resumed.run(resume_from=rd.checkpoint("latest")) == 0
    a, b = weights(tmp_path / "straight/checkpoints/latest.pt"), weights(rd.checkpoint("latest"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The resumed run's records continue the same steps and the clock.
    train = rd.metrics("train")
    assert [r["step"] for r in train] == [4, 8, 12, 16, 20, 24]
    assert [r["time"] for r in train] == sorted(r["time"] for r in train)
    assert any(e["event"] == "resume" and e["step"] == 12 for e in rd.events())
    straight = RunDir(tmp_path / "straight").metrics("eval")
    assert [r["val_loss"] for r in rd.metrics("eval")] == [r["val_loss"] for r in straight]


def test_nan_halts_with_exit_4_and_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_INJECT_NAN_AT_STEP", "11")
    assert make(tiny_cfg(), tmp_path).run() == 4
    rd = RunDir(tmp_path)
    st = rd.status()
    assert (st.state, st.exit_code) == ("diverged", 4)
    halt = [e for e in rd.events() if e["event"] == "halt"]
    assert len(halt) == 1 and halt[0]["step"] == 11 and halt[0]["loss"] is None  # NaN written as null
    assert "step 11" in halt[0]["message"] and "checkpoints/latest.pt" in halt[0]["message"]
    assert halt[0]["param"]  # names a parameter
    ck = torch_load(rd.checkpoint("latest"))
    assert ck["iteration"] == 8
    assert all(torch.isfinite(t).all() for t in ck["model"].values())
    assert max(r["step"] for r in rd.metrics("train")) == 8  # nothing logged from the bad window


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """batch 8 in one go vs 4 + 4 accumulated: the same windows, the same update (up to float order)."""
    big = tiny_cfg(batch_size=8, steps=3)
    acc = tiny_cfg(batch_size=4, grad_accum=2, steps=3)
    assert big.tokens_per_step == acc.tokens_per_step
    assert make(big, tmp_path / "big").run() == 0
    assert make(acc, tmp_path / "acc").run() == 0
    a, b = weights(tmp_path / "big/checkpoints/latest.pt"), weights(tmp_path / "acc/checkpoints/latest.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    # Adam hides a gradient scale error in the weights; the logged loss and pre-clip norm do not.
    (ra,), (rb,) = RunDir(tmp_path / "big").metrics("train"), RunDir(tmp_path / "acc").metrics("train")
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)


def test_resuming_into_a_different_model_shape_names_the_tensor(tmp_path):
    assert make(tiny_cfg(steps=8), tmp_path).run() == 0
    wider = tiny_cfg(steps=16)
    wider.model = dataclasses.replace(wider.model, d_ff=96)
    with pytest.raises(CheckpointError) as e:
        make(wider, tmp_path).setup(resume_from=tmp_path / "checkpoints/latest.pt")
    assert "ffn.w1.weight" in str(e.value) and "[96, 32]" in str(e.value)


def test_an_unreadable_checkpoint_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "checkpoints" / "latest.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        make(tiny_cfg(), tmp_path).setup(resume_from=bad)


def test_a_finished_run_resumed_with_more_steps_continues(tmp_path):
    assert make(tiny_cfg(steps=8), tmp_path).run() == 0
    assert make(tiny_cfg(steps=12), tmp_path).run(resume_from=tmp_path / "checkpoints/latest.pt") == 0
    assert RunDir(tmp_path).status().step == 12
    assert torch_load(tmp_path / "checkpoints/latest.pt")["iteration"] == 12


def test_max_time_stops_with_a_final_eval_and_checkpoint(tmp_path):
    assert make(tiny_cfg(steps=100_000, max_time=0.3), tmp_path).run() == 0
    rd = RunDir(tmp_path)
    st = rd.status()
    assert st.state == "done" and 0 < st.step < 100_000 and "max_time" in st.message
    assert rd.metrics("eval")[-1]["step"] == st.step
    assert torch_load(rd.checkpoint("latest"))["iteration"] == st.step


def test_exact_bits_per_byte_uses_the_bytes_of_the_predicted_tokens():
    torch.manual_seed(0)
    cfg = tiny_cfg().model
    from lm.model import TransformerLM

    model = TransformerLM(cfg)
    x = torch.randint(0, VOCAB, (3, 16))
    y = torch.randint(0, VOCAB, (3, 16))
    lengths = torch.randint(1, 5, (VOCAB,))
    res = evaluate(model, [(x, y)], CPU, token_bytes=lengths)
    with torch.no_grad():
        nats = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1), reduction="sum")
    n_bytes = int(sum(lengths[t] for t in y.reshape(-1).tolist()))
    assert res.bytes == n_bytes and res.tokens == 48
    assert math.isclose(res.loss, nats.item() / 48, rel_tol=1e-6)
    assert math.isclose(res.bpb, nats.item() / math.log(2) / n_bytes, rel_tol=1e-6)


def test_schedule_warmup_cosine_and_constant():
    cfg = tiny_cfg(steps=100)
    cfg.optimizer.lr, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio = 1.0, 10, 0.1
    assert lr_at(1, cfg) == pytest.approx(0.1)  # the first update already moves
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.5 * 0.9)  # halfway down the cosine
    assert lr_at(100, cfg) == pytest.approx(0.1)  # min_lr exactly on the last step
    cfg.schedule.cosine_steps = 50
    assert lr_at(50, cfg) == pytest.approx(0.1) and lr_at(80, cfg) == pytest.approx(0.1)
    cfg.schedule.kind = "constant"
    assert [lr_at(s, cfg) for s in (5, 10, 99)] == pytest.approx([0.5, 1.0, 1.0])
    cfg.schedule.warmup_steps = 0
    assert lr_at(1, cfg) == 1.0


def test_weight_decay_skips_vectors_only():
    from lm.model import TransformerLM

    model = TransformerLM(tiny_cfg().model)
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert all("ln" in names[id(p)] for p in no_decay["params"])
    assert "token_embeddings.weight" in {names[id(p)] for p in decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_too_little_data_is_a_data_error(tmp_path):
    from lm.errors import DataError

    t = Trainer(tiny_cfg(), tmp_path, train_tokens=TRAIN, val_tokens=VAL[:10], policy=CPU)
    with pytest.raises(DataError, match="validation data has 10 tokens"):
        t.setup()


def test_a_stop_requested_before_the_first_step_still_leaves_a_resumable_run(tmp_path):
    from lm.train.signals import StopRequest

    stop = StopRequest()
    stop.request("test")
    assert make(tiny_cfg(), tmp_path, stop=stop).run() == 5
    rd = RunDir(tmp_path)
    assert rd.status().state == "stopped" and torch_load(rd.checkpoint("latest"))["iteration"] == 0
    assert make(tiny_cfg(steps=4), tmp_path).run(resume_from=rd.checkpoint("latest")) == 0
