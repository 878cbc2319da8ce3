"""BPE training: identical to a slow, obviously correct reference; chunked counting; bad input."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from project_data import PROJECT_TEXTS

from lm.errors import DataError, TokenizerError
from lm.tokenizer import train_bpe, train_bpe_detailed
from lm.tokenizer.chunks import plan_chunks
from lm.tokenizer.counting import count_pretokens
from lm.tokenizer.pretokenize import GPT2_PATTERN
from lm.tokenizer.train import train_bpe_from_counts

EOT = "<|endoftext|>"


# ----- the reference: recount every pair of every word at every step


def reference_word_counts(text: str, special_tokens: list[str]) -> Counter:
    """Pre-token bytes -> count, splitting on special tokens (longest first) then GPT-2's regex."""
    if special_tokens:
        alternatives = sorted(special_tokens, key=len, reverse=True)
        documents = regex.split("|".join(regex.escape(s) for s in alternatives), text)
    else:
        documents = [text]
    counts: Counter = Counter()
    for doc in documents:
        for match in regex.finditer(GPT2_PATTERN, doc):
            counts[match.group().encode("utf-8")] += 1
    return counts


def reference_merges(word_counts: Counter, num_merges: int) -> list[tuple[bytes, bytes]]:
    """Merge the most frequent pair (ties: the greater pair of byte strings) ``num_merges`` times."""
    words = {tuple(bytes([b]) for b in word): count for word, count in word_counts.items()}
    merges = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def reference_segment(word: bytes, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """A word's tokens after applying ``merges`` in order, each to every occurrence left to right."""
    parts = [bytes([b]) for b in word]
    for pair in merges:
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                out.append(parts[i] + parts[i + 1])
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def reference_train(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    return reference_merges(reference_word_counts(text, special_tokens), vocab_size - 256 - len(special_tokens))


def check_vocab(vocab: dict[int, bytes], merges, special_tokens: list[str], vocab_size: int) -> None:
    assert sorted(vocab) == list(range(256 + len(special_tokens) + len(merges)))
    assert len(vocab) <= vocab_size
    values = list(vocab.values())
    assert len(set(values)) == len(values)
    assert {bytes([b]) for b in range(256)} <= set(values)
    assert {s.encode() for s in special_tokens} <= set(values)
    assert {a + b for a, b in merges} <= set(values)


# ----- random corpora

# A small alphabet makes many equal counts, so the tie-break is exercised constantly.
_text = st.lists(st.sampled_from(list("aab ba\n'.,é1") + [" ", "  ", "\t", "<|", "|>", EOT, "'s"]),
                 max_size=120).map("".join)
_specials = st.lists(st.sampled_from([EOT, "<|pad|>", "ab", "a b", EOT + EOT]), max_size=3, unique=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_text, specials=_specials, extra=st.integers(0, 40))
def test_training_matches_reference_on_random_corpora(tmp_path, text, specials, extra):
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    vocab_size = 256 + len(specials) + extra
    vocab, merges = train_bpe(path, vocab_size, specials)
    assert merges == reference_train(text, vocab_size, specials)
    check_vocab(vocab, merges, specials, vocab_size)
    merged_tokens = [a + b for a, b in merges]
    assert not any(s.encode() in t for t in merged_tokens for s in specials)  # no merge crosses a special


_word = st.binary(min_size=1, max_size=6).map(lambda b: bytes(c % 4 + 97 for c in b))


@settings(max_examples=80, deadline=None)
@given(counts=st.dictionaries(_word, st.integers(1, 5), max_size=30), merges=st.integers(0, 30))
def test_merge_loop_matches_reference_on_word_tables(counts, merges):
    vocab, got, tokens_after = train_bpe_from_counts(counts, 256 + merges)
    expected = reference_merges(Counter(counts), merges)
    assert got == expected
    check_vocab(vocab, got, [], 256 + merges)
    assert tokens_after == sum(len(reference_segment(w, got)) * c for w, c in counts.items())


@pytest.mark.slow
def test_corpus_en_matches_reference(shared_data):
    """CS336's check: corpus.en, vocab 500, <|endoftext|> (their fixture merges = this reference's)."""
    path = shared_data / "corpus.en"
    vocab, merges = train_bpe(path, 500, [EOT])
    text = path.read_text(encoding="utf-8")
    assert merges == reference_train(text, 500, [EOT])
    assert len(merges) == 500 - 257
    check_vocab(vocab, merges, [EOT], 500)
    assert vocab[0] == EOT.encode()  # CS336 layout: specials first, then bytes, then merges


def test_tinystories_sample_matches_reference(shared_data):
    path = shared_data / "tinystories_sample.txt"
    vocab, merges = train_bpe(path, 400, [EOT])
    text = path.read_text(encoding="utf-8")
    assert merges == reference_train(text, 400, [EOT])
    check_vocab(vocab, merges, [EOT], 400)
    assert not any(b"<|" in t for t in vocab.values() if t != EOT.encode())


@pytest.mark.parametrize("name", sorted(PROJECT_TEXTS))
def test_the_project_texts_match_reference(name):
    """The same check on the texts shipped with the tests (no ../shared needed)."""
    path = PROJECT_TEXTS[name]
    vocab, merges = train_bpe(path, 400, [EOT])
    text = path.read_text(encoding="utf-8")
    assert merges == reference_train(text, 400, [EOT])
    check_vocab(vocab, merges, [EOT], 400)
    assert not any(b"<|" in t for t in vocab.values() if t != EOT.encode())


# ----- chunked, parallel pre-token counting


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("ab  \n\t.'x\u3000\xa0") + [EOT, "<|", "x x"]), max_size=200).map("".join),
       chunk=st.integers(1, 60))
