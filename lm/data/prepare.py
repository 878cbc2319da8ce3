"""From an experiment's ``[data]`` and ``[tokenizer]`` sections to token files, cached.

:func:`prepare_data` resolves the training and validation text, trains (or
loads) the tokenizer and encodes both texts into token files. Everything it
produces is cached under ``<cache>/``:

* ``tokenizers/<key>/``: a tokenizer trained on this text with this config;
* ``tokens/<key>/``: ``train.bin``, ``val.bin`` and ``meta.json`` (written
  last: a directory without it is an interrupted preparation, never used).

The keys hash the corpus identity (content hash of small files; path, size
and mtime of large ones; the extractor version of the built-in corpus),
``max_bytes``, the validation split, the separator and the tokenizer (its
config when trained here, its fingerprint when given), so a second run on
the same data starts at once and any change prepares afresh.

Validation text: ``data.val_source`` if set; else a named dataset's own
validation file; else the last ``val_fraction`` of the corpus, split at the
document separator nearest that point (within 1 MiB and half the validation
size), or at a UTF-8 character boundary when there is none. ``max_bytes``
keeps the first ``max_bytes`` of the corpus (ending at a document boundary
when one is near) and caps a separate validation text at
``max_bytes * val_fraction``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lm.atomic import atomic_rename, atomic_write, write_error_message
from lm.config.schema import ExperimentConfig
from lm.data.paths import cache_root
from lm.data.sources import TextSource, resolve_source
from lm.data.text import JoinedText, check_range, split_point, write_range
from lm.errors import ConfigError, DataError
from lm.processes import DEAD, REUSED, identity, process_state

Progress = Callable[[str, int, int], None]

# Bump when the meaning of cached files changes (text layout, file names), so old caches are not used.
PREPARE_VERSION = 1
TRAIN_FILE, VAL_FILE, META_FILE = "train.bin", "val.bin", "meta.json"


@dataclass
class PreparedData:
    """Token files ready for training, and the figures a run reports about them."""

    tokenizer: object
    """The :class:`lm.tokenizer.Tokenizer` that produced the token files."""
    train_path: Path
    val_path: Path
    train_tokens: int
    """Number of tokens in ``train_path``."""
    val_tokens: int
    val_bytes: int
    """UTF-8 bytes of the validation text (bits per byte = loss / ln 2 * val_tokens / val_bytes)."""
    train_bytes: int
    source: str
    """What the text is, for summaries (``builtin``, ``tinystories``, a path)."""
    cache_dir: Path
    """The cache entry holding the token files."""
    cached: bool
    """True when everything came from the cache (nothing was trained or encoded)."""
    tokenizer_trained: bool
    """True when the tokenizer was trained by this call."""
    seconds: float

    @property
    def bytes_per_token(self) -> float:
        """Compression of the training text: UTF-8 bytes per token."""
        return self.train_bytes / max(1, self.train_tokens)

    def train_array(self):
        """The training tokens as a read-only memmap."""
        from lm.tokenizer import load_token_file

        return load_token_file(self.train_path)[0]

    def val_array(self):
        """The validation tokens as a read-only memmap."""
        from lm.tokenizer import load_token_file

        return load_token_file(self.val_path)[0]

    def summary(self) -> dict:
        """Plain figures for printing or JSON."""
        return {"source": self.source, "train_tokens": self.train_tokens, "val_tokens": self.val_tokens,
                "train_bytes": self.train_bytes, "val_bytes": self.val_bytes,
                "bytes_per_token": round(self.bytes_per_token, 4), "vocab_size": self.tokenizer.vocab_size,
                "cached": self.cached, "tokenizer_trained": self.tokenizer_trained,
                "seconds": round(self.seconds, 3), "cache_dir": str(self.cache_dir)}


def prepare_data(cfg: ExperimentConfig, *, tokenizer=None, run_dir: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> PreparedData:
    """Token files for ``cfg`` (from the cache when possible), with the tokenizer that made them.

    ``tokenizer`` replaces ``cfg.tokenizer`` (a resumed run passes its own);
    otherwise ``tokenizer.path`` is loaded, or a tokenizer is trained on at
    most ``tokenizer.train_bytes`` of the training text. ``run_dir`` receives
    a copy of the tokenizer in ``<run_dir>/tokenizer/``. ``progress(stage,
    done, total)`` reports each stage. Raises DataError for missing, empty or
    non-UTF-8 text and ConfigError for settings that cannot work together.
    """
    start = time.perf_counter()
    data_cfg, tok_cfg = cfg.data, cfg.tokenizer
    if not 0.0 < data_cfg.val_fraction < 1.0 and not data_cfg.val_source:
        raise ConfigError([f"data.val_fraction must be in (0, 1), got {data_cfg.val_fraction}"])
    if tokenizer is None and not tok_cfg.path and tok_cfg.vocab_size > cfg.model.vocab_size:
        raise ConfigError([f"tokenizer.vocab_size ({tok_cfg.vocab_size}) is larger than model.vocab_size "
                           f"({cfg.model.vocab_size}); the model must have an embedding for every token"])
    cache = cache_root(data_cfg.cache_dir)
    remove_stale_temporaries(cache)
    if tokenizer is None and tok_cfg.path:
        tokenizer = _load_tokenizer(tok_cfg.path)
    # Documents are joined and split at the first special token of the tokenizer that will encode them.
    specials = list(tokenizer.special_tokens) if tokenizer is not None else list(tok_cfg.special_tokens)
    separator = specials[0] if specials else "\n\n"
    plan = _TextPlan(cfg, separator, cache, progress)
    try:
        trained = False
        if tokenizer is None:
            tokenizer, trained = _cached_or_trained_tokenizer(cfg, plan, cache, progress)
        token_key = _hash({"text": plan.key, "tokenizer": tokenizer.fingerprint()})
        entry = cache / "tokens" / token_key
        meta = _read_meta(entry)
        cached = meta is not None and not trained
        if cached:
            _verify_entry(entry)
        if meta is None:
            meta = _encode(plan, tokenizer, entry, progress)
    finally:
        plan.cleanup()
    if run_dir is not None:
        tokenizer.save(Path(run_dir) / "tokenizer")
    return PreparedData(
        tokenizer=tokenizer, train_path=entry / TRAIN_FILE, val_path=entry / VAL_FILE,
        train_tokens=meta["train_tokens"], val_tokens=meta["val_tokens"], val_bytes=meta["val_bytes"],
        train_bytes=meta["train_bytes"], source=meta["source"], cache_dir=entry, cached=cached,
        tokenizer_trained=trained, seconds=time.perf_counter() - start,
    )


class _TextPlan:
    """The training and validation text of a config: its cache key, and the text files on demand.

    The key needs only file metadata; the files (the built-in corpus
    extracted, ranges cut and joined into ``<cache>/work/<key>/``) are made
    the first time :meth:`texts` is called, and deleted by :meth:`cleanup`.
    """

    def __init__(self, cfg: ExperimentConfig, separator: str, cache: Path, progress: Progress | None):
        d = cfg.data
        self.cache, self.progress = cache, progress
        self.separator = separator.encode("utf-8")
        self.max_bytes = d.max_bytes
        self.val_fraction = d.val_fraction
        self.train_source = resolve_source(d.source, key="data.source")
        if d.val_source:
            self.val_source: TextSource | None = resolve_source(d.val_source, key="data.val_source")
            if self.val_source.valid_paths:  # a dataset named as validation text means its validation file
                self.val_source = TextSource(d.val_source, "dataset", self.val_source.valid_paths)
        elif self.train_source.valid_paths:
            self.val_source = TextSource(d.source, "dataset", self.train_source.valid_paths)
        else:
            self.val_source = None
        self.key = _hash({
            "version": PREPARE_VERSION, "train": self.train_source.identity(),
            "val": self.val_source.identity() if self.val_source else {"fraction": self.val_fraction},
            "max_bytes": self.max_bytes, "separator": separator,
        })
        self.work = cache / "work" / f"{self.key}-{os.getpid()}"
        self._texts: tuple[Path, Path, str] | None = None

    def texts(self) -> tuple[Path, Path, str]:
        """(training text file, validation text file, source label), making them if needed."""
        if self._texts is None:
            self._texts = self._make_texts()
        return self._texts

    def _make_texts(self) -> tuple[Path, Path, str]:
        train = JoinedText(tuple(self.train_source.files(self.cache, self.progress)), self.separator)
        end = train.size
        if self.max_bytes and self.max_bytes < end:
            end = split_point(train, self.max_bytes, slack=self.max_bytes // 10, backward_only=True)[0]
        if self.val_source is not None:
            val = JoinedText(tuple(self.val_source.files(self.cache, self.progress)), self.separator)
            val_end = val.size
            if self.max_bytes:
                cap = max(1, math.ceil(self.max_bytes * self.val_fraction))
                if cap < val_end:
                    val_end = split_point(val, cap, slack=cap // 10, backward_only=True)[0]
            train_range, val_range = (train, 0, end), (val, 0, val_end)
        else:
            val_size = round(end * self.val_fraction)
            used = JoinedText(train.paths, train.separator, limit=end)
            cut_end, cut_start = split_point(used, end - val_size, slack=val_size // 2)
            train_range, val_range = (train, 0, cut_end), (train, cut_start, end)
        label = self.train_source.label
        for name, (text, lo, hi) in (("training", train_range), ("validation", val_range)):
            if hi <= lo:
                raise DataError(f"the {name} text of {label} is empty after splitting ({text.size:,} bytes of "
                                "text); use a longer text, another data.val_fraction or a data.val_source")
        return (self._materialize(*train_range, "train.txt"), self._materialize(*val_range, "val.txt"), label)

    def _materialize(self, text: JoinedText, lo: int, hi: int, name: str) -> Path:
        """A file holding bytes [lo, hi) of ``text``: the original file if it is exactly that, else a copy."""
        whole = text.single_file(lo, hi)
        if whole is not None:
            check_range(text, lo, hi, progress=self.progress, stage=f"checking {name}")
            return whole
        return self._write(text, lo, hi, name)

    def _write(self, text: JoinedText, lo: int, hi: int, name: str) -> Path:
        path = self.work / name
        try:
            make_temp_dir(self.work)
            write_range(text, lo, hi, path, progress=self.progress, stage=f"writing {name}")
        except OSError as e:
            raise DataError(f"cannot write {path} while preparing data: {write_error_message(path, e)}") from None
        return path

    def tokenizer_training_text(self, limit: int) -> Path:
        """The training text, or its first ``limit`` bytes (ending at a document boundary if one is near)."""
        train_path, _, _ = self.texts()
        size = train_path.stat().st_size
        if not limit or limit >= size:
            return train_path
        text = JoinedText((train_path,), self.separator)
        end = split_point(text, limit, slack=limit // 10, backward_only=True)[0]
        return self._write(text, 0, max(end, 1), "tokenizer_train.txt")

    def cleanup(self) -> None:
        """Delete the copies made in the work directory (the token files are what is kept)."""
        shutil.rmtree(self.work, ignore_errors=True)


def _cached_or_trained_tokenizer(cfg: ExperimentConfig, plan: _TextPlan, cache: Path,
                                 progress: Progress | None) -> tuple[object, bool]:
    """The tokenizer trained on this text with this config: from the cache, or trained now."""
    from lm.tokenizer import Tokenizer, train_bpe

    tok_cfg = cfg.tokenizer
    key = _hash({"text": plan.key, "vocab_size": tok_cfg.vocab_size,
                 "special_tokens": list(tok_cfg.special_tokens), "train_bytes": tok_cfg.train_bytes})
    directory = cache / "tokenizers" / key
    if _tokenizer_complete(directory):
        return Tokenizer.from_dir(directory), False
    text = plan.tokenizer_training_text(tok_cfg.train_bytes)
    size = text.stat().st_size
    specials = list(tok_cfg.special_tokens)
    num_merges = max(1, tok_cfg.vocab_size - 256 - len(specials))

    def report(bytes_read: int, merges_done: int) -> None:
        if progress is None:
            return
        if merges_done:
            progress("training tokenizer (merges)", merges_done, num_merges)
        else:
            progress("training tokenizer (counting)", bytes_read, size)

    vocab, merges = train_bpe(text, tok_cfg.vocab_size, specials, progress=report)
    tokenizer = Tokenizer(vocab, merges, special_tokens=specials)
    tmp = make_temp_dir(directory.with_name(f"{key}.tmp-{os.getpid()}"))
    try:
        tokenizer.save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, directory, _tokenizer_complete)
    return tokenizer, True


def _encode(plan: _TextPlan, tokenizer, entry: Path, progress: Progress | None) -> dict:
    """Encode the training and validation text into a new cache entry; return its meta."""
    train_text, val_text, label = plan.texts()
    tmp = make_temp_dir(entry.with_name(f"{entry.name}.tmp-{os.getpid()}"))
    start = time.perf_counter()
    infos = {}
    try:
        for name, text, out in (("train", train_text, TRAIN_FILE), ("val", val_text, VAL_FILE)):
            def report(done, total=None, _name=name, _size=text.stat().st_size):
                if progress is not None:
                    progress(f"encoding {_name}", done, total if total is not None else _size)

            infos[name] = tokenizer.encode_file(text, tmp / out, progress=report)
    except BaseException:  # a full disk, bad bytes, Ctrl-C: nothing half-made stays in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = {
        "version": PREPARE_VERSION, "source": label, "created": time.time(),
        "seconds": round(time.perf_counter() - start, 3), "text_key": plan.key,
        "tokenizer_fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
        "train_tokens": int(infos["train"].num_tokens), "val_tokens": int(infos["val"].num_tokens),
        "train_bytes": int(infos["train"].num_bytes), "val_bytes": int(infos["val"].num_bytes),
    }
    atomic_write(tmp / META_FILE, json.dumps(meta, indent=1) + "\n")
    _publish(tmp, entry, lambda d: _read_meta(d) is not None)
    return _read_meta(entry) or meta


def _publish(tmp: Path, final: Path, is_complete: Callable[[Path], bool]) -> None:
    """Move a finished directory into place; if another process got there first, keep theirs.

    Directories appear only complete (by rename), so an existing one that is
    not complete was damaged (a file deleted by hand): it is replaced.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    (tmp / TEMP_MARKER).unlink(missing_ok=True)
    if final.exists() and not is_complete(final):
        shutil.rmtree(final, ignore_errors=True)
    try:
        atomic_rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# Temporary folders are named <20 hex digits>-<pid> (work/) or <20 hex digits>.tmp-<pid> (tokens/,
