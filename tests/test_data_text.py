"""Sources and byte-level text handling: joining, splitting at boundaries, UTF-8 checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm.data import text as text_mod
from lm.data.sources import HASH_LIMIT, file_identity, resolve_source
from lm.data.text import JoinedText, check_range, incomplete_tail, split_point, write_range
from lm.errors import DataError

SEP = b"<|endoftext|>"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _joined(tmp_path: Path, parts: list[bytes], sep: bytes = SEP) -> JoinedText:
    paths = []
    for i, data in enumerate(parts):
        p = tmp_path / f"{i:03d}.txt"
        p.write_bytes(data)
        paths.append(p)
    return JoinedText(tuple(paths), sep)


@FAST
@given(parts=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=5), data=st.data())
def test_joined_text_reads_like_the_joined_bytes(tmp_path_factory, parts, data):
    joined = _joined(tmp_path_factory.mktemp("j"), parts)
    reference = SEP.join(parts)
    assert joined.size == len(reference)
    start = data.draw(st.integers(0, len(reference)))
    end = data.draw(st.integers(start, len(reference)))
    assert joined.read(start, end) == reference[start:end]
    limited = JoinedText(joined.paths, SEP, limit=end)
    assert limited.size == end and limited.read(0, len(reference)) == reference[:end]


docs = st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30), min_size=1, max_size=8)


@FAST
@given(documents=docs, fraction=st.floats(0.05, 0.95), slack=st.integers(0, 64))
def test_split_point_cuts_at_a_separator_or_a_character_boundary(tmp_path_factory, documents, fraction, slack):
    reference = SEP.join(d.encode() for d in documents)
    joined = _joined(tmp_path_factory.mktemp("s"), [reference])
    target = int(len(reference) * fraction)
    left_end, right_start = split_point(joined, target, slack=slack)
    if left_end != right_start:  # a document boundary: exactly one separator dropped, both sides whole docs
        assert reference[left_end:right_start] == SEP
        assert abs(left_end - target) <= slack
        left, right = reference[:left_end].decode(), reference[right_start:].decode()
        assert left and right and SEP.decode().join([left, right]) == reference.decode()
    else:  # no separator within the slack: a UTF-8 character boundary at or just before the target
        assert target - 3 <= left_end <= target
        reference[:left_end].decode()
        reference[left_end:].decode()
        occurrences = [i for i in range(len(reference)) if reference.startswith(SEP, i)]
        assert not [i for i in occurrences if abs(i - target) <= slack and 0 < i < len(reference) - len(SEP)]


def test_split_point_backward_only_never_passes_the_target(tmp_path):
    reference = b"aaaa" + SEP + b"bbbbbbbbbb" + SEP + b"cc"
    joined = _joined(tmp_path, [reference])
    assert split_point(joined, 10, slack=100, backward_only=True) == (4, 4 + len(SEP))
    # Forward search finds the nearer separator after the target.
    assert split_point(joined, 25, slack=100) == (4 + len(SEP) + 10, 4 + 2 * len(SEP) + 10)


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_incomplete_tail_matches_decoding(text):
    data = text.encode()
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        # Reference: the fewest trailing bytes to drop so that the rest decodes.
        expected = next(t for t in range(4) if _decodes(prefix[:len(prefix) - t]))
        assert incomplete_tail(prefix) == expected


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@FAST
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=80),
       chunk=st.integers(1, 9), bad_at=st.none() | st.integers(0, 200))
def test_checked_copy_finds_the_first_bad_byte_across_chunk_edges(tmp_path_factory, monkeypatch, text, chunk, bad_at):
    monkeypatch.setattr(text_mod, "CHUNK", chunk)
    data = bytearray(text.encode())
    if bad_at is not None:  # insert the bad byte between two characters
        bad_at = len(text[:bad_at].encode())
        data[bad_at:bad_at] = b"\xff"  # never valid in UTF-8
    directory = tmp_path_factory.mktemp("u")
    joined = _joined(directory, [bytes(data)])
    if bad_at is None:
        assert write_range(joined, 0, len(data), directory / "out") == len(data)
        assert (directory / "out").read_bytes() == bytes(data)
    else:
        with pytest.raises(DataError, match=rf"byte 0xff at byte offset {bad_at:,} "):
            check_range(joined, 0, len(data))


def test_not_utf8_error_names_file_offset_and_line(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\nsecond caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        check_range(JoinedText((bad,), SEP), 0, bad.stat().st_size)
    msg = str(e.value)
    assert str(bad) in msg and "byte offset 21" in msg and "line 2" in msg and "iconv" in msg


# --- sources -------------------------------------------------------------------------------------


def test_resolve_file_directory_and_builtin(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello")
    assert resolve_source(str(f)).paths == [f]
    d = tmp_path / "dir"
    d.mkdir()
    for name, body in (("b.txt", "B"), ("a.txt", "A"), ("empty.txt", ""), ("c.md", "not text")):
        (d / name).write_text(body)
    src = resolve_source(str(d))
    assert src.kind == "directory" and [p.name for p in src.paths] == ["a.txt", "b.txt"]
    assert resolve_source("builtin").kind == "builtin"


@pytest.mark.parametrize("spec, message", [
    ("no/such/file.txt", "does not exist"),
    ("wikitext", "not a file, a directory or a known dataset; .*'tinystories', 'owt', 'tinyshakespeare'"),
    ("", "empty"),
])
def test_resolve_bad_specs(spec, message):
    with pytest.raises(DataError, match=message):
        resolve_source(spec, key="data.source")


def test_resolve_empty_file_and_empty_directory(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        resolve_source(str(tmp_path / "empty.txt"))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="holds no .txt files"):
        resolve_source(str(tmp_path / "d"))


def test_resolve_dataset_uses_its_valid_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    (tmp_path / "tinystories").mkdir()
    for name in ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"):
        (tmp_path / "tinystories" / name).write_text("Once upon a time.")
    src = resolve_source("tinystories")
    assert src.paths[0].name.endswith("train.txt") and src.valid_paths[0].name.endswith("valid.txt")


def test_file_identity_hashes_small_files_and_stats_large_ones(tmp_path, monkeypatch):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same text")
    b.write_text("same text")
    assert file_identity(a) == file_identity(b)  # content, not path
    monkeypatch.setattr("lm.data.sources.HASH_LIMIT", 3)
    assert file_identity(a) != file_identity(b)  # large files: path + size + mtime
    assert HASH_LIMIT >= 1 << 20
