"""The byte-level BPE tokenizer: encode text to ids and back (CS336 ``Tokenizer``).

Encoding splits text on special tokens (longest first), pre-tokenizes each
stretch with GPT-2's regex and applies the merges to each pre-token in rank
order. Text repeats its words, so work is cached at two levels:

* fields: the text is cut where pre-tokenization is separable (a whitespace
  character followed by a non-whitespace one, see
  :mod:`lm.tokenizer.pretokenize`), which the stdlib ``re`` does about three
  times faster than GPT-2's regex runs; a field seen before (`` said,``,
  ``\\nROMEO:``) costs one dict lookup, in C through ``map``;
* pre-tokens: BPE runs once per distinct pre-token; many new ones at once go
  through numpy rounds (:mod:`lm.tokenizer.bpe_batch`).

The regex runs only over the fields not seen before, all at once. A first
large text (empty field cache) skips the per-field lists: its distinct fields
are pre-tokenized together and its ids gathered with numpy
(:mod:`lm.tokenizer.field_ids`).

That is the pure-Python path, and the reference. When the optional C
extension is built (:mod:`lm.tokenizer.compiled`), ordinary text goes through
it instead: the same pre-tokens and merges, several times faster (see
docs/performance.md, Tokenizer); tests check that both paths give the same ids.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import json
import os
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from itertools import accumulate, chain, compress, count, repeat
from operator import not_
from pathlib import Path

from lm.errors import TokenizerError
from lm.tokenizer import compiled as compiled_path
from lm.tokenizer.byte_unicode import bytes_to_printable
from lm.tokenizer.gpt2_files import (
    MERGES_FILE,
    SPECIAL_TOKENS_FILE,
    VOCAB_FILE,
    read_merges_with_lines,
    read_special_tokens,
    read_vocab,
    write_tokenizer_files,
)
from lm.tokenizer.pretokenize import (
    PRETOKEN_RE,
    SAFE_CUT,
    cut_fields,
    normalize_special_tokens,
    special_splitter,
    split_stream_buffer,
    stream_cut,
)

_NO_MERGE = 1 << 62  # rank of a pair that is not a merge; above every real rank
_REPLACEMENT = "\ufffd".encode("utf-8")
# encode_iterable gathers this many characters before encoding, so many short
# lines cost one regex call and the carried-over tail stays small.
_STREAM_BUFFER_CHARS = 1 << 16
# Below this many new pre-tokens, BPE one by one beats the fixed cost of numpy rounds.
_BATCH_MIN_PIECES = 500
# Merge lists this long build the numpy tables at construction (small ones on first use).
_EAGER_BATCH_MERGES = 4096
# Pre-tokens longer than this (runs of symbols or spaces, blobs without spaces) get a
# few numpy rounds, then a heap: the plain loop costs time quadratic in their length.
_LONG_PIECE_BYTES = 256
_LONG_PIECE_ROUNDS = 32
# A text of at least this many fields, met while the field cache holds fewer than
# _FRESH_MAX_CACHED, is encoded through numpy spans of its distinct fields (first pass).
_FRESH_MIN_FIELDS = 2048
_FRESH_MAX_CACHED = 4096


class _PieceCache(dict):
    """pre-token -> tuple of ids; a miss runs BPE. Cleared when full, so memory stays bounded."""

    def __init__(self, bpe, max_entries: int):
        super().__init__()
        self._bpe = bpe
        self._max_entries = max_entries

    def __missing__(self, piece: str) -> tuple[int, ...]:
        ids = self._bpe(piece)
        if len(self) >= self._max_entries:
            self.clear()
        self[piece] = ids
        return ids


class _MergeNotInVocab(TokenizerError):
    """A merge whose parts or result are missing from the vocabulary (``rank`` says which merge)."""

    def __init__(self, rank: int, token: bytes):
        self.rank = rank
        self.token = token
        super().__init__(
            f"merge #{rank} uses or makes the token {token!r}, which is not in the vocabulary; "
            "the merges do not belong to this vocab"
        )


class Tokenizer:
    """Byte-level BPE tokenizer from a vocabulary, merges and special tokens.

    ``vocab`` maps ids to token bytes and must hold all 256 single bytes;
    ``merges`` lists merged byte-string pairs in rank order (each part and the
    result must be in ``vocab``). Special tokens absent from ``vocab`` get new
    ids after the largest one; overlapping special tokens are matched longest first.

    ``compiled``: encode with the C extension when it is built (None, the
    default), always (True: TokenizerError when it is not built) or never
    (False: the pure-Python reference path).
    """

    CACHE_MAX_ENTRIES = 1 << 18
    """Distinct pre-tokens (and fields) remembered before a cache is cleared: at most about 50 MB each.

    A cleared cache costs one slower chunk; a larger one means fewer clears on
    corpora with many distinct words (web text), at the price of memory in every
    encoding process."""

    def __init__(self, vocab: Mapping[int, bytes], merges: Iterable[tuple[bytes, bytes]],
                 special_tokens: Iterable[str] | None = None, *, compiled: bool | None = None):
        self._vocab: dict[int, bytes] = {}
        for idx, tok in vocab.items():
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0 or not isinstance(tok, bytes):
                raise TokenizerError(f"vocab entry {idx!r}: {tok!r} is not a non-negative integer id -> bytes")
            self._vocab[idx] = tok
        self._merges = [(bytes(a), bytes(b)) for a, b in merges]
        self._special_tokens = normalize_special_tokens(special_tokens)

        self._token_to_id: dict[bytes, int] = {}
        for idx in sorted(self._vocab):
            self._token_to_id.setdefault(self._vocab[idx], idx)
        missing = [b for b in range(256) if bytes([b]) not in self._token_to_id]
        if missing:
            raise TokenizerError(
                f"the vocabulary lacks {len(missing)} of the 256 single-byte tokens (first: {bytes([missing[0]])!r}); "
                "a byte-level BPE needs every byte so that any text can be encoded"
            )
        self._special_ids: dict[str, int] = {}
        next_id = max(self._vocab, default=-1) + 1
        for tok in self._special_tokens:
            raw = tok.encode("utf-8")
            if raw not in self._token_to_id:
                self._vocab[next_id] = raw
                self._token_to_id[raw] = next_id
                next_id += 1
            self._special_ids[tok] = self._token_to_id[raw]

        self._byte_ids = [self._token_to_id[bytes([b])] for b in range(256)]
        self._pair_rank: dict[tuple[int, int], int] = {}
        self._merge_pairs: list[tuple[int, int]] = []
        self._merge_result: list[int] = []
        token_id = self._token_to_id.get
        # made_at: the rank that made each token (-1: a byte), to tell whether numpy
        # rounds of merges are exact for this list (see lm.tokenizer.bpe_batch)
        made_at = dict.fromkeys(self._byte_ids, -1)
        self._rounds_exact = True
        for rank, (a, b) in enumerate(self._merges):
            ia, ib, im = token_id(a), token_id(b), token_id(a + b)
            if ia is None or ib is None or im is None:
                raise _MergeNotInVocab(rank, a if ia is None else b if ib is None else a + b)
            self._pair_rank.setdefault((ia, ib), rank)
            self._merge_pairs.append((ia, ib))
            self._merge_result.append(im)
            if made_at.get(ia, rank) >= rank or made_at.get(ib, rank) >= rank or im in made_at:
                self._rounds_exact = False
            made_at[im] = rank
        self._batch = None  # numpy BPE for many new pre-tokens at once, built on first use
        self._splitter = special_splitter(self._special_tokens)
        self._cache = _PieceCache(self._bpe, self.CACHE_MAX_ENTRIES)
        self._field_cache: dict[str, list[int]] = {}  # values are never mutated
        self._fingerprint: str | None = None
        self._compiled = None
        if compiled or (compiled is None and compiled_path.AVAILABLE):
            if not compiled_path.AVAILABLE:
                raise TokenizerError(
                    "compiled=True, but lm's C extension (lm.tokenizer._encode_c) is not built: reinstall with a C "
                    "compiler present (`pip install -e .`), or pass compiled=None to fall back to pure Python"
                )
            self._compiled = compiled_path.make_encoder(self._byte_ids, self._merge_pairs, self._merge_result,
                                                        self._bpe, self.CACHE_MAX_ENTRIES)
        elif self._rounds_exact and len(self._merges) >= _EAGER_BATCH_MERGES:
            # a fixed cost of the merges list, paid once here, not by the first text
            self._batch_bpe()

    # ----- construction from and to files

    @classmethod
    def from_files(cls, vocab_filepath: str | os.PathLike, merges_filepath: str | os.PathLike,
                   special_tokens: Iterable[str] | None = None, *, compiled: bool | None = None) -> Tokenizer:
        """A tokenizer from GPT-2-format vocab.json and merges.txt files (CS336 ``from_files``)."""
        specials = normalize_special_tokens(special_tokens)
        vocab = read_vocab(vocab_filepath, specials)
        merges, lines = read_merges_with_lines(merges_filepath)
        try:
            return cls(vocab, merges, specials, compiled=compiled)
        except _MergeNotInVocab as e:
            raise TokenizerError(
                f"merges file {merges_filepath}, line {lines[e.rank]}: token {bytes_to_printable(e.token)!r} is not "
                f"in {vocab_filepath}; the merges file does not belong to this vocabulary"
            ) from None

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, *, compiled: bool | None = None) -> Tokenizer:
        """A tokenizer saved by :meth:`save` (vocab.json, merges.txt, special_tokens.json)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(
                f"tokenizer directory {directory} does not exist; it should hold {VOCAB_FILE}, {MERGES_FILE} and "
                f"{SPECIAL_TOKENS_FILE} as written by `lab tokenizer train`"
            )
        specials_path = directory / SPECIAL_TOKENS_FILE
        specials = read_special_tokens(specials_path) if specials_path.exists() else []
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, specials, compiled=compiled)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write vocab.json, merges.txt and special_tokens.json into ``directory``; returns it."""
        return write_tokenizer_files(directory, self._vocab, self._merges, self._special_tokens)

    # ----- what it is

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> token bytes, special tokens included (do not modify)."""
        return self._vocab

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merged pairs in rank order (do not modify)."""
        return self._merges

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of ids a model's embedding must cover: the largest id + 1."""
        return max(self._vocab) + 1

    def special_token_id(self, token: str) -> int:
        """The id of a special token; TokenizerError if it is not one of this tokenizer's."""
        try:
            return self._special_ids[token]
        except KeyError:
            raise TokenizerError(
                f"{token!r} is not a special token of this tokenizer (special tokens: {self._special_tokens})"
            ) from None

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of one id (U+FFFD's bytes for an unknown id)."""
        return self._vocab.get(idx, _REPLACEMENT)

    def fingerprint(self) -> str:
        """A stable hex SHA-256 of the vocabulary, merges and special tokens (for token-file caches)."""
        if self._fingerprint is None:
            lines = [b"lm-bpe-v1"]
            lines += [b"%d %s" % (idx, self._vocab[idx].hex().encode()) for idx in sorted(self._vocab)]
            lines.append(b"merges")
            lines += [b"%s %s" % (a.hex().encode(), b.hex().encode()) for a, b in self._merges]
            lines.append(b"special " + json.dumps(self._special_tokens).encode("utf-8"))
            self._fingerprint = hashlib.sha256(b"\n".join(lines)).hexdigest()
        return self._fingerprint

    @property
    def is_compiled(self) -> bool:
        """Whether ordinary text is encoded by the C extension (see ``compiled``)."""
        return self._compiled is not None

    def __reduce__(self):
        # Pickle what defines the tokenizer, not its caches (worker processes, DataLoaders).
        return (_rebuild, (type(self), self._vocab, self._merges, self._special_tokens, self.is_compiled))

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"special_tokens={self._special_tokens!r})")

    # ----- encoding

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Apply the merges to one pre-token, lowest rank first (leftmost among equal ranks)."""
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"cannot encode {piece!r}: it holds a lone surrogate ({piece[e.start]!r}), which is not valid "
                "Unicode text; decode the source with errors='replace' first"
            ) from None
        if len(data) > _LONG_PIECE_BYTES:
            if self._rounds_exact:  # numpy rounds first: a run like "=====" finishes in a few
                return self._bpe_long(list(self._batch_bpe().encode([data], max_rounds=_LONG_PIECE_ROUNDS)[0]))
            return self._bpe_long([self._byte_ids[b] for b in data])
        ids = [self._byte_ids[b] for b in data]
        if len(ids) < 2:
            return tuple(ids)
        get = self._pair_rank.get
        result = self._merge_result
        # ranks[i] is the rank of the pair (ids[i], ids[i+1]); min/index run in C.
        ranks = list(map(get, zip(ids, ids[1:]), repeat(_NO_MERGE)))
        while ranks:
            r = min(ranks)
            if r == _NO_MERGE:
                break
            i = ranks.index(r)
            ids[i] = result[r]
            del ids[i + 1]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = get((ids[i - 1], ids[i]), _NO_MERGE)
            if i < len(ranks):
                ranks[i] = get((ids[i], ids[i + 1]), _NO_MERGE)
        return tuple(ids)

    def _bpe_long(self, ids: list[int]) -> tuple[int, ...]:
        """:meth:`_bpe` for long pre-tokens in O(n log n): a heap of (rank, position) over a linked list.

        Pops give the lowest rank, leftmost first, like the quadratic loop; an
        entry whose pair has changed since it was pushed is skipped.
        """
        get = self._pair_rank.get
        result = self._merge_result
        n = len(ids)
        nxt = list(range(1, n + 1))
        prev = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(r, i) for i, r in enumerate(map(get, zip(ids, ids[1:]))) if r is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n or get((ids[i], ids[j])) != r:
                continue
            ids[i] = result[r]
            alive[j] = False
            nxt[i] = k = nxt[j]
            if k < n:
                prev[k] = i
                rk = get((ids[i], ids[k]))
                if rk is not None:
                    heapq.heappush(heap, (rk, i))
            h = prev[i]
            if h >= 0:
                rh = get((ids[h], ids[i]))
                if rh is not None:
                    heapq.heappush(heap, (rh, h))
        return tuple(compress(ids, alive))

    def _bpe_many(self, pieces: list[str]) -> int:
        """Put the ids of the pre-tokens not yet cached into the cache, with numpy when there are many.

        Returns how many distinct pre-tokens were not cached."""
        cache = self._cache
        new = set(pieces).difference(cache)
        if len(new) < _BATCH_MIN_PIECES or not self._rounds_exact:
            return len(new)  # few: the per-piece path (cache misses) is cheaper
        new_pieces = list(new)
        try:
            raw = list(map(str.encode, new_pieces))
        except UnicodeEncodeError:
            return len(new)  # a lone surrogate: the per-piece path reports it
        if len(cache) + len(new_pieces) > self.CACHE_MAX_ENTRIES:
            cache.clear()
        cache.update(zip(new_pieces, self._batch_bpe().encode(raw)))
        return len(new)

    def _batch_bpe(self):
        """The numpy BPE (:class:`lm.tokenizer.bpe_batch.BatchBpe`), built on first use."""
        if self._batch is None:
            from lm.tokenizer.bpe_batch import BatchBpe  # numpy, only when needed

            self._batch = BatchBpe(self._merge_pairs, self._merge_result, self._byte_ids, self.vocab_size)
        return self._batch

    def _fill_fields(self, fields: list[str]) -> None:
        """Add the ids of new fields (see :func:`cut_fields`) to the field cache, running the regex once.

        The fields are joined back together: each of them but one that does not
        start at a safe cut (the first field of a text), put first, starts at a
        safe cut, so the joined text pre-tokenizes field by field and each field
        starts a pre-token. Every step runs in C but BPE on pre-tokens never
        seen before.
        """
        cache = self._field_cache
        if len(cache) + len(fields) > self.CACHE_MAX_ENTRIES:
            cache.clear()
        pieces = PRETOKEN_RE.findall("".join(fields))
        self._bpe_many(pieces)
        piece_ids = list(map(self._cache.__getitem__, pieces))
        # piece index of each field's first character, from character offsets
        piece_at = dict(zip(accumulate(map(len, pieces), initial=0), count()))
        starts = list(map(piece_at.__getitem__, accumulate(map(len, fields[:-1]), initial=0)))
        # each field's ids are a slice of the flat id list (one allocation per field)
        flat = list(chain.from_iterable(piece_ids))
        offsets = list(accumulate(map(len, piece_ids), initial=0))
        id_starts = list(map(offsets.__getitem__, starts))
        cache.update(zip(fields, map(flat.__getitem__, map(slice, id_starts, id_starts[1:] + [len(flat)]))))

    def _encode_ordinary(self, text: str) -> list[int]:
        """Ids of a text without special tokens (the C extension's when built, else :meth:`_encode_python`)."""
        if self._compiled is not None:
            ids = self._compiled.encode(text)
            if ids is not None:
                return ids  # None: a lone surrogate, which the Python path reports
        return self._encode_python(text)

    def _encode_python(self, text: str) -> list[int]:
        """Ids of a text without special tokens, in pure Python (the reference path).

        The text is cut at safe cuts (C speed, see :func:`cut_fields`) and each
        field's ids are cached, so a word seen before, with its leading
        whitespace and punctuation, costs one dict lookup; the regex runs only
        on fields not seen before, all at once.
        """
        cache = self._field_cache
        if len(cache) < _FRESH_MAX_CACHED and len(text) >= _FRESH_MIN_FIELDS and text.isascii():
            from lm.tokenizer.field_ids import ascii_distinct_fields  # numpy, only when needed

            indexed = ascii_distinct_fields(text, _FRESH_MIN_FIELDS)
            if indexed is not None:
                return self._encode_fresh(*indexed)
        fields = cut_fields(text)
        if len(fields) >= _FRESH_MIN_FIELDS and len(cache) < _FRESH_MAX_CACHED:
            from lm.tokenizer.field_ids import distinct_fields

            return self._encode_fresh(*distinct_fields(fields))
        parts = list(map(cache.get, fields))
        if not all(parts):  # a miss is None; hits are non-empty lists
            misses = list(compress(range(len(fields)), map(not_, parts)))
            missing = set(map(fields.__getitem__, misses))
            refill = len(cache) + len(missing) > self.CACHE_MAX_ENTRIES
            if refill:
                missing = set(fields)  # the cache gets cleared: refill every field of this text
            first = fields[0]
            if first in missing and not SAFE_CUT.match(first):
                missing.discard(first)
                ordered = [first, *missing]
            else:
                ordered = list(missing)
            self._fill_fields(ordered)
            if refill:
                parts = list(map(cache.__getitem__, fields))
            else:
                for i in misses:
                    parts[i] = cache[fields[i]]
        return list(chain.from_iterable(parts))

    def _encode_fresh(self, distinct: list[str], which) -> list[int]:
        """Ids of a text while the field cache is (nearly) empty: a first pass.

        ``distinct`` are the text's distinct fields, first-seen order, ``which``
        (numpy) the index in it of each field of the text
        (:func:`lm.tokenizer.field_ids.distinct_fields`).

        Filling the field cache would cost a list per distinct field and a lookup
        per field; instead the distinct fields (first-seen order, so a first
        field that does not start at a safe cut stays first) are pre-tokenized
        together and the ids gathered with numpy (:mod:`lm.tokenizer.field_ids`).
        The field cache is filled only when most pre-tokens were already known
        (a second text), so that later texts take the dict path.
        """
        from lm.tokenizer.field_ids import field_spans, gather_spans

        pieces = PRETOKEN_RE.findall("".join(distinct))
        num_new = self._bpe_many(pieces)
        piece_ids = list(map(self._cache.__getitem__, pieces))
        flat, starts, lengths = field_spans(distinct, pieces, piece_ids)
        if num_new * 4 <= len(distinct) and len(distinct) <= self.CACHE_MAX_ENTRIES:
            cache = self._field_cache
            if len(cache) + len(distinct) > self.CACHE_MAX_ENTRIES:
                cache.clear()
            ids = flat.tolist()
            cache.update(zip(distinct, map(ids.__getitem__, map(slice, starts.tolist(), (starts + lengths).tolist()))))
        return gather_spans(which, flat, starts, lengths).tolist()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; occurrences of the special tokens become their ids."""
        # Encoding allocates many lists that live on in the caches; the cyclic garbage
        # collector would scan them, and the tokenizer's tables, again and again (a third
        # of a first pass). Nothing here makes cycles, so it is paused, then restored.
        collecting = gc.isenabled()
        gc.disable()
        try:
            if self._splitter is None:
                return self._encode_ordinary(text)
            out: list[int] = []
            for i, piece in enumerate(self._splitter.split(text)):
                if i & 1:
                    out.append(self._special_ids[piece])
                elif piece:
                    out.extend(self._encode_ordinary(piece))
            return out
        finally:
            if collecting:
                gc.enable()

    def encode_to_bytes(self, text: str, itemsize: int) -> bytes:
        """``encode(text)`` as little-endian unsigned ints of ``itemsize`` bytes (2 or 4): a token file's contents."""
        fast = self._compiled
        if fast is not None:
            if self._splitter is None:
                parts = [(False, text)]
            else:
                parts = [(bool(i & 1), p) for i, p in enumerate(self._splitter.split(text)) if p]
            out = []
            for is_special, piece in parts:
                data = (self._special_ids[piece].to_bytes(itemsize, "little") if is_special
                        else fast.encode_bytes(piece, itemsize))
                if data is None:  # a lone surrogate: the Python path reports it
                    break
                out.append(data)
            else:
                return b"".join(out)
        ids = array({2: "H", 4: "I"}[itemsize], self.encode(text))
        if sys.byteorder != "little":
            ids.byteswap()
        return ids.tobytes()

    def encode_chunks(self, iterable: Iterable[str]) -> Iterator[list[int]]:
        """Encode a stream of text pieces, yielding lists of ids; same ids as ``encode("".join(iterable))``.

        Pieces are gathered into buffers of about 64K characters; the end of each
        buffer that the next piece could still change (a pre-token or special
        token running across) is carried over, so memory stays constant however
        long the stream.
        """
        lookup = self._cache.__getitem__
        pending: list[str] = []
        size = 0
        for piece in iterable:
            pending.append(piece)
            size += len(piece)
            if size < _STREAM_BUFFER_CHARS:
                continue
            text = "".join(pending)
            cut = stream_cut(text, self._special_tokens)
            if cut:
                ids = self.encode(text[:cut])
                tail = text[cut:]
            else:  # no safe cut near the end (e.g. text without spaces): hold back the last pre-tokens
                parts, tail = split_stream_buffer(text, self._splitter, self._special_tokens)
                ids = []
                for is_special, value in parts:
                    if is_special:
                        ids.append(self._special_ids[value])
                    else:
                        ids.extend(chain.from_iterable(map(lookup, value)))
            if ids:
                yield ids
            pending = [tail]
            size = len(tail)
        rest = self.encode("".join(pending))
        if rest:
            yield rest

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily yield the ids of a stream of text (for example a file object's lines), in constant memory."""
        for ids in self.encode_chunks(iterable):
            yield from ids

    def encode_file(self, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                    workers: int | None = None, progress=None):
        """Encode a UTF-8 corpus into a token file + JSON sidecar; returns its TokenFileInfo.

        See :func:`lm.tokenizer.token_file.encode_file` (parallel over ``workers``
        processes, ``progress(bytes_read, total_bytes)``).
        """
        from lm.tokenizer.token_file import encode_file

        return encode_file(self, input_path, output_path, workers=workers, progress=progress)

    # ----- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (a list, or a 1-D numpy array or torch tensor); an unknown id
        gives U+FFFD's bytes."""
        if hasattr(ids, "tolist"):  # array elements would not hash like the int keys
            ids = ids.tolist()
        return b"".join(map(self._vocab.get, ids, repeat(_REPLACEMENT)))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD, never an exception."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _rebuild(cls, vocab, merges, special_tokens, compiled):
    return cls(vocab, merges, special_tokens, compiled=None if compiled else False)


def get_tokenizer(vocab: Mapping[int, bytes], merges: Iterable[tuple[bytes, bytes]],
                  special_tokens: Iterable[str] | None = None) -> Tokenizer:
    """CS336 adapter: a :class:`Tokenizer` from a vocabulary, merges and special tokens."""
    return Tokenizer(vocab, merges, special_tokens)
