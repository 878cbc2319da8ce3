"""Token files: a corpus encoded once to a flat array of ids, with a JSON sidecar.

``<name>.bin`` holds the ids as raw little-endian ``uint16`` (``uint32`` when
the vocabulary has more than 65,536 ids), readable with ``np.memmap`` without
loading it. ``<name>.bin.json`` records what the ids mean::

    {"dtype": "uint16", "vocab_size": 10000, "fingerprint": "<sha256 of the tokenizer>",
     "num_tokens": 123456, "num_bytes": 567890, "source": "/abs/path/corpus.txt"}

Encoding fans out over processes: each worker reads and encodes its own byte
range of the corpus (cut where pre-tokenization is separable, see
:mod:`lm.tokenizer.chunks`), and the parent appends the arrays in order, so
memory stays bounded whatever the file size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

from lm.atomic import atomic_write, write_error_message
from lm.errors import DataError
from lm.tokenizer.chunks import (
    MAX_CHUNK_BYTES,
    BoundedMap,
    check_corpus,
    chunk_size_for,
    plan_chunks,
    pool_context,
    read_text_chunk,
    resolve_workers,
    worker_pool,
)
from lm.tokenizer.counting import PARALLEL_MIN_BYTES

if TYPE_CHECKING:
    import numpy as np

    from lm.tokenizer.tokenizer import Tokenizer

_TYPECODES = {"uint16": "H", "uint32": "I"}
_ITEMSIZE = {"uint16": 2, "uint32": 4}
_ITEMSIZE_OF = {"H": 2, "I": 4}


@dataclass(frozen=True)
class TokenFileInfo:
    """What a token file holds (its JSON sidecar)."""

    dtype: str
    """numpy dtype of the ids: "uint16" or "uint32\""""
    vocab_size: int
    """vocabulary size of the tokenizer that wrote it"""
    fingerprint: str
    """the tokenizer's :meth:`~lm.tokenizer.Tokenizer.fingerprint`"""
    num_tokens: int
    num_bytes: int
    """size of the source text in bytes (for bits per byte)"""
    source: str
    """absolute path of the source text"""
    sha256: str | None = None
    """sha256 of the token file's bytes (None in sidecars written before it was recorded)"""

    def to_dict(self) -> dict:
        return asdict(self)


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a token file: the same path with ".json" appended."""
    return Path(os.fspath(path) + ".json")


# ----- encoding (worker side)

_worker_tokenizer: Tokenizer | None = None


def _init_worker(vocab, merges, special_tokens, compiled) -> None:
    global _worker_tokenizer
    from lm.tokenizer.tokenizer import Tokenizer

    _worker_tokenizer = Tokenizer(vocab, merges, special_tokens, compiled=None if compiled else False)


def _encode_range(tokenizer: Tokenizer, path: str, start: int, end: int, typecode: str) -> tuple[bytes, int, int]:
    itemsize = _ITEMSIZE_OF[typecode]
    data = tokenizer.encode_to_bytes(read_text_chunk(path, start, end), itemsize)
    return data, len(data) // itemsize, end - start


def _start_pool(context, tokenizer: Tokenizer, processes: int):
    """A worker pool holding the tokenizer: inherited with its warm caches under fork, rebuilt under spawn."""
    global _worker_tokenizer
    if context.get_start_method() == "fork":
        _worker_tokenizer = tokenizer
        try:
            return worker_pool(context, processes)
        finally:
            _worker_tokenizer = None
    return worker_pool(context, processes, initializer=_init_worker,
                       initargs=(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens, tokenizer.is_compiled))


def _encode_task(task: tuple[str, int, int, str]) -> tuple[bytes, int, int]:
    assert _worker_tokenizer is not None
    return _encode_range(_worker_tokenizer, *task)


# ----- encoding (parent side)

def encode_file(tokenizer: Tokenizer, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> TokenFileInfo:
    """Encode a UTF-8 corpus into the token file ``output_path`` plus its sidecar ``output_path + ".json"``.

    Uses up to ``workers`` processes (default: all cores; files under 4 MiB are
    encoded in this process). ``progress(bytes_read, total_bytes)`` is called
    as chunks complete. The files appear atomically (temp file + rename), the
    sidecar last, so a crash never leaves a token file that looks complete.
    """
    src = os.fspath(input_path)
    size = check_corpus(src)
    out = Path(output_path)
    dtype = token_dtype(tokenizer.vocab_size)
    typecode = _TYPECODES[dtype]
    workers = resolve_workers(workers)
    if size < PARALLEL_MIN_BYTES:
        workers = 1
    chunk_bytes = chunk_size_for(size, workers) if workers > 1 else MAX_CHUNK_BYTES
    chunks = plan_chunks(src, size, tokenizer.special_tokens, chunk_bytes)
    pool = None
    num_tokens = 0
    done = 0
    digest = hashlib.sha256()

    def write_ids(f) -> None:
        nonlocal pool, num_tokens, done
        todo = chunks
        if workers == 1 or len(todo) == 1:
            results = (_encode_range(tokenizer, src, s, e, typecode) for s, e in todo)
        else:
            context = pool_context()
            first = []
            if context.get_start_method() == "fork":
                # Encode one chunk here first: forked workers inherit the warm caches
                # instead of each paying for the common words again.
                first = [_encode_range(tokenizer, src, *todo[0], typecode)]
                todo = todo[1:]
            procs = min(workers, len(todo))
            pool = BoundedMap(_start_pool(context, tokenizer, procs), _encode_task,
                              [(src, s, e, typecode) for s, e in todo], 2 * procs)
            results = chain(first, pool)
        for data, n_tokens, n_bytes in results:
            f.write(data)
            digest.update(data)
            num_tokens += n_tokens
            done += n_bytes
            if progress is not None:
                progress(done, size)

    try:
        atomic_write(out, write_ids)
        info = TokenFileInfo(
            dtype=dtype, vocab_size=tokenizer.vocab_size, fingerprint=tokenizer.fingerprint(),
            num_tokens=num_tokens, num_bytes=size, source=str(Path(src).resolve()), sha256=digest.hexdigest(),
        )
        atomic_write(sidecar_path(out), json.dumps(info.to_dict(), indent=1) + "\n")
    except OSError as e:
        raise DataError(f"cannot write token file {out}: {write_error_message(out, e)}") from None
    finally:
        if pool is not None:
            pool.close()
    return info


# ----- reading

def read_token_file_info(path: str | os.PathLike) -> TokenFileInfo:
    """The validated sidecar of a token file; DataError naming the file when missing or malformed."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"token file {path} has no sidecar {side}; token files are written with their sidecar by "
            "Tokenizer.encode_file (`lab tokenizer encode`); encode the corpus again"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"sidecar {side} of token file {path} cannot be read as JSON ({e})") from None
    problems = []
    if not isinstance(data, dict):
        data, problems = {}, ["it is not a JSON object"]
    types = {"dtype": str, "vocab_size": int, "fingerprint": str, "num_tokens": int, "num_bytes": int, "source": str}
    for key, typ in types.items():
        value = data.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            problems.append(f"{key!r} should be a {typ.__name__}, got {value!r}")
    if not problems:
        if data["dtype"] not in _TYPECODES:
            problems.append(f"'dtype' is {data['dtype']!r}; expected 'uint16' or 'uint32'")
        for key in ("vocab_size", "num_tokens", "num_bytes"):
            if data[key] < 0:
                problems.append(f"{key!r} is negative ({data[key]})")
    checksum = data.get("sha256")
    if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64):
        problems.append(f"'sha256' should be 64 hex digits, got {checksum!r}")
    if problems:
        raise DataError(f"sidecar {side} of token file {path} is malformed: " + "; ".join(problems))
    return TokenFileInfo(**{k: data[k] for k in types}, sha256=checksum)


