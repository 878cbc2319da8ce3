"""Muon (lm/muon.py) against a plain, slow reference written here, and in the trainer.

The reference shares no code with lm.muon: momentum and Nesterov written out
per element formula, Newton-Schulz as an explicit polynomial of the singular
values in float64 (via the SVD: the quintic iteration acts on each singular
value separately, s <- a s + b s^3 + c s^5), scaled per shape.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lm.calc import estimate
from lm.calc.optimizer import muon_params, newton_schulz_flops, newton_schulz_flops_per_step
from lm.config.schema import ExperimentConfig, ModelConfig
from lm.muon import Muon, muon_param_groups, newton_schulz
from lm.runs import RunDir
from lm.checkpoint_file import torch_load

import test_train as tt

A, B, C = 3.4445, -4.7750, 2.0315


def reference_newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """U p(S) V^T in float64, p = the quintic applied ``steps`` times to the normalised singular values."""
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / (torch.linalg.matrix_norm(G) + 1e-7)
    for _ in range(steps):
        s = A * s + B * s ** 3 + C * s ** 5
    return U @ torch.diag(s) @ Vh


def reference_muon_steps(w0, grads, lr, beta, wd, nesterov=True, steps=5, split=1):
    """Plain loop: m = beta m + (1-beta) g; u = (1-beta) g + beta m; W -= lr sqrt(max(1, r/c)) NS(u) (per split)."""
    w = w0.clone().double()
    m = torch.zeros_like(w)
    for g in grads:
        g = g.double()
        m = beta * m + (1 - beta) * g
        u = (1 - beta) * g + beta * m if nesterov else m
        rows = w.shape[0] // split
        parts = [reference_newton_schulz(u[i * rows:(i + 1) * rows], steps) for i in range(split)]
        o = torch.cat(parts, dim=0)
        w = w * (1 - lr * wd) - lr * math.sqrt(max(1.0, rows / w.shape[1])) * o
    return w


def _run_muon(w0, grads, *, split=1, dtype=torch.float32, **group):
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([{"params": [p], "use_muon": True, "split": split, "ns_dtype": dtype, **group}])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("shape,split", [((24, 24), 1), ((64, 16), 1), ((16, 48), 1), ((48, 16), 3)])
@pytest.mark.parametrize("nesterov", [True, False])
def test_update_matches_reference_fp32_and_bf16(shape, split, nesterov):
    gen = torch.Generator().manual_seed(hash((shape, split, nesterov)) % 1000)
    w0 = torch.randn(*shape, generator=gen)
    grads = [torch.randn(*shape, generator=gen) for _ in range(3)]
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    ref = reference_muon_steps(w0, grads, 0.02, 0.9, 0.1, nesterov=nesterov, split=split).float()
    got32 = _run_muon(w0, grads, split=split, dtype=torch.float32, **kw)
    torch.testing.assert_close(got32, ref, rtol=1e-5, atol=1e-5)
    got16 = _run_muon(w0, grads, split=split, dtype=torch.bfloat16, **kw)
    # bf16 iterates (8-bit mantissa) through 5 steps: the update agrees with the reference's to within
    # 5% of its norm (measured 1-3%), and the fp32 path is 1000x closer.
    delta = (ref - w0).norm()
    assert (got16 - ref).norm() / delta < 0.05
    assert (got32 - ref).norm() / delta < 5e-5


def test_newton_schulz_matches_the_singular_value_polynomial():
    G = torch.randn(32, 80, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(newton_schulz(G, 5, torch.float64), reference_newton_schulz(G), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(newton_schulz(G.T, 5, torch.float64), reference_newton_schulz(G.T), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (64, 256)])
def test_orthogonality_within_known_error(shape, dtype):
    """The quintic coefficients push singular values into [0.6818, 1.1344], not to exactly 1.

    (The band: five applications of s <- a s + b s^3 + c s^5 to every s in [0.02, 1].)

    A Gaussian matrix with aspect ratio 4 has normalised singular values >= ~0.05, which five
    steps bring into the band; bf16 rounding widens it by a couple of percent.
    """
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    X = newton_schulz(G, 5, dtype).double()
    s = torch.linalg.svdvals(X)
    slack = 0.03 if dtype == torch.bfloat16 else 0.0
    assert s.min() > 0.6818 - slack - 1e-4 and s.max() < 1.1344 + slack + 1e-4, (s.min(), s.max())
    m = min(shape)
    gram = X @ X.T if shape[0] <= shape[1] else X.T @ X  # (m, m), close to the identity
    # Its eigenvalues are s^2 in [0.46, 1.28]: no entry of X X^T - I is beyond 1 - 0.68^2.
    assert (gram - torch.eye(m, dtype=torch.float64)).abs().max() < 1 - (0.6818 - slack) ** 2 + 1e-3
    # Far from orthogonal before: the test has teeth.
    s0 = torch.linalg.svdvals(G.double() / torch.linalg.matrix_norm(G.double()))
    assert s0.max() / s0.min() > 2


def test_param_groups_put_block_matrices_under_muon():
    cfg = ExperimentConfig()
    cfg.optimizer = dataclasses.replace(cfg.optimizer, name="muon")
    from lm.model import TransformerLM

    model = TransformerLM(ModelConfig.from_name("tiny"))
    groups = {g["name"]: g for g in muon_param_groups(model, cfg.optimizer)}
    names = {id(p): n for n, p in model.named_parameters()}
    got = {k: sorted(names[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert all(n.endswith("qkv_proj.weight") for n in got["muon_qkv"]) and groups["muon_qkv"]["split"] == 3
    assert got["embed"] == ["token_embeddings.weight"] and got["head"] == ["lm_head.weight"]
    assert all(n.startswith("layers.") and "ln" not in n for n in got["muon"])
    assert all("ln" in n for n in got["scalar"])
    assert sum(len(v) for v in got.values()) == len(list(model.parameters()))
    assert sum(p.numel() for k in ("muon", "muon_qkv") for p in groups[k]["params"]) == muon_params(model.cfg)
    assert groups["embed"]["lr"] == cfg.optimizer.embed_lr and groups["muon"]["lr"] == cfg.optimizer.muon_lr


def muon_cfg(**training):
    cfg = tt.tiny_cfg(**training)
    cfg.optimizer = dataclasses.replace(cfg.optimizer, name="muon", muon_lr=0.02, embed_lr=0.05, head_lr=0.004,
                                        scalar_lr=0.01)
    return cfg


def test_tiny_model_trained_50_steps_with_muon_lowers_the_loss(tmp_path):
    cfg = muon_cfg(steps=50, log_every=10)
    cfg.eval = dataclasses.replace(cfg.eval, every=0)
    assert tt.make(cfg, tmp_path / "r").run() == 0
    train = RunDir(tmp_path / "r").metrics("train")
    assert train[-1]["loss"] < train[0]["loss"] - 1.0, [r["loss"] for r in train]
    assert all("optimizer_mfu" in r for r in train)  # Newton-Schulz FLOPs reported apart (None peak skips on CPU)
    ckpt = torch_load(tmp_path / "r/checkpoints/latest.pt")
    state = ckpt["optimizer"]["state"]
    # Muon's matrices carry one momentum buffer, AdamW's tensors two moments.
    assert any(set(s) == {"momentum_buffer"} for s in state.values())
    assert any({"exp_avg", "exp_avg_sq"} <= set(s) for s in state.values())


def test_muon_resume_is_bitwise_exact(tmp_path):
    cfg = muon_cfg()
    assert tt.make(cfg, tmp_path / "straight").run() == 0
    first = tt.make(cfg, tmp_path / "split")

    def stop_at_12(kind, rec):
        if kind == "train" and rec["step"] == 12:
            first.stop.request("test")

    first.progress = stop_at_12
    assert first.run() == 5
    rd = RunDir(tmp_path / "split")
    assert tt.make(cfg, tmp_path / "split").run(resume_from=rd.checkpoint("latest")) == 0
    a, b = tt.weights(tmp_path / "straight/checkpoints/latest.pt"), tt.weights(rd.checkpoint("latest"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch_load(tmp_path / "straight/checkpoints/latest.pt")["optimizer"]["state"]
    sb = torch_load(rd.checkpoint("latest"))["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i] if torch.is_tensor(sa[i][k]))


def test_schedule_scales_each_group_to_its_own_peak():
    from lm.train.optimization import build_optimizer, lr_at, set_lr
    from lm.model import TransformerLM

    cfg = muon_cfg(steps=20)
    opt = build_optimizer(TransformerLM(cfg.model), cfg.optimizer)
    for step in (1, 3, 10, 20):
        logged = set_lr(opt, step, cfg)
        assert logged == lr_at(step, cfg)
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["peak_lr"] * logged / cfg.optimizer.lr)


def test_calculator_counts_one_moment_and_newton_schulz_flops():
    cfg = ExperimentConfig()
    cfg.model = ModelConfig.from_name("small")
    adam = estimate(cfg, "h100")
    cfg.optimizer = dataclasses.replace(cfg.optimizer, name="muon")
    muon = estimate(cfg, "h100")
    P, M = adam.params.total, muon_params(cfg.model)
    assert adam.memory.optimizer == 8 * P
    assert muon.memory.optimizer == 8 * P - 4 * M  # one fp32 moment instead of two for Muon's matrices
    d, f, L = 768, 3072, 12  # by hand: 4 d x d (Q, K, V, out), w1 and w3 (f x d), w2 (d x f) per layer
    by_hand = L * 5 * (4 * (4 * d ** 3 + 2 * d ** 3) + 3 * (4 * d * d * f + 2 * d ** 3))
    assert newton_schulz_flops_per_step(cfg.model) == by_hand == muon.to_dict()["optimizer"]["newton_schulz_flops_per_step"]
    assert newton_schulz_flops(8, 2, 1) == 4 * 2 * 2 * 8 + 2 * 8
    # Newton-Schulz takes optimizer time but stays out of the model's MFU numerator.
    assert muon.time.optimizer_s > adam.time.optimizer_s
    assert muon.time.achieved_tflops * muon.time.step_s == pytest.approx(adam.time.achieved_tflops * adam.time.step_s)
