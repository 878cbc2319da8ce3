"""The decode step's building blocks: the RoPE rotation matrices, the joint K/V caches,
attention windows, the W1|W3 copy kept in sync, the engine's sampler against the
full distribution, its hashed noise, kernel selection, and the Triton kernels (in
Triton's CPU interpreter, where Triton is installed) against the torch step."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lm.errors import LabError
from lm.decode import Decoded, Engine, Request, SamplingParams, attention_window
from lm.decode.sampling import race, race_noise, sample_rows, sampling_probs, token_keys, top_k_threshold
from lm.decode.torch_step import TorchStep, joint_kv_caches, rotation_basis
from lm.model import ModelConfig, RotaryPositionalEmbedding
from test_generate_support import random_model

BASE = ModelConfig(vocab_size=37, context_length=16, d_model=16, num_layers=2, num_heads=4, d_ff=24,
                   rope_theta=100.0)
GREEDY = SamplingParams(temperature=0.0, top_p=1.0)


def test_rotation_basis_gives_the_models_rope_for_q_and_k_and_identity_for_v():
    d_head, positions = 8, torch.tensor([0, 1, 5, 11])
    rope = RotaryPositionalEmbedding(100.0, d_head, 12)
    x = torch.randn(4, 3, d_head, dtype=torch.float64)  # (position, q|k|v, d)
    rows = torch.cat([rope.cos, rope.sin, torch.ones(12, 1)], 1).double()
    basis = rotation_basis(d_head, torch.float64, "cpu")
    for i, p in enumerate(positions):
        r = (rows[p] @ basis).view(3, d_head, d_head)
        got = torch.bmm(x[i].unsqueeze(1), r).squeeze(1)
        want = rope(x[i, :2].float(), p.view(1)).double()
        torch.testing.assert_close(got[:2], want, rtol=1e-6, atol=1e-6)
        assert torch.equal(got[2], x[i, 2])


def test_joint_caches_are_halves_of_one_tensor_and_model_forward_fills_them():
    model = random_model(BASE)
    caches = joint_kv_caches(model)
    for c in caches:
        assert c.k._base is c.v._base and c.k._base.shape == (2, *c.k.shape)
        assert c.v.data_ptr() - c.k.data_ptr() == c.k.numel() * c.k.element_size()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), torch.arange(3), caches)
    assert caches[0].k._base[0, :, :, :3].abs().sum() > 0 and caches[0].k._base[1, :, :, :3].abs().sum() > 0


@pytest.mark.parametrize("position, want", [(0, 4), (3, 4), (4, 8), (7, 8), (8, 16), (15, 16)])
def test_attention_window_is_a_power_of_two_above_the_position_at_most_the_context(position, want):
    assert attention_window(position, 16, min_window=4) == want
    assert attention_window(position, 12, min_window=4) == min(want, 12)


@pytest.mark.parametrize("name, change", [("default", {}), ("nope", {"position": "nope"}),
                                          ("post-norm", {"norm": "post"}), ("silu", {"ffn": "silu", "d_ff": None})])
def test_small_attention_windows_give_the_full_forward_logits(name, change):
    cfg = dataclasses.replace(BASE, **change)
    model = random_model(cfg, seed=8)
    dec = Engine(model)
    dec.min_window = 2  # windows 2, 4, 8, 16 within one reply
    request = Request([3, 1, 4], dataclasses.replace(GREEDY, max_new_tokens=12))
    steps = [dec.logits[0].clone() for ev in dec.generate(request) if isinstance(ev, Decoded)]
    with torch.no_grad():
        full = model(torch.tensor(request.history[:-1]))
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[2 + i], rtol=1e-4, atol=1e-5)


def test_torch_step_sees_weights_changed_in_place():
    model = random_model(BASE, seed=9)
    step = TorchStep(model, joint_kv_caches(model))
    token, pos = torch.tensor([5]), torch.tensor([0])
    with torch.no_grad():
        for layer in model.layers:
            layer.ffn.w3.weight.mul_(-2.0)  # an optimizer step or load_state_dict does this
        step.refresh()
        got = step(token, pos)[0]
        want = model(torch.tensor([5]))[-1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_torch_step_rows_are_independent_slots_at_their_own_positions():
    model = random_model(BASE, seed=10)
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]
    caches = joint_kv_caches(model, batch=3)
    step = TorchStep(model, caches)
    got = [[] for _ in seqs]
    with torch.no_grad():
        for t in range(6):  # row i steps through its own sequence; shorter ones repeat their last token
            pos = torch.tensor([min(t, len(q) - 1) for q in seqs])
            tok = torch.tensor([q[p] for q, p in zip(seqs, pos.tolist())])
            logits = step(tok, pos)
            for i, q in enumerate(seqs):
                if t < len(q):
                    got[i].append(logits[i])
        for i, q in enumerate(seqs):
            torch.testing.assert_close(torch.stack(got[i]), model(torch.tensor(q)), rtol=1e-4, atol=1e-5)


def _rows(logits, temperature, top_k, top_p):
    B = logits.shape[0]
    return (torch.tensor([0.0 if t == 0 else 1 / t for t in temperature]).expand(B) if len(temperature) == 1
            else torch.tensor([0.0 if t == 0 else 1 / t for t in temperature]),
            torch.tensor(top_k).expand(B).clone(), torch.tensor(top_p).expand(B).clone())


def test_sample_rows_is_the_race_over_the_cut_distribution_on_the_same_noise():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 40, generator=g).mul(3).round()  # coarse values: many ties at the k-th
    noise = torch.empty_like(logits).exponential_(generator=g)
    for temperature, k, p in ((1.0, 0, 1.0), (0.7, 5, 1.0), (1.6, 12, 1.0), (1.0, 0, 0.8), (0.9, 7, 0.6)):
        inv_t, top_k, top_p = _rows(logits, [temperature], [k], [p])
        got, prob = sample_rows(logits, noise.log(), inv_t, top_k, top_p, greedy=False, max_top_k=k,
                                nucleus=p < 1)
        want = race(sampling_probs(logits, temperature, k, p), noise)
        assert torch.equal(got, want.view(-1))
        torch.testing.assert_close(prob, torch.softmax(logits, -1).gather(1, got.view(-1, 1)).view(-1))
        if k:  # ties with the k-th largest are in: the winner is never below the threshold
            assert (logits.gather(-1, got.view(-1, 1)) >= top_k_threshold(logits, k)).all()


def test_sample_rows_gives_each_row_its_own_parameters():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 50, generator=g) * 2
    noise = torch.empty_like(logits).exponential_(generator=g)
    temperature, ks, ps = [0.0, 0.8, 1.3, 1.0], [0, 5, 0, 3], [1.0, 1.0, 0.7, 0.5]
    inv_t = torch.tensor([0.0, 1 / 0.8, 1 / 1.3, 1.0])
    got, _ = sample_rows(logits, noise.log(), inv_t, torch.tensor(ks), torch.tensor(ps), greedy=False, max_top_k=5,
                         nucleus=True)
    assert int(got[0]) == int(logits[0].argmax())
    for i in range(1, 4):
        want = race(sampling_probs(logits[i:i + 1], temperature[i], ks[i], ps[i]), noise[i:i + 1])
        assert int(got[i]) == int(want)


def test_race_noise_is_exponential_and_a_function_of_seed_and_draw_only():
    keys = token_keys(1000)
    seeds, draws = torch.tensor([5, 5, 6, 2**61 + 5]), torch.tensor([0, 1, 0, 0])
    ln_e = race_noise(seeds, draws, keys)
    e = ln_e.exp()
    # Exp(1): mean 1, P(E > 1) = 1/e; rows differ by seed and by draw (also in the high seed bits)
    assert abs(e.mean().item() - 1) < 0.05 and abs((e > 1).float().mean().item() - 0.3679) < 0.03
    assert len({tuple(r.tolist()) for r in ln_e}) == 4
    alone = race_noise(torch.tensor([6]), torch.tensor([0]), keys)
    assert torch.equal(alone[0], ln_e[2])  # the same row whatever else is in the batch
    seed_row = race_noise(torch.full((2000,), 9), torch.arange(2000), token_keys(5))
    first = torch.bincount(seed_row.argmin(-1), minlength=5).float() / 2000  # argmax of 1/E: uniform
    torch.testing.assert_close(first, torch.full((5,), 0.2), atol=0.04, rtol=0)


def test_sampling_with_the_engines_noise_follows_the_cut_distribution():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).repeat(20000, 1)
    n = logits.shape[0]
    noise = race_noise(torch.full((n,), 77), torch.arange(n), token_keys(5))
    ids, _ = sample_rows(logits, noise, torch.ones(n), torch.zeros(n, dtype=torch.long), torch.full((n,), 0.8),
                         greedy=False, max_top_k=0, nucleus=True)
    freq = torch.bincount(ids, minlength=5).float() / n
    want = torch.tensor([0.4, 0.3, 0.15, 0.0, 0.0]) / 0.85
    torch.testing.assert_close(freq, want, atol=0.015, rtol=0)


def test_kernel_choice_is_checked_and_cpu_uses_the_torch_step():
    model = random_model(BASE)
    dec = Engine(model)
    assert dec.step_kind == "torch" and dec.triton_problem is not None
    with pytest.raises(LabError, match="kernels must be one of"):
        Engine(model, kernels="cuda")
    with pytest.raises(LabError, match="Triton decode step cannot run this model"):
        Engine(model, kernels="triton")
    with pytest.raises(LabError, match="max_batch"):
        Engine(model, max_batch=0)


INTERPRETER_CHECK = r"""
import dataclasses, sys
import torch
from lm.decode import triton_step
from lm.decode.triton_step import TritonStep
from lm.decode.torch_step import TorchStep, joint_kv_caches
from lm.model import ModelConfig, TransformerLM
base = ModelConfig(vocab_size=40, context_length=80, d_model=32, num_layers=1, num_heads=2, d_ff=48)
worst = 0.0
# (change, batch, rows per program, positions): 3 rows in chunks of 2 run the second grid axis with a
# partial chunk. Attention blocks hold 64 slots: positions 63, 64, 65 cross from one block to two. Every
# position costs seconds in the interpreter, so the variants after the first take a few of them.
ALL = (0, 1, 2, 63, 64, 65, 79)
for change, batch, block_b, positions in (({}, 1, 8, ALL), ({}, 3, 8, ALL), ({}, 3, 2, (2, 65)),
                                          ({"position": "nope", "ffn": "silu", "d_ff": None}, 2, 8, (1, 64)),
                                          ({"norm": "none", "tie_embeddings": True}, 1, 8, (3, 70))):
    triton_step.MAX_BLOCK_B = block_b
    cfg = dataclasses.replace(base, **change)
    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    c_ref, c_new = joint_kv_caches(model, batch), joint_kv_caches(model, batch)
    ref, new = TorchStep(model, c_ref), TritonStep(model, c_new)
    with torch.no_grad():
        for p in positions:
            # Each row at its own position (row 1 behind row 0, row 2 at the end of the cache) and token.
            pos = torch.tensor([p, max(0, p - 40), 79 - p][:batch])
            tok = (pos * 7 + torch.arange(batch)) % 40
            out = torch.zeros(batch, cfg.vocab_size)
            want = ref(tok, pos)
            worst = max(worst, (new(tok, pos, None, out) - want).abs().max().item(), (out - want).abs().max().item())
    worst = max(worst, max(max((a.k - b.k).abs().max().item(), (a.v - b.v).abs().max().item())
                           for a, b in zip(c_ref, c_new)))
