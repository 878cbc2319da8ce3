"""The decode engine at batch 1 and sampling: logits against a full forward pass for every
ablation switch, context overflow against a slow reference loop, the top-p / top-k
/ temperature rules on hand-built distributions, seeds and parameter validation."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_lm
from lm.errors import LabError
from lm.decode import (OVERFLOW_KEEP, Decoded, Engine, Notice, Request, SamplingParams, nucleus_mask, sample,
                       sampling_probs)
from lm.model import ModelConfig
from test_generate_support import random_model

BASE = ModelConfig(vocab_size=37, context_length=16, d_model=16, num_layers=2, num_heads=4, d_ff=24,
                   rope_theta=100.0)
ABLATIONS = {
    "default": {},
    "nope": {"position": "nope"},
    "post-norm": {"norm": "post"},
    "no-norm": {"norm": "none"},
    "silu": {"ffn": "silu", "d_ff": None},
    "tied": {"tie_embeddings": True},
    "naive-attention": {"attention": "naive"},
    "naive-nope-post-tied": {"attention": "naive", "position": "nope", "norm": "post", "tie_embeddings": True},
    "no-residual": {"residual": False},
    "no-residual-post": {"residual": False, "norm": "post"},
}
TOL = dict(rtol=1e-4, atol=1e-5)
GREEDY = SamplingParams(temperature=0.0, top_p=1.0)


def _full_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids))


def _decode(engine, ids, params):
    """(events, request) of one request decoded alone."""
    request = Request(ids, params)
    return list(engine.generate(request)), request


def _ids(events):
    return [e.token_id for e in events if isinstance(e, Decoded)]


@pytest.mark.parametrize("name", ABLATIONS)
def test_prefill_and_single_tokens_match_full_forward(name):
    cfg = dataclasses.replace(BASE, **ABLATIONS[name])
    model = random_model(cfg)
    seq = torch.randint(0, cfg.vocab_size, (cfg.context_length,), generator=torch.Generator().manual_seed(1))
    full = _full_logits(model, seq.tolist())
    dec = Engine(model)
    for split in (1, 5, 9, 16):
        got = dec.forward_tokens(seq[:split].tolist(), 0)  # a padded prefill
        torch.testing.assert_close(got, full[:split], **TOL)
        p = split
        while p < cfg.context_length:  # then chunks of 3 tokens and single tokens, at their true positions
            n = 3 if p % 2 else 1
            got = dec.forward_tokens(seq[p:p + n].tolist(), p)
            torch.testing.assert_close(got, full[p:p + n], **TOL)
            p += n


@pytest.mark.parametrize("name", ABLATIONS)
def test_decode_step_logits_match_full_forward_at_every_step(name):
    cfg = dataclasses.replace(BASE, **ABLATIONS[name])
    model = random_model(cfg, seed=2)
    dec = Engine(model)
    assert dec.step_kind == "torch" and dec.chunk == 1 and dec.depth == 1  # a step, then its token
    prompt = [3, 1, 4, 1, 5]
    n = cfg.context_length - len(prompt)
    steps = []
    request = Request(prompt, dataclasses.replace(GREEDY, max_new_tokens=n))
    for ev in dec.generate(request):
        assert isinstance(ev, Decoded)
        steps.append((ev, dec.logits[0].clone()))  # the logits of the step that produced ev
    assert len(steps) == n
    # Causal: one forward over the final text gives, at each position, what that step saw.
    full = _full_logits(model, request.history[:-1])
    for i, (ev, logits) in enumerate(steps):
        ref = full[len(prompt) - 1 + i]
        torch.testing.assert_close(logits, ref, **TOL)
        assert ev.token_id == int(ref.argmax())
        assert ev.prob == pytest.approx(float(torch.softmax(ref, -1)[ev.token_id]), rel=1e-4)


def _reference_greedy_with_overflow(model, prompt, n, ctx):
    """Slow and plain: a full forward of the second implementation (tests/reference_lm.py) per
    token; when the text outgrows the context keep its tail."""
    keep = int(ctx * OVERFLOW_KEEP)
    sd = model.state_dict()
    hist, out, overflows = list(prompt), [], 0
    while len(out) < n:
        if len(hist) > ctx:
            hist, overflows = hist[-keep:], overflows + 1
        tok = int(reference_lm.forward(sd, model.cfg, torch.tensor(hist))[-1].argmax())
        hist.append(tok)
        out.append(tok)
    return out, overflows


@pytest.mark.parametrize("name", ["default", "nope"])
def test_overflow_matches_reference_loop(name):
    cfg = dataclasses.replace(BASE, **ABLATIONS[name])
    model = random_model(cfg, seed=3)
    prompt = [7, 8, 9, 10, 11]
    n = 3 * cfg.context_length
    want, want_overflows = _reference_greedy_with_overflow(model, prompt, n, cfg.context_length)
    events, _ = _decode(Engine(model), prompt, dataclasses.replace(GREEDY, max_new_tokens=n))
    assert _ids(events) == want
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == want_overflows >= 3
    assert all(e.kind == "overflow" and "context full" in e.message for e in notices)


def test_prompt_longer_than_context_keeps_its_tail():
    model = random_model(BASE, seed=4)
    prompt = list(range(30))  # ctx 16
    want, _ = _reference_greedy_with_overflow(model, prompt, 4, BASE.context_length)
    events, _ = _decode(Engine(model), prompt, dataclasses.replace(GREEDY, max_new_tokens=4))
    assert isinstance(events[0], Notice)
    assert _ids(events) == want


def test_continue_history_reads_only_new_tokens_and_matches_one_pass():
    model = random_model(BASE, seed=5)
    dec = Engine(model)
    events, first = _decode(dec, [1, 2, 3], dataclasses.replace(GREEDY, max_new_tokens=4))
    assert dec.slots[0].cached == first.history[:-1] and len(first.history) == 7
    read = []
    real = dec.forward_tokens
    dec.forward_tokens = lambda ids, start, slot=0: read.append((list(ids), start)) or real(ids, start, slot)
    one_pass = first.history + [9, 9]
    events, second = _decode(dec, one_pass, dataclasses.replace(GREEDY, max_new_tokens=3))
    assert read == [([first.history[-1], 9], 6)]  # only what the cache lacked
    want, _ = _reference_greedy_with_overflow(model, one_pass, 3, BASE.context_length)
    assert _ids(events) == want
    assert second.history == one_pass + want


def test_stopping_early_frees_the_slot_and_keeps_a_usable_cache():
    model = random_model(BASE, seed=6)
    dec = Engine(model)
    request = Request([1, 2], dataclasses.replace(GREEDY, max_new_tokens=10))
    it = dec.generate(request)
    got = [next(it).token_id for _ in range(3)]
    it.close()
    assert request.cancelled and dec.active == 0 and dec.slots[0].cached == [1, 2] + got[:2]
    events, _ = _decode(dec, [1, 2] + got, dataclasses.replace(GREEDY, max_new_tokens=2))
    want, _ = _reference_greedy_with_overflow(model, [1, 2] + got, 2, BASE.context_length)
    assert _ids(events) == want


def test_same_seed_same_tokens_and_another_seed_differs():
    model = random_model(BASE, seed=7)
    params = SamplingParams(temperature=1.5, top_p=0.9, top_k=20, max_new_tokens=30, seed=123)

    def run(p):
        return _ids(_decode(Engine(model), [1, 2, 3], p)[0])

    assert run(params) == run(params)
    assert run(params) != run(dataclasses.replace(params, seed=124))


def test_bad_prompt_ids_and_empty_prompt_are_lab_errors():
    dec = Engine(random_model(BASE))
    with pytest.raises(LabError, match="outside the model's vocabulary"):
        _decode(dec, [1, 37], GREEDY)
    with pytest.raises(LabError, match="empty"):
        _decode(dec, [], GREEDY)
    assert dec.active == 0


# ----------------------------------------------------------------------------- sampling rules

def _kept(probs, p) -> set[int]:
    return set(torch.nonzero(nucleus_mask(torch.tensor(probs), p)).flatten().tolist())


@pytest.mark.parametrize("probs, p, want", [
    ([0.5, 0.25, 0.125, 0.125], 0.5, {0}),            # the top token alone reaches p exactly
    ([0.5, 0.25, 0.125, 0.125], 0.3, {0}),            # at least one token
    ([0.5, 0.25, 0.125, 0.125], 0.6, {0, 1}),         # the token that crosses p is in
    ([0.5, 0.25, 0.125, 0.125], 0.75, {0, 1}),        # reaching p exactly stops there
    ([0.5, 0.25, 0.125, 0.125], 0.76, {0, 1, 2, 3}),  # the crossing token ties with the next: both in
    ([0.5, 0.25, 0.125, 0.125], 1.0, {0, 1, 2, 3}),
    ([0.125, 0.5, 0.125, 0.25], 0.6, {1, 3}),         # order of the vocabulary does not matter
    ([0.25, 0.25, 0.25, 0.25], 0.1, {0, 1, 2, 3}),    # all tied: all in
    ([0.0625, 0.4375, 0.5, 0.0], 0.95, {0, 1, 2}),
    ([0.0625, 0.4375, 0.5, 0.0], 1.0, {0, 1, 2, 3}),  # p = 1 keeps every token, even p = 0
])
def test_nucleus_on_hand_built_distributions(probs, p, want):
    assert _kept(probs, p) == want
    assert _kept(probs, torch.tensor(p)) == want  # the device-tensor form the decoder uses


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 16), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
       p=st.floats(min_value=1e-3, max_value=1.0))
def test_nucleus_is_the_smallest_set_reaching_p(weights, p):
    # Probabilities k/2^m are exact in float32, so the sums below are exact too.
    total = 1 << (sum(weights) - 1).bit_length()
    probs = [Fraction(w, total) for w in weights]
    probs[0] += 1 - sum(probs)  # make them sum to 1, still dyadic
    kept = _kept([float(x) for x in probs], p)
    if p == 1.0:
        assert kept == set(range(len(probs)))  # p = 1 keeps everything, zero-probability tokens too
        return
    mass = sum(probs[i] for i in kept)
    threshold = min(probs[i] for i in kept)
    assert all((probs[i] >= threshold) == (i in kept) for i in range(len(probs)))  # a top set, ties together
    assert mass >= Fraction(p) or len(kept) == len(probs)  # reaches p
    above = sum(x for x in probs if x > threshold)  # without the boundary group it falls short
    assert above < Fraction(p)


def test_top_k_keeps_the_k_likeliest_and_ties_with_the_kth():
    logits = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0])
    for k, want in [(1, {1, 3}), (2, {1, 3}), (3, {1, 2, 3}), (5, set(range(5))), (0, set(range(5)))]:
        probs = sampling_probs(logits, 1.0, top_k=k)
        assert set(torch.nonzero(probs).flatten().tolist()) == want
        ref = torch.zeros(5)
        idx = sorted(want)
        ref[idx] = torch.softmax(logits[idx], -1)
        torch.testing.assert_close(probs, ref)


def test_temperature_scales_logits_then_top_k_then_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])
    torch.testing.assert_close(sampling_probs(logits, 0.5), torch.softmax(logits / 0.5, -1))
    got = sampling_probs(logits, 2.0, top_k=3, top_p=0.5)
    cut = torch.softmax(logits[0, [0, 1, 2]] / 2.0, -1)  # top-3 renormalised: ~[0.41, 0.32, 0.27]
    want = torch.zeros(1, 5)
    want[0, [0, 1]] = cut[:2] / cut[:2].sum()  # 0.41 < 0.5, adding 0.32 crosses it
    torch.testing.assert_close(got, want)


def test_temperature_zero_is_argmax():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    logits[0, 3] = logits[0, 7] = 100.0  # a tie: the first index wins, like torch.argmax
    got = sample(logits, SamplingParams(temperature=0.0, top_p=0.5, top_k=3))
    assert torch.equal(got.squeeze(-1), logits.argmax(-1))
    assert got[0, 0] == 3


def test_sampling_frequencies_follow_the_cut_distribution():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).repeat(40000, 1)
    params = SamplingParams(temperature=1.0, top_p=0.8, top_k=0)
    ids = sample(logits, params, torch.Generator().manual_seed(0)).flatten()
    freq = torch.bincount(ids, minlength=5).float() / len(ids)
    # nucleus at 0.8: 0.4 + 0.3 = 0.7 < 0.8, so 0.15 crosses it and is in; renormalised by 0.85
    want = torch.tensor([0.4, 0.3, 0.15, 0.0, 0.0]) / 0.85
    assert freq[3:].sum() == 0
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)


def test_same_generator_seed_same_samples():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, top_p=0.9)
    a = sample(logits, params, torch.Generator().manual_seed(5))
    b = sample(logits, params, torch.Generator().manual_seed(5))
    c = sample(logits, params, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("change, words", [
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_p": float("nan")}, "top_p"),
    ({"temperature": -0.1}, "temperature must be a number >= 0"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"seed": -3}, "seed"),
    ({"stop": ("",)}, "stop must be a list of non-empty strings"),
    ({"stop": "x"}, "stop must be a list"),
])
def test_invalid_sampling_parameters_are_lab_errors(change, words):
    params = dataclasses.replace(SamplingParams(), **change)
    with pytest.raises(LabError, match="invalid sampling parameters") as e:
        params.validate()
    assert words in str(e.value)
    with pytest.raises(LabError):
        Request([1], params)
