"""The C extension's encoding (lm/tokenizer/_encode_c.c) against the pure-Python path, the reference.

Skipped, with the reason, where the extension was not built (no C compiler when
lm was installed): then lm encodes with the pure-Python path only.
"""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from project_data import PROJECT_TEXTS

from lm.errors import TokenizerError
from lm.tokenizer import Tokenizer, train_bpe
from lm.tokenizer import compiled as compiled_path

EOT = "<|endoftext|>"

pytestmark = pytest.mark.skipif(
    not compiled_path.AVAILABLE,
    reason="lm's C extension (lm.tokenizer._encode_c) is not built: `pip install -e .` builds it when a C compiler "
           "is present; without one lm uses the pure-Python path",
)

# Every class of GPT-2's pattern, in and out of the BMP, next to spaces: astral letters (U+20000, U+1D400),
# an astral digit (U+1D7CE), emoji, Unicode whitespace, contractions, the special token and a prefix of it.
_PIECES = [" ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "\x0b", "\x85", "\xa0", "\u2028", "\u3000", "a", "cat",
           "The", "'s", "'ll", "'ve", "'re", "'d", "'", "'x", "1", "23", "½", "٣", ".", "!?", "é", "日本", "一",
           "🙂", "\U00020000", "\U0001d400", "\U0001d7ce", "\u0301", "\x00", "\uffff", EOT, "<|", "=" * 300]
_mixed = st.lists(st.sampled_from(_PIECES), max_size=60).map("".join)
_any = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, list]:
    """Merges trained on the pieces themselves, so a wrong pre-token boundary changes the ids."""
    rng = random.Random(0)
    text = "".join(rng.choice(_PIECES[:-1]) for _ in range(20000))
    path = tmp_path_factory.mktemp("pieces") / "corpus.txt"
    path.write_text(text + PROJECT_TEXTS["stories"].read_text(encoding="utf-8"), encoding="utf-8")
    return train_bpe(path, 800, [EOT])


@pytest.fixture(scope="module")
def pair(trained) -> tuple[Tokenizer, Tokenizer]:
    vocab, merges = trained
    return Tokenizer(vocab, merges, [EOT], compiled=False), Tokenizer(vocab, merges, [EOT], compiled=True)


def test_default_is_the_compiled_path(trained):
    vocab, merges = trained
    assert Tokenizer(vocab, merges, [EOT]).is_compiled
    assert not Tokenizer(vocab, merges, [EOT], compiled=False).is_compiled


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_mixed, _any))
def test_compiled_equals_pure_python(pair, text):
    pure, fast = pair
    expected = pure.encode(text)
    assert fast.encode(text) == expected
    assert fast.encode(text) == expected  # from the pre-token cache
    assert fast.decode(expected) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_mixed, _any))
def test_compiled_gpt2_equals_pure_python(gpt2_files, text):
    pure, fast = _gpt2_pair(gpt2_files)
    assert fast.encode(text) == pure.encode(text)


_GPT2: dict = {}


def _gpt2_pair(files) -> tuple[Tokenizer, Tokenizer]:
    if not _GPT2:
        pure = Tokenizer.from_files(*files, [EOT], compiled=False)
        _GPT2["pair"] = (pure, Tokenizer(pure.vocab, pure.merges, [EOT], compiled=True))
    return _GPT2["pair"]


@pytest.mark.parametrize("name", sorted(PROJECT_TEXTS))
def test_compiled_equals_pure_python_on_the_project_texts(pair, name):
    pure, fast = pair
    text = PROJECT_TEXTS[name].read_text(encoding="utf-8")
    assert fast.encode(text) == pure.encode(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_mixed, _any))
def test_encode_to_bytes_equals_encode(pair, text):
    import numpy as np

    pure, fast = pair
    ids = pure.encode(text)
    for itemsize, dtype in ((2, "<u2"), (4, "<u4")):
        for tok in (pure, fast):
            assert np.frombuffer(tok.encode_to_bytes(text, itemsize), dtype=dtype).tolist() == ids


@pytest.mark.parametrize("piece", ["a" * 700, "ab" * 350, " " * 600 + "x", "=" * 500, "1234567890" * 50,
                                   "é" * 300, "🙂" * 100], ids=lambda p: f"{p[:2]!r}x{len(p)}")
def test_long_pre_tokens(pair, piece):
    """Pre-tokens over LONG_PIECE bytes go to the pure-Python heap; short ones are merged in C."""
    pure, fast = pair
    for text in (piece, f"x {piece} y", piece[:255], piece[:257]):
        assert fast.encode(text) == pure.encode(text)