def test_chunk_cuts_preserve_pretokens(tmp_path, text, chunk):
    specials = [EOT, "x x"]  # a special token holding a space must never be cut in two
    path = tmp_path / "c.txt"
    data = text.encode("utf-8")
    path.write_bytes(data)
    chunks = plan_chunks(path, len(data), specials, chunk)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    pieces: Counter = Counter()
    for start, end in chunks:
        pieces += reference_word_counts(data[start:end].decode("utf-8"), specials)
    assert pieces == reference_word_counts(text, specials)


def test_chunk_cuts_avoid_special_tokens_with_spaces(tmp_path):
    # "x x" must not be cut in two; the spaces before <|endoftext|> end a segment and stay one pre-token
    text = "".join(f"ab x x{i}.  {EOT}  y" for i in range(60))
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    specials = ["x x", EOT]
    for chunk in range(1, 30):
        chunks = plan_chunks(path, len(text), specials, chunk)
        assert len(chunks) > 10
        pieces: Counter = Counter()
        for start, end in chunks:
            pieces += reference_word_counts(text[start:end], specials)
        assert pieces == reference_word_counts(text, specials)


def test_parallel_counting_equals_whole_text(tmp_path, monkeypatch):
    """The multi-process counting path (2 workers, 1 KB chunks) on the stories shipped with the tests."""
    import lm.tokenizer.counting as counting

    text = PROJECT_TEXTS["stories"].read_text(encoding="utf-8") * 5
    path = tmp_path / "stories.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(counting, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(counting, "chunk_size_for", lambda size, workers: 1000)
    result = count_pretokens(path, [EOT], workers=2)
    expected = reference_word_counts(text, [EOT])
    assert {k.encode(): v for k, v in result.counts.items()} == expected
    assert result.num_specials == text.count(EOT)
    assert result.num_bytes == len(text.encode())


def test_progress_reports_bytes_then_merges():
    calls = []
    result = train_bpe_detailed(PROJECT_TEXTS["verse"], 400, [EOT], progress=lambda b, m: calls.append((b, m)))
    assert calls[0][1] == 0 and calls[-1] == (result.num_bytes, len(result.merges))
    assert [m for _, m in calls] == sorted(m for _, m in calls)
    assert result.num_unique_pretokens <= result.num_pretokens
    assert result.bytes_per_token > 1


# ----- bad input


def test_missing_corpus_names_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.txt"):
        train_bpe(tmp_path / "nothere.txt", 300, [EOT])
    with pytest.raises(DataError, match="directory"):
        train_bpe(tmp_path, 300, [EOT])


def test_non_utf8_corpus_names_file_and_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ok".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*offset 3"):
        train_bpe(path, 300, [])


def test_vocab_size_too_small(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello")
    with pytest.raises(TokenizerError, match="at least 258"):
        train_bpe(path, 257, [EOT, "<|pad|>"])
    with pytest.raises(TokenizerError, match="non-empty"):
        train_bpe(path, 300, [""])


def test_training_stops_when_pairs_run_out(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("ab ab")
    vocab, merges = train_bpe(path, 1000, [])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 258
