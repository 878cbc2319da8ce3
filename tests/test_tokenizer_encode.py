"""Encoding and decoding: tiktoken parity, a slow reference, round trips, specials, streaming, memory."""

from __future__ import annotations

import json
import re
import tracemalloc

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from project_data import PROJECT_TEXTS

from lm.tokenizer import GPT2_PATTERN, Tokenizer, get_tokenizer, train_bpe
from lm.tokenizer import compiled as compiled_path
from lm.tokenizer.byte_unicode import unicode_to_byte
from lm.tokenizer.pretokenize import PRETOKEN_RE, WHITESPACE, cut_fields

EOT = "<|endoftext|>"


# ----- references


def reference_encode(text: str, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                     special_tokens: list[str]) -> list[int]:
    """Split on specials (longest first), GPT-2 regex, then merge the lowest-rank pair until none applies."""
    token_id = {}
    for idx in sorted(vocab):
        token_id.setdefault(vocab[idx], idx)
    rank = {pair: r for r, pair in reversed(list(enumerate(merges)))}
    if special_tokens:
        alternatives = sorted(special_tokens, key=len, reverse=True)
        pieces = regex.split("(" + "|".join(regex.escape(s) for s in alternatives) + ")", text)
    else:
        pieces = [text]
    ids = []
    for i, piece in enumerate(pieces):
        if i % 2:
            ids.append(token_id[piece.encode()])
            continue
        for word in regex.findall(GPT2_PATTERN, piece):
            parts = [bytes([b]) for b in word.encode()]
            while len(parts) > 1:
                pairs = [(rank.get((a, b), float("inf")), j) for j, (a, b) in enumerate(zip(parts, parts[1:]))]
                best, j = min(pairs)
                if best == float("inf"):
                    break
                parts[j:j + 2] = [parts[j] + parts[j + 1]]
            ids.extend(token_id[p] for p in parts)
    return ids


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files, [EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files):
    """tiktoken's GPT-2 encoding built from the same files (tiktoken would download them otherwise)."""
    tiktoken = pytest.importorskip("tiktoken")
    decoder = unicode_to_byte()
    vocab = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in token): idx for token, idx in vocab.items() if token != EOT}
    return tiktoken.Encoding("gpt2-shared", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: vocab[EOT]})


def both_paths(tok: Tokenizer) -> list[Tokenizer]:
    """Fresh tokenizers with the same merges: the pure-Python path, and the C extension's when built."""
    paths = [Tokenizer(tok.vocab, tok.merges, tok.special_tokens, compiled=False)]
    if compiled_path.AVAILABLE:
        paths.append(Tokenizer(tok.vocab, tok.merges, tok.special_tokens, compiled=True))
    return paths


_SMALL_CORPUS = ("the cat sat on the mat. The cat's hat!  Then\n\nthe dog\t barked 123 times,\n"
                 "café naïve — 日本語 テキスト 🙂🙂 ok?\n") * 20


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Tokenizer:
    """A tokenizer trained here, so these tests run without the shared data too."""
    path = tmp_path_factory.mktemp("small") / "corpus.txt"
    path.write_text(_SMALL_CORPUS + EOT + _SMALL_CORPUS.upper(), encoding="utf-8")
    vocab, merges = train_bpe(path, 400, [EOT])
    return Tokenizer(vocab, merges, [EOT], compiled=False)


# Whitespace of every kind next to spaces is what the space-field fast path must get right.
_TRICKY = [" ", "  ", "   ", "\n", "\n\n", " \n", "\t", "\r\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2028", "\u3000",
           "a", "cat", "The", "'s", "'ll", "1", "23", ".", "!?", "é", "日本", "🙂", "\u0301", "\x00", "\uffff", EOT, "<|"]
_tricky_text = st.lists(st.sampled_from(_TRICKY), max_size=60).map("".join)


@pytest.fixture(scope="module")
def tricky(tmp_path_factory) -> Tokenizer:
    """Trained on the tricky pieces themselves, so it has merges such as "\n " and "  a": a wrong
    pre-token boundary then changes the ids instead of going unnoticed."""
    import random

    rng = random.Random(0)
    text = "".join(rng.choice(_TRICKY) for _ in range(20000))
    path = tmp_path_factory.mktemp("tricky") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(path, 700, [EOT])
    return Tokenizer(vocab, merges, [EOT], compiled=False)
_any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


# ----- pre-tokenization


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(_tricky_text, _any_text))
def test_possessive_pretokenizer_matches_gpt2_pattern(text):
    assert PRETOKEN_RE.findall(text) == regex.findall(GPT2_PATTERN, text)