# Batch invariance: a row's logits are bitwise the same in a batch of 1, of 4, and of 4 in chunks of 2
# (ffn_dim 1100 > the W2 column tile, which batch 4 once narrowed, changing the order of the sums).
cfg = dataclasses.replace(base, d_model=64, d_ff=1100)
torch.manual_seed(1)
model = TransformerLM(cfg).eval()
rows = {}
for batch, block_b in ((1, 8), (4, 8), (4, 2)):
    triton_step.MAX_BLOCK_B = block_b
    step = TritonStep(model, joint_kv_caches(model, batch))
    with torch.no_grad():
        # One step at position 1: the sums' order is the point, not the position (the interpreter is slow).
        out = torch.zeros(batch, cfg.vocab_size)
        step(torch.full((batch,), 5), torch.full((batch,), 1), None, out)
    rows[batch, block_b] = out.clone()
alone = rows[1, 8][0]
for key, out in rows.items():
    for r in range(out.shape[0]):
        assert torch.equal(out[r], alone), (key, r, (out[r] - alone).abs().max().item())
print(worst)
"""


@pytest.mark.slow
def test_triton_kernels_match_the_torch_step_in_the_interpreter():
    assert float(run_in_interpreter(INTERPRETER_CHECK)) < 1e-4


SAMPLER_CHECK = r"""
import torch
from lm.decode.sampling import race_noise, sample_rows, token_keys
from lm.decode.triton_sampler import TritonSampler
B, V, C = 5, 2500, 64  # three blocks of the vocabulary, the last one partial
torch.manual_seed(0)
# Rows: greedy; T 0.7; T 1 with top-k 50 and top-p 0.8; T 1.3 with top-p 0.3 (the first winner often
# falls outside the nucleus: the loop runs); a dead row.
inv_t = torch.tensor([0.0, 1 / 0.7, 1.0, 1 / 1.3, 1.0])
top_p = torch.tensor([1.0, 1.0, 0.8, 0.3, 0.5])
top_k = torch.tensor([0, 0, 50, 0, 0])
live = torch.tensor([1, 1, 1, 1, 0])
state = {"token": torch.zeros(B, dtype=torch.long), "position": torch.tensor([0, 3, 7, 1, 2]),
         "draws": torch.tensor([0, 5, 2, 9, 0]), "seed": torch.tensor([1, 2**40 + 3, 77, 5, 6]), "top_k": top_k,
         "stop_at": torch.full((B,), C), "live": live, "inv_temperature": inv_t, "top_p": top_p}