# tokenizers/) and hold a marker naming the process that made them; nothing else is ever deleted.
TEMP_MARKER = ".lab-temporary"
_TEMP_DIRS = {"work": re.compile(r"^[0-9a-f]{20}-\d+$"), "tokens": re.compile(r"^[0-9a-f]{20}\.tmp-\d+$"),
              "tokenizers": re.compile(r"^[0-9a-f]{20}\.tmp-\d+$")}


def make_temp_dir(path: Path) -> Path:
    """Create (afresh) one of this process's temporary folders, with the marker that lets a later cleanup
    know lab made it and which process it belonged to."""
    if not (path / TEMP_MARKER).is_file():
        if path.exists():  # a folder of ours from a dead process with this pid: its marker is gone
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        atomic_write(path / TEMP_MARKER, json.dumps(identity()) + "\n")
    return path


def remove_stale_temporaries(cache: Path) -> list[Path]:
    """Delete temporary folders left by preparations that were killed; return what was deleted.

    Only a folder that lab provably made is deleted: its name has lab's pattern, it sits in the
    cache's work/, tokens/ or tokenizers/, and its marker names a process of this host that has
    ended. Anything else (a user's ``work/thesis-2024/``) is never touched.
    """
    removed = []
    for folder, pattern in _TEMP_DIRS.items():
        parent = cache / folder
        try:
            children = list(parent.iterdir()) if parent.is_dir() and not parent.is_symlink() else []
        except OSError:
            continue
        for path in children:
            if not pattern.match(path.name) or path.is_symlink() or not path.is_dir():
                continue
            try:
                owner = json.loads((path / TEMP_MARKER).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(owner, dict) or owner.get("pid") != int(path.name.rsplit("-", 1)[1]):
                continue
            if process_state(owner.get("pid"), owner.get("host"), owner.get("pid_start")) in (DEAD, REUSED):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _verify_entry(entry: Path) -> None:
    """Check a cached entry's token files against the checksums in their sidecars (DataError saying how to
    rebuild when a file was damaged on disk or changed by hand)."""
    from lm.tokenizer.token_file import read_token_file_info, verify_token_file

    rebuild = (f"the cached tokens are damaged: delete the cache entry (`rm -r {entry}`) and run the same "
               "command again to rebuild it")
    for name in (TRAIN_FILE, VAL_FILE):
        verify_token_file(entry / name, read_token_file_info(entry / name), rebuild=rebuild)


def _tokenizer_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("vocab.json", "merges.txt"))


def _read_meta(entry: Path) -> dict | None:
    """The meta of a complete cache entry, or None (missing, interrupted or from an older version)."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != PREPARE_VERSION:
        return None
    needed = (TRAIN_FILE, VAL_FILE, TRAIN_FILE + ".json", VAL_FILE + ".json")  # token files and their sidecars
    if not all((entry / name).is_file() for name in needed):
        return None
    return meta


def _load_tokenizer(path: str):
    from lm.tokenizer import Tokenizer

    return Tokenizer.from_dir(Path(path).expanduser())


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_token_sets(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every complete token cache entry: its meta plus ``path`` and ``disk_bytes`` (for ``lab data list``)."""
    root = cache_root(cache_dir) / "tokens"
    out = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if ".tmp-" in entry.name:
            continue
        meta = _read_meta(entry)
        if meta is not None:
            disk = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
            out.append(meta | {"path": str(entry), "disk_bytes": disk})
    return out