def test_whitespace_class_is_regex_whitespace():
    """Safe cuts are found with the stdlib's re and this class; it must be exactly regex's \\s."""
    every = "".join(map(chr, range(0x110000))).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert set(regex.findall(r"\s", every)) == set(re.findall(f"[{WHITESPACE}]", every))


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_tricky_text, _any_text))
def test_safe_cuts_preserve_pretokens(text):
    fields = cut_fields(text)
    assert "".join(fields) == text
    assert [p for f in fields for p in regex.findall(GPT2_PATTERN, f)] == regex.findall(GPT2_PATTERN, text)


# ----- parity with references


def test_gpt2_matches_tiktoken_on_tinyshakespeare(gpt2, tiktoken_gpt2, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert len(expected) == 338025
    for fresh in both_paths(gpt2):
        assert fresh.encode(text) == expected  # empty caches: pre-tokens, numpy BPE rounds
        assert fresh.encode(text) == expected  # known pre-tokens, new fields
        assert fresh.encode(text) == expected  # known fields


def test_gpt2_matches_tiktoken_on_tinystories_with_eot(gpt2, tiktoken_gpt2, shared_data):
    text = (shared_data / "tinystories_sample.txt").read_text(encoding="utf-8")
    expected = tiktoken_gpt2.encode(text, allowed_special={EOT})
    for fresh in both_paths(gpt2):
        ids = fresh.encode(text)
        assert ids == expected
        assert ids.count(50256) == text.count(EOT) > 0
        assert fresh.decode(ids) == text


@pytest.mark.parametrize("name", sorted(PROJECT_TEXTS))
def test_gpt2_matches_tiktoken_on_the_project_texts(gpt2, tiktoken_gpt2, monkeypatch, name):
    """The texts shipped with the tests (no ../shared needed), long enough for the first-pass path."""
    import lm.tokenizer.tokenizer as module

    monkeypatch.setattr(module, "_FRESH_MIN_FIELDS", 64)  # a few KB take the first-pass path too
    text = PROJECT_TEXTS[name].read_text(encoding="utf-8")
    expected = tiktoken_gpt2.encode(text, allowed_special={EOT})
    for fresh in both_paths(gpt2):
        assert fresh.encode(text) == expected
        assert fresh.encode(text) == expected  # warm caches
        assert fresh.decode(expected) == text


def test_a_bpe_trained_here_matches_tiktoken_given_its_ranks(tmp_path):
    """tiktoken as the reference without GPT-2's files (offline): merges trained on the shipped texts, handed to
    tiktoken as ranks (the ids grow with the merge order, so ranks and ids coincide)."""
    tiktoken = pytest.importorskip("tiktoken")
    texts = [path.read_text(encoding="utf-8") for path in PROJECT_TEXTS.values()]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(texts), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 1000, [EOT])
    reference = Tokenizer(vocab, merges, [EOT])
    ranks = {token: idx for idx, token in vocab.items() if token != EOT.encode()}
    enc = tiktoken.Encoding("trained", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOT: reference.special_token_id(EOT)})
    words = " ".join(texts).split(" ")
    rng = __import__("random").Random(0)
    mixed = ["".join(rng.choice(words) + rng.choice(["", " ", "  ", "\n", "é", "'s", "3"]) for _ in range(12))
             for _ in range(300)]
    for tok in both_paths(reference):
        for text in texts + mixed:
            assert tok.encode(text) == enc.encode(text, allowed_special={EOT})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_tricky_text, _any_text))
def test_encode_matches_tiktoken_on_random_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special={EOT})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_tricky_text, _any_text))
def test_encode_matches_slow_reference(small, tricky, text):
    for tok in (small, tricky):
        expected = reference_encode(text, tok.vocab, tok.merges, [EOT])
        assert tok.encode(text) == expected
        assert tok.encode(text) == expected  # cached path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_tricky_text, _any_text))
def test_first_pass_numpy_spans_match_reference(small, tricky, monkeypatch, text):
    """The first-pass path (distinct fields pre-tokenized together, ids gathered with numpy), forced on
    every text, and the second pass that fills the field cache from it, equal the reference."""
    import lm.tokenizer.tokenizer as module

    monkeypatch.setattr(module, "_FRESH_MIN_FIELDS", 1)
    monkeypatch.setattr(module, "_FRESH_MAX_CACHED", 1 << 30)
    for tok in (small, tricky):
        expected = reference_encode(text, tok.vocab, tok.merges, [EOT])
        fresh = Tokenizer(tok.vocab, tok.merges, [EOT], compiled=False)
        assert fresh.encode(text) == expected
        assert fresh.encode(text) == expected  # pre-tokens known: fills the field cache
        assert tok.encode(text) == expected


