"""Continuous batching: every request gets the tokens it gets alone (greedy and seeded
sampling), whichever slot it lands in and whoever joins or leaves the batch around it;
slots are reused, the queue waits for a free slot, cancelling frees a slot at once."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from lm.decode import Decoded, Engine, Request, SamplingParams
from lm.model import ModelConfig
from test_generate_support import random_model

CFG = ModelConfig(vocab_size=61, context_length=40, d_model=32, num_layers=2, num_heads=4, d_ff=48)
PARAMS = [
    SamplingParams(temperature=0, max_new_tokens=9),
    SamplingParams(temperature=0.9, top_p=0.8, max_new_tokens=14, seed=1),
    SamplingParams(temperature=1.3, top_k=6, max_new_tokens=5, seed=2),
    SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=20, seed=3),
    SamplingParams(temperature=1.0, top_k=3, top_p=0.5, max_new_tokens=11, seed=4),
    SamplingParams(temperature=0, max_new_tokens=30),  # runs past the context: overflow re-read
]
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10], [4], [11, 12], [13, 14, 15, 16], list(range(20, 40))]


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=11)


def _tokens(request):
    return [e.token_id for e in request.events if isinstance(e, Decoded)]



def _run_alone(model, ids, params, max_batch=1):
    engine = Engine(model, max_batch=max_batch)
    request = engine.submit(Request(ids, params))
    while not request.done:
        engine.run_round()
    return _tokens(request)


@pytest.mark.parametrize("max_batch", [2, 3])
def test_requests_joining_and_leaving_get_what_they_get_alone(model, max_batch):
    want = [_run_alone(model, ids, p) for ids, p in zip(PROMPTS, PARAMS)]
    assert len(want[5]) == 30 and len(set(map(tuple, want))) == len(want)
    engine = Engine(model, max_batch=max_batch)
    requests = [Request(ids, p) for ids, p in zip(PROMPTS, PARAMS)]
    joins = {0: [0, 1], 3: [2], 4: [3, 4], 9: [5]}  # round -> requests submitted before it
    rounds = 0
    while rounds < 500 and not (all(r.done for r in requests) and rounds > max(joins)):
        for i in joins.get(rounds, []):
            engine.submit(requests[i])
        engine.run_round()
        rounds += 1
    assert all(r.finish_reason == "length" for r in requests)
    assert [_tokens(r) for r in requests] == want
    assert engine.active == 0 and engine.pending() == 0


def test_a_request_gets_the_same_tokens_in_every_slot(model):
    ids, params = PROMPTS[1], PARAMS[1]
    want = _run_alone(model, ids, params)
    for slot in range(3):
        engine = Engine(model, max_batch=3)
        fillers = [engine.submit(Request([7] * (s + 1), SamplingParams(temperature=1.0, max_new_tokens=25, seed=s)))
                   for s in range(slot)]
        engine.run_round()
        r = engine.submit(Request(ids, params))
        engine.run_round()
        assert engine.slots[slot].request is r
        while not r.done:
            engine.run_round()
        assert _tokens(r) == want, f"slot {slot}"
        for f in fillers:
            f.cancel()


def test_the_queue_waits_for_a_free_slot_and_cancel_frees_it_at_once(model):
    engine = Engine(model, max_batch=1)
    long = engine.submit(Request([1, 2], SamplingParams(temperature=0, max_new_tokens=30)))
    waiting = engine.submit(Request([3], SamplingParams(temperature=0, max_new_tokens=2)))
    for _ in range(3):
        engine.run_round()
    assert engine.active == 1 and engine.pending() == 1 and long.produced == 3 and waiting.produced == 0
    long.cancel()
    engine.run_round()  # the cancelled request retires and the waiting one is admitted in the same round
    assert long.finish_reason == "cancelled" and long.produced == 3
    assert engine.slots[0].request is waiting and engine.pending() == 0
    while not waiting.done:
        engine.run_round()
    assert _tokens(waiting) == _run_alone(model, [3], waiting.params)


def test_same_seed_same_text_and_a_new_seed_differs(model):
    p = SamplingParams(temperature=1.0, max_new_tokens=20, seed=9)
    a = _run_alone(model, [1, 2], p)
    assert a == _run_alone(model, [1, 2], p, max_batch=4)
    assert a != _run_alone(model, [1, 2], dataclasses.replace(p, seed=10))


def test_a_shared_prefix_is_read_once(model):
    engine = Engine(model, max_batch=2)
    reads = []
    real = engine.forward_tokens
    engine.forward_tokens = lambda ids, start, slot=0: reads.append((len(ids), start)) or real(ids, start, slot)
    first = engine.submit(Request(list(range(1, 13)), SamplingParams(temperature=0, max_new_tokens=3)))
    while not first.done:
        engine.run_round()
    follow = first.history + [30, 31]
    second = engine.submit(Request(follow, SamplingParams(temperature=0, max_new_tokens=4)))
    while not second.done:
        engine.run_round()
    assert reads == [(11, 0), (2, 14)]  # the turn reads only what the slot's cache lacks
    assert _tokens(second) == _run_alone(model, follow, second.params)


def test_a_failing_step_fails_the_requests_in_flight_and_the_engine_serves_on(model):
    engine = Engine(model, max_batch=2)
    real, calls = engine._launch_chunk, []

    def launch():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real()
    engine._launch_chunk = launch
    thread = threading.Thread(target=engine.serve_forever, daemon=True)
    thread.start()
    try:
        failed = [engine.submit(Request([1, 2], SamplingParams(temperature=0, max_new_tokens=20))) for _ in range(3)]
        _wait(lambda: all(r.done for r in failed))
        assert all(r.finish_reason == "error" and "out of memory" in r.error for r in failed)
        after = engine.submit(Request([3], SamplingParams(temperature=0, max_new_tokens=4)))
        _wait(lambda: after.done)
        assert after.finish_reason == "length" and _tokens(after) == _run_alone(model, [3], after.params)
        assert engine.active == 0 and engine.pending() == 0
    finally:
        engine.stop()
        thread.join(30)
    assert not thread.is_alive()


def _wait(done, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "the engine thread did not finish in time"
        time.sleep(0.01)