sampler = TritonSampler(V, B, C, state, "cpu")
keys = token_keys(V)
seen_outside = 0
for greedy, max_top_k, nucleus in ((True, 0, False), (False, 0, False), (False, 50, True)):
    for draw in range(12):
        logits = torch.randn(B, V) * 3
        raw = logits.bfloat16()
        logits = raw.float()
        want, want_p = sample_rows(logits, None if greedy else race_noise(state["seed"], state["draws"], keys), inv_t,
                                   top_k, top_p, greedy=greedy, max_top_k=max_top_k, nucleus=nucleus, rank_logits=raw)
        if nucleus:  # how often the race's first winner is outside row 3's nucleus
            noise = race_noise(state["seed"], state["draws"], keys)
            seen_outside += int((noise[3] - logits[3] * inv_t[3]).argmin() != want[3])
        before = {k: v.clone() for k, v in state.items()}
        out_t, out_p = torch.zeros(B, C + 1, dtype=torch.long), torch.zeros(B, C + 1)
        sampler(logits, raw, out_t, out_p, greedy=greedy, max_top_k=max_top_k, nucleus=nucleus)
        for b in range(B):
            pos = int(before["position"][b])
            if not live[b]:
                assert int(state["position"][b]) == pos and int(state["draws"][b]) == int(before["draws"][b])
                continue
            got = int(out_t[b, pos])
            assert got == int(want[b]), (greedy, max_top_k, nucleus, draw, b, got, int(want[b]))
            assert abs(float(out_p[b, pos]) - float(want_p[b])) < 1e-5
            assert int(state["token"][b]) == got and int(state["position"][b]) == pos + 1
            assert int(state["draws"][b]) == int(before["draws"][b]) + 1
assert seen_outside >= 3, seen_outside  # the nucleus's loop was exercised
print("ok", seen_outside)
"""


@pytest.mark.slow
def test_triton_sampler_gives_sample_rows_tokens_in_the_interpreter():
    """Greedy, temperature, top-k and top-p rows in one batch, a dead row, the nucleus's loop: every token is
    sample_rows's on the same noise, and the step's bookkeeping is the torch engine's."""
    assert run_in_interpreter(SAMPLER_CHECK).startswith("ok")


def run_in_interpreter(script: str) -> str:
    """Run ``script`` in a fresh Python with Triton's CPU interpreter; it must exit 0. Its last output line."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(root), env_path()]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def env_path() -> str:
    """Where this interpreter finds triton (it may come from PYTHONPATH rather than site-packages)."""
    import triton

    return str(Path(triton.__file__).resolve().parent.parent)
