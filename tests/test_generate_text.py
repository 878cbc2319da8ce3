"""Streamed text: UTF-8 never split, stop strings never shown, and a model trained
on a repeated pattern reproducing it (greedily, past the context length too)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.errors import LabError
from lm.decode import Generator, SamplingParams, TextStream
from test_generate_support import (EOS_ID, PATTERN_CFG, PATTERN_IDS, PATTERN_TEXT, byte_tokenizer, pattern_model,
                                   random_model)

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=200)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


# ----------------------------------------------------------------------------- TextStream

def test_pieces_wait_for_whole_characters():
    ts = TextStream()
    euro = "€".encode()  # e2 82 ac
    assert ts.push(b"a" + euro[:1]) == "a"
    assert ts.push(euro[1:2]) == ""
    assert ts.push(euro[2:] + b"b") == "€b"
    assert ts.flush() == ""


def test_an_unfinished_character_at_the_end_becomes_a_replacement_character():
    ts = TextStream()
    assert ts.push(b"x\xe2\x82") == "x"
    assert ts.flush() == "\ufffd"


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd"), max_size=40),
       cuts=st.lists(st.integers(0, 200)))
def test_any_byte_split_streams_whole_characters(text, cuts):
    ts = TextStream()
    pieces = [ts.push(chunk) for chunk in _split(text.encode(), cuts)] + [ts.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # a split character would show up as U+FFFD


def test_stop_string_is_not_shown_even_across_pieces():
    ts = TextStream(["o W"])
    out = [ts.push(b"Hel"), ts.push(b"lo"), ts.push(b" Wo"), ts.push(b"rld")]
    assert out == ["Hel", "l", "", ""]  # "o" and "o " were held: they could start "o W"
    assert ts.stopped and ts.flush() == ""


def test_text_that_only_looked_like_a_stop_string_is_released():
    ts = TextStream(["XYZ", "€!"])
    assert ts.push(b"aX") == "a"
    assert ts.push(b"Yb") == "XYb"
    assert ts.push("c€".encode()) == "c"
    assert ts.push(b"?") == "€?"
    assert ts.push(b"X") == ""
    assert ts.flush() == "X"  # the end: nothing more can complete it
    assert not ts.stopped


@settings(max_examples=150, deadline=None)
@given(before=st.text(max_size=20), stop=st.text(min_size=1, max_size=4), after=st.text(max_size=10),
       cuts=st.lists(st.integers(0, 200)))
def test_output_is_the_text_before_the_first_stop_string(before, stop, after, cuts):
    text = before + stop + after
    ts = TextStream([stop])
    out = "".join(ts.push(chunk) for chunk in _split(text.encode(), cuts)) + ts.flush()
    assert out == text[:text.find(stop)]
    assert ts.stopped


# ----------------------------------------------------------------------------- Generator

@pytest.fixture(scope="module")
def gen():
    return Generator(pattern_model(), byte_tokenizer())


def test_trained_pattern_is_reproduced_greedily_and_stops_at_eos(gen):
    items = list(gen.stream("ab", GREEDY))
    result = items[-1]
    assert result.event == "eos" and result.finished
    assert "".join(i.text for i in items) == "c€de ü!"
    tokens = [i for i in items if i.token_id is not None]
    assert [i.token_id for i in tokens] == PATTERN_IDS[2:-1]  # the EOS token ends the stream, unshown
    assert all(0.9 < i.prob <= 1.0 for i in tokens)


def test_multibyte_characters_come_out_whole_when_their_bytes_are_separate_tokens(gen):
    items = [i for i in gen.stream("ab", GREEDY) if i.token_id is not None]
    euro = "€".encode()
    by_token = {i.token_id: i.text for i in items}
    assert by_token[euro[0]] == "" and by_token[euro[1]] == "" and by_token[euro[2]] == "€"
    assert by_token["ü".encode()[0]] == "" and by_token["ü".encode()[1]] == "ü"
    assert not any("\ufffd" in i.text for i in items)


def test_stop_strings_end_the_reply_and_are_not_shown(gen):
    r = gen.generate("ab", SamplingParams(temperature=0, stop=("de",)))
    assert (r.text, r.finish_reason) == ("c€", "stop")
    r = gen.generate("ab", SamplingParams(temperature=0, stop=("dX", "€!")))  # prefixes only: nothing stops
    assert (r.text, r.finish_reason) == ("c€de ü!", "eos")


def test_pattern_continues_past_the_context_length(gen):
    n = 3 * PATTERN_CFG.context_length + 5
    items = list(gen.stream("abc", SamplingParams(temperature=0, max_new_tokens=n, stop_at_eos=False)))
    overflows = [i for i in items if i.event == "overflow"]
    assert len(overflows) >= 3 and "context full" in overflows[0].message
    ids = [i.token_id for i in items if i.token_id is not None]
    cycle = PATTERN_IDS * 20
    assert ids == cycle[3:3 + n]
    assert items[-1].event == "length"
    text = "".join(i.text for i in items)
    assert text.startswith("€de ü!<|endoftext|>abc€de ü!")  # EOS shows as text when it does not stop


def test_max_new_tokens_and_result_statistics(gen):
    r = gen.generate("ab", SamplingParams(temperature=0, max_new_tokens=4))
    assert r.finish_reason == "length" and r.new_tokens == 4 and r.prompt_tokens == 2
    assert r.text == "c€"  # the 4th token completes the euro sign
    assert r.seconds > 0 and r.tokens_per_s > 0 and 0 <= r.first_token_seconds <= r.seconds


def test_conversation_continues_until_reset(gen):
    gen.reset()
    first = gen.generate("ab", GREEDY, continue_history=True)
    assert first.text == "c€de ü!" and gen.history == PATTERN_IDS
    second = gen.generate("abc€", GREEDY, continue_history=True)  # after EOS, a new document
    assert second.text == "de ü!" and second.prompt_tokens == 6
    # 26 tokens outgrow the context of 24: the oldest were dropped on the way.
    assert second.messages and "context full" in second.messages[0]
    assert gen.history[-len(PATTERN_IDS):] == PATTERN_IDS and gen.history[-1] == EOS_ID
    gen.reset()
    assert gen.history == []


def test_empty_prompt_starts_a_new_document(gen):
    r = gen.generate("", GREEDY)
    assert r.prompt_tokens == 1 and r.text == PATTERN_TEXT


def test_callback_sees_every_item(gen):
    seen = []
    r = gen.generate("ab", GREEDY, on_item=seen.append)
    assert "".join(i.text for i in seen) == r.text and seen[-1].finished


def test_seeded_sampling_is_reproducible():
    gen = Generator(random_model(PATTERN_CFG, seed=1), byte_tokenizer())
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=40, seed=7, stop_at_eos=False)
    a, b = gen.generate("xy", params), gen.generate("xy", params)
    assert a.token_ids == b.token_ids and a.text == b.text
    params.seed = 8
    assert gen.generate("xy", params).token_ids != a.token_ids


def test_invalid_parameters_fail_before_generating(gen):
    with pytest.raises(LabError, match="top_p"):
        gen.stream("ab", SamplingParams(top_p=2.0))