def test_field_cache_clearing_keeps_results(monkeypatch):
    monkeypatch.setattr(Tokenizer, "CACHE_MAX_ENTRIES", 8)
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b" ", b"t"), (b"h", b"e"), (b" t", b"he"), (b"c", b"a")]
    for a, b in merges:
        vocab[len(vocab)] = a + b
    tok = Tokenizer(vocab, merges, compiled=False)
    text = " ".join(f"the cat{i} ca{i}t" for i in range(40))
    for _ in range(2):
        assert tok.encode(text) == reference_encode(text, vocab, merges, [])
    # cleared rather than grown: at most one text's fields, and at most the limit of pre-tokens
    assert len(tok._field_cache) <= len(set(cut_fields(text)))
    assert len(tok._cache) <= 8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.one_of(_tricky_text, _any_text, st.text(alphabet="a ", max_size=30)).filter(bool),
                      min_size=1, max_size=40))
def test_batch_bpe_equals_per_piece(tricky, small, words):
    """The numpy rounds (cold-cache path) give what merging one pair at a time gives."""
    from lm.tokenizer.bpe_batch import BatchBpe, rounds_are_exact

    for tok in (tricky, small):
        assert rounds_are_exact(tok._merge_pairs, tok._merge_result, tok._byte_ids) and tok._rounds_exact
        batch = BatchBpe(tok._merge_pairs, tok._merge_result, tok._byte_ids, tok.vocab_size)
        assert batch.encode([w.encode() for w in words]) == [tok._bpe(w) for w in words]


@pytest.mark.parametrize("piece", ["a" * 700, "ab" * 350, " " * 600 + "x", "=" * 500, "1234567890" * 50,
                                   "the" * 200, "éa" * 200], ids=lambda p: f"{p[:4]!r}x{len(p)}")
def test_long_pre_tokens(tricky, small, piece):
    """Pre-tokens over 256 bytes take the heap path; same ids as the one-merge-at-a-time reference."""
    for tok in (tricky, small):
        assert tok.encode(piece) == reference_encode(piece, tok.vocab, tok.merges, [EOT])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(word=st.text(alphabet=st.sampled_from(list("aabt h'é1")), min_size=1, max_size=120))
def test_heap_bpe_equals_loop(tricky, small, word):
    for tok in (tricky, small):
        ids = [tok._byte_ids[b] for b in word.encode()]
        assert tok._bpe_long(list(ids)) == tok._bpe(word)


def test_merges_that_make_a_token_twice_skip_the_batch_path():
    from lm.tokenizer.bpe_batch import rounds_are_exact

    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"a", b"bc"), (b"abc", b"d")]
    for a, b in merges:
        if a + b not in vocab.values():
            vocab[len(vocab)] = a + b
    tok = Tokenizer(vocab, merges, compiled=False)
    assert not rounds_are_exact(tok._merge_pairs, tok._merge_result, tok._byte_ids)
    assert not tok._rounds_exact
    text = " ".join(f"abcd{i} xbcd{i} abc" for i in range(400))  # enough new pre-tokens for the batch path
    assert tok.encode(text) == reference_encode(text, vocab, merges, [])


# ----- round trips and decoding


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_any_text)
def test_roundtrip_arbitrary_unicode(small, text):
    assert small.decode(small.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_tricky_text, _any_text))
def test_roundtrip_gpt2(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_roundtrip_emoji_combining_nul(small):
    text = "e\u0301 👩‍👩‍👧 \x00\x00 a\u0308\u0323 🇫🇷 \U0010ffff"
    assert small.decode(small.encode(text)) == text


def test_decode_never_raises(small):
    # a lone continuation byte, a truncated 3-byte sequence, an unknown id
    ids = [small.encode("a")[0], 0x80 + 1, small.encode("é")[0], 10**9, -1]
    text = small.decode(ids)
    assert "\ufffd" in text and text.startswith("a")
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [])
    assert tok.decode([0xE6, 0x97]) == "\ufffd"
    assert tok.decode([0xE6, 0x97, 0xA5]) == "日"


# ----- special tokens