def test_a_full_cache_is_cleared_not_grown(trained, monkeypatch):
    monkeypatch.setattr(Tokenizer, "CACHE_MAX_ENTRIES", 16)
    vocab, merges = trained
    pure, fast = Tokenizer(vocab, merges, compiled=False), Tokenizer(vocab, merges, compiled=True)
    text = " ".join(f"the cat{i} ca{i}t" for i in range(100))
    for _ in range(2):
        assert fast.encode(text) == pure.encode(text)
    assert fast._compiled.cached() <= 16


def test_streaming_through_the_compiled_path(pair, monkeypatch):
    import lm.tokenizer.tokenizer as module

    pure, fast = pair
    text = (PROJECT_TEXTS["stories"].read_text(encoding="utf-8") + "x" * 300 + "日本語 ") * 3
    expected = pure.encode(text)
    for buffer in (7, 100, 1 << 16):
        monkeypatch.setattr(module, "_STREAM_BUFFER_CHARS", buffer)
        pieces = [text[i:i + 13] for i in range(0, len(text), 13)]
        assert list(fast.encode_iterable(pieces)) == expected


def test_lone_surrogate_is_the_same_clear_error(pair):
    _, fast = pair
    with pytest.raises(TokenizerError, match="surrogate"):
        fast.encode("bad \ud800 text")
    with pytest.raises(TokenizerError, match="surrogate"):
        fast.encode_to_bytes("bad \udfff", 2)


def test_pickle_keeps_the_path(pair):
    pure, fast = pair
    assert pickle.loads(pickle.dumps(fast)).is_compiled
    assert not pickle.loads(pickle.dumps(pure)).is_compiled


def test_compiled_true_without_the_extension_is_a_clear_error(trained, monkeypatch):
    monkeypatch.setattr(compiled_path, "AVAILABLE", False)
    vocab, merges = trained
    with pytest.raises(TokenizerError, match="not built"):
        Tokenizer(vocab, merges, compiled=True)
    assert not Tokenizer(vocab, merges).is_compiled  # the default falls back to pure Python


def test_character_classes_are_the_regex_modules():
    """The table the C code reads is regex's \\s / \\p{L} / \\p{N}, checked over every BMP code point."""
    import regex

    table = compiled_path.bmp_classes()
    for cp in range(0, 0x10000, 7):
        c = chr(cp)
        expected = (1 if regex.fullmatch(r"\s", c) else 2 if regex.fullmatch(r"\p{L}", c)
                    else 3 if regex.fullmatch(r"\p{N}", c) else 0)
        assert table[cp] == expected, hex(cp)
    assert [compiled_path.classify(cp) for cp in (0x20000, 0x1D7CE, 0x1F642)] == [2, 3, 0]


def test_encode_file_through_the_compiled_path(pair, tmp_path):
    from lm.tokenizer import load_token_file

    pure, fast = pair
    text = PROJECT_TEXTS["stories"].read_text(encoding="utf-8") * 4
    src = tmp_path / "stories.txt"
    src.write_text(text, encoding="utf-8")
    ids, info = load_token_file(fast.encode_file(src, tmp_path / "stories.bin", workers=1) and tmp_path / "stories.bin")
    assert ids.tolist() == pure.encode(text)
    assert info.num_tokens == len(ids)


def test_a_dropped_tokenizer_is_freed(trained):
    """The encoder holds the tokenizer's heap BPE (a cycle): the garbage collector must see through it."""
    import gc
    import weakref

    vocab, merges = trained
    tok = Tokenizer(vocab, merges, compiled=True)
    tok.encode("x" * 300)  # through the long-piece callback
    ref = weakref.ref(tok)
    del tok
    gc.collect()
    assert ref() is None



def test_an_encoder_entered_again_from_its_callback_hands_the_text_to_python(pair):
    """A callback into Python (a long pre-token) can let another thread call the same encoder mid-encode;
    it must not touch the cache under the first call's feet: while busy, encode answers None (the
    Tokenizer then takes the Python path)."""
    pure, _ = pair
    inner = []

    def long_bpe(piece):
        inner.append(encoder.encode(" ".join(f"new{i}" for i in range(3000))))  # would grow the cache
        return pure._bpe(piece)

    encoder = compiled_path.make_encoder(pure._byte_ids, pure._merge_pairs, pure._merge_result, long_bpe, 1 << 18)
    text = "a " + "=" * 300 + " b"
    assert encoder.encode(text) == pure.encode(text)
    assert inner == [None]
    assert encoder.encode("new1 new2") == pure.encode("new1 new2")  # not busy any more