def verify_token_file(path: str | os.PathLike, info: TokenFileInfo, *, rebuild: str = "encode the corpus again"
                      ) -> bool:
    """Check the token file's bytes against the sidecar's sha256; False when the sidecar has none.

    DataError naming the file and saying how to rebuild (``rebuild``) when they differ.
    """
    if info.sha256 is None:
        return False
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    except OSError as e:
        raise DataError(f"token file {path} cannot be read ({e.strerror or e}); {rebuild}") from None
    if digest.hexdigest() != info.sha256:
        raise DataError(f"token file {path} is corrupt: its sha256 is {digest.hexdigest()[:16]}..., its sidecar "
                        f"{sidecar_path(path)} recorded {info.sha256[:16]}...; {rebuild}")
    return True


def load_token_file(path: str | os.PathLike, *, expected_fingerprint: str | None = None
                    ) -> tuple[np.ndarray, TokenFileInfo]:
    """Memory-map a token file after checking it against its sidecar.

    Returns ``(ids, info)``: ``ids`` is a read-only ``np.memmap`` (an empty
    array for an empty file). DataError naming the file when the sidecar is
    missing or malformed, when the file size does not match ``num_tokens``, or
    when ``expected_fingerprint`` is given and differs (encoded with another tokenizer).
    """
    import numpy as np

    info = read_token_file_info(path)
    try:
        actual = os.path.getsize(path)
    except FileNotFoundError:
        raise DataError(f"token file {path} does not exist (its sidecar {sidecar_path(path)} does)") from None
    except OSError as e:
        raise DataError(f"token file {path} cannot be read ({e.strerror or e})") from None
    expected = info.num_tokens * _ITEMSIZE[info.dtype]
    if actual != expected:
        raise DataError(
            f"token file {path} has {actual} bytes but its sidecar says {info.num_tokens} {info.dtype} tokens "
            f"({expected} bytes); it is truncated or was overwritten. Encode the corpus again"
        )
    if expected_fingerprint is not None and info.fingerprint != expected_fingerprint:
        raise DataError(
            f"token file {path} was encoded with another tokenizer (fingerprint {info.fingerprint[:12]}..., "
            f"expected {expected_fingerprint[:12]}...); encode the corpus again with this tokenizer"
        )
    dtype = np.dtype(info.dtype).newbyteorder("<")
    if info.num_tokens == 0:
        return np.zeros(0, dtype=dtype), info
    return np.memmap(path, dtype=dtype, mode="r", shape=(info.num_tokens,)), info