def test_overlapping_special_tokens_longest_wins():
    vocab = {i: bytes([i]) for i in range(256)}
    tok = get_tokenizer(vocab, [], [EOT, EOT + EOT])
    single, double = tok.special_token_id(EOT), tok.special_token_id(EOT + EOT)
    assert single != double and {single, double} == {256, 257}  # absent from the vocab: appended
    ids = tok.encode(f"a{EOT}{EOT}b{EOT}{EOT}{EOT}")
    assert ids == [ord("a"), double, ord("b"), double, single]
    assert tok.decode(ids) == f"a{EOT}{EOT}b{EOT}{EOT}{EOT}"


def test_special_token_in_vocab_keeps_its_id(gpt2):
    assert gpt2.special_token_id(EOT) == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.encode(f"hi{EOT}") == [5303, 50256]


def test_without_specials_the_text_is_ordinary(gpt2_files):
    tok = Tokenizer.from_files(*gpt2_files)
    assert 50256 not in tok.encode(EOT)
    assert tok.decode(tok.encode(EOT)) == EOT


# ----- streaming


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_tricky_text, _any_text), cuts=st.lists(st.integers(0, 400), max_size=12),
       buffer=st.sampled_from([1, 3, 16]))
def test_encode_iterable_equals_encode(tricky, monkeypatch, text, cuts, buffer):
    import lm.tokenizer.tokenizer as module

    monkeypatch.setattr(module, "_STREAM_BUFFER_CHARS", buffer)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    assert list(tricky.encode_iterable(pieces)) == reference_encode(text, tricky.vocab, tricky.merges, [EOT])


def test_encode_iterable_special_token_across_pieces(small, monkeypatch):
    import lm.tokenizer.tokenizer as module

    monkeypatch.setattr(module, "_STREAM_BUFFER_CHARS", 4)
    tok = Tokenizer(small.vocab, small.merges, [EOT, EOT + EOT], compiled=False)
    text = f"the cat{EOT}{EOT} sat{EOT}"
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    assert list(tok.encode_iterable(pieces)) == tok.encode(text)
    assert tok.special_token_id(EOT + EOT) in tok.encode(text)


def test_encode_iterable_over_a_file(small, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_SMALL_CORPUS * 30 + EOT + "x" * 70000 + " end", encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        streamed = list(small.encode_iterable(f))
    assert streamed == small.encode(path.read_text(encoding="utf-8"))


def _stream_peak(tokenizer: Tokenizer, text: str, total_chars: int) -> tuple[int, int]:
    """tracemalloc peak while streaming ``total_chars`` of ``text`` line by line, and the ids seen."""
    lines = text.splitlines(keepends=True)

    def stream():
        sent = 0
        while sent < total_chars:
            for line in lines:
                yield line
                sent += len(line)

    tracemalloc.start()
    try:
        count = sum(1 for _ in tokenizer.encode_iterable(stream()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, count


@pytest.mark.slow
def test_encode_iterable_memory_is_bounded(gpt2):
    """5 MB streamed: peak traced memory stays under a fixed bound (no list of ids, bounded caches)."""
    text = PROJECT_TEXTS["verse"].read_text(encoding="utf-8") * 80
    fresh = Tokenizer(gpt2.vocab, gpt2.merges, [EOT])
    peak_small, _ = _stream_peak(fresh, text[:200_000], 1_000_000)
    peak_big, count = _stream_peak(fresh, text, 5_000_000)
    assert count > 1_000_000  # the 5 MB really went through
    assert peak_big < 16 * 2**20, f"peak {peak_big / 2**20:.1f} MiB"
    # the ids of 5 MB alone (as a list) would need more than 10 MB: none is kept
    assert peak_big < peak_small + 16 * 2**20


def test_lone_surrogate_is_a_clear_error(small):
    from lm.errors import TokenizerError

    with pytest.raises(TokenizerError, match="surrogate"):
        small.encode("bad \ud800 text")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab Z9.,'\n\t\r\x0b\x0c\x1c\x1d\x1e\x1f") + ["  ", "'s", "\r\n", "the"]),
                max_size=200).map("".join))
def test_ascii_field_cutting_equals_the_string_path(text):
    """The numpy first-pass cut gives exactly the distinct fields of the string cut."""
    from lm.tokenizer.field_ids import ascii_distinct_fields, distinct_fields
    from lm.tokenizer.pretokenize import cut_fields

    if not text.isascii():
        return
    fast = ascii_distinct_fields(text, 1)
    if fast is None:  # too short or a hash collision: the caller takes the string path
        return
    distinct, which = fast
    ref_distinct, ref_which = distinct_fields(cut_fields(text))
    assert distinct == ref_distinct
    assert which.tolist() == ref_which.tolist()
