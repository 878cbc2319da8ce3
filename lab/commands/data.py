"""``lab data``: download datasets, prepare (tokenize and cache) an experiment's data, list what is on disk.

    lab data get tinystories|owt|tinyshakespeare [--dest DIR]   download (resumable, verified)
    lab data prepare x.toml [--set k=v ...]                     train/load the tokenizer, encode, cache
    lab data list                                               datasets, built-in corpus, token caches
    lab data builtin [--rebuild]                                extract the built-in corpus, show its size

Argument parsing only at import time; ``lm.data`` and rich are imported in ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DATASET_NAMES = ("tinystories", "owt", "tinyshakespeare")  # kept in step with lm.data.registry.DATASETS


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``lab data`` and its actions."""
    p = subparsers.add_parser(
        "data", help="download datasets, tokenize and cache an experiment's data, list caches",
        description="Download datasets, prepare (tokenize and cache) an experiment's data, list what is cached.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    get = actions.add_parser("get", help="download a dataset (resumes an interrupted download)",
                             description="Download a public dataset into the data directory "
                                         "($LAB_DATA_DIR, default ~/.cache/lab/datasets).")
    get.add_argument("name", help=f"dataset: {', '.join(DATASET_NAMES)}")
    get.add_argument("--dest", metavar="DIR", help="data directory to download into (files go to DIR/NAME/)")
    get.add_argument("--base-url", metavar="URL",
                     help="fetch from this base address instead of the publisher ($LAB_DATA_BASE_URL)")
    get.add_argument("--force", action="store_true", help="download again even if the files are present")

    prep = actions.add_parser("prepare", help="tokenize an experiment's data into the cache",
                              description="Resolve the experiment's text, train or load its tokenizer and "
                                          "encode train and validation text into cached token files.")
    prep.add_argument("file", help="experiment file (or a name in experiments/, e.g. quickstart)")
    prep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="override one key (repeatable); VALUE is TOML (a bare word is a string)")
    prep.add_argument("--json", action="store_true", help="print the summary as JSON")

    lst = actions.add_parser("list", help="downloaded datasets, the built-in corpus and cached token files",
                             description="Show downloaded datasets, the built-in corpus and cached token files.")
    lst.add_argument("--json", action="store_true", help="print as JSON")

    blt = actions.add_parser("builtin", help="extract the built-in corpus (stdlib prose) and show its size",
                             description="Extract (or find in the cache) the built-in English corpus that "
                                         "data.source = 'builtin' uses, and show where it is and how big.")
    blt.add_argument("--rebuild", action="store_true", help="extract again even if cached")
    return p


def run(args) -> int:
    """Dispatch to the chosen action; user errors surface as LabError subclasses."""
    return {"get": _get, "prepare": _prepare, "list": _list, "builtin": _builtin}[args.action](args)


def _get(args) -> int:
    from lm.data.download import download_dataset
    from lm.data.paths import data_root
    from lm.data.registry import get_dataset, human_bytes

    dataset = get_dataset(args.name)
    console = _console()
    console.print(f"[bold]{dataset.name}[/]: {dataset.description}")
    with ProgressBars(console) as bars:
        paths = download_dataset(dataset, args.dest, base_url=args.base_url, force=args.force, progress=bars)
    for split, path in paths.items():
        console.print(f"  {split:5s} {path}  ({human_bytes(path.stat().st_size)})")
    if args.dest and data_root(args.dest).resolve() != data_root().resolve():
        console.print(f"Set LAB_DATA_DIR={data_root(args.dest)} so that data.source = \"{dataset.name}\" finds it.")
    return 0


def _prepare(args) -> int:
    from lm.config.loader import load_experiment
    from lm.data.prepare import prepare_data

    cfg = load_experiment(args.file, args.overrides)
    console = _console()
    with ProgressBars(console, enabled=not args.json) as bars:
        prepared = prepare_data(cfg, progress=bars)
    summary = prepared.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    how = "from the cache" if prepared.cached else (
        "tokenizer trained and text encoded" if prepared.tokenizer_trained else "text encoded")
    console.print(f"[bold]{cfg.name}[/]: {prepared.source} prepared in {prepared.seconds:.2f} s ({how})")
    console.print(f"  train  {prepared.train_tokens:>14,} tokens  {prepared.train_bytes:>14,} bytes")
    console.print(f"  val    {prepared.val_tokens:>14,} tokens  {prepared.val_bytes:>14,} bytes")
    console.print(f"  {prepared.bytes_per_token:.3f} bytes/token with a {prepared.tokenizer.vocab_size:,}-token "
                  "vocabulary")
    console.print(f"  cache  {prepared.cache_dir}")
    return 0


def _list(args) -> int:
    from lm.data.builtin import builtin_corpus_info
    from lm.data.download import local_file_ok, read_manifest
    from lm.data.paths import cache_root, data_root
    from lm.data.prepare import cached_token_sets
    from lm.data.registry import DATASETS, dataset_dir, human_bytes

    datasets = []
    for ds in DATASETS.values():
        directory = dataset_dir(ds.name)
        manifest = read_manifest(directory)
        files = []
        for f in ds.files:
            path = directory / f.local
            partial = (directory / (f.remote + ".part"))
            files.append({"split": f.split, "path": str(path), "present": local_file_ok(f, path, manifest),
                          "bytes": path.stat().st_size if path.is_file() else 0,
                          "partial_bytes": partial.stat().st_size if partial.is_file() else 0})
        datasets.append({"name": ds.name, "directory": str(directory), "files": files})
    builtin = builtin_corpus_info()
    tokens = cached_token_sets()
    if args.json:
        print(json.dumps({"data_dir": str(data_root()), "cache_dir": str(cache_root()), "datasets": datasets,
                          "builtin": builtin, "token_sets": tokens}, indent=1))
        return 0

    from rich import box
    from rich.table import Table

    console = _console()
    table = _table(Table, box, f"datasets in {data_root()}")
    for col in ("dataset", "split", "size", "state"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for ds in datasets:
        for f in ds["files"]:
            state = ("downloaded" if f["present"] else
                     f"partial, {human_bytes(f['partial_bytes'])}" if f["partial_bytes"] else "not downloaded")
            table.add_row(ds["name"], f["split"], human_bytes(f["bytes"]) if f["bytes"] else "-", state)
    console.print(table)
    if not all(f["present"] for ds in datasets for f in ds["files"]):
        console.print("Download (or resume) with `lab data get NAME`.")
    if builtin:
        console.print(f"built-in corpus: {human_bytes(builtin['bytes'])}, {builtin['documents']:,} documents "
                      f"({builtin['path']})")
    else:
        console.print("built-in corpus: not extracted yet (made on first use, or by `lab data builtin`)")
    table = _table(Table, box, f"token caches in {cache_root() / 'tokens'}")
    for col in ("source", "vocab", "train tok", "val tok", "B/tok", "disk", "made"):
        table.add_column(col, justify="left" if col in ("source", "made") else "right", no_wrap=col != "source")
    for t in tokens:
        created = time.strftime("%m-%d %H:%M", time.localtime(t.get("created", 0)))
        table.add_row(_short_source(str(t["source"])), f"{t['vocab_size']:,}", f"{t['train_tokens']:,}",
                      f"{t['val_tokens']:,}", f"{t['train_bytes'] / max(1, t['train_tokens']):.2f}",
                      human_bytes(t["disk_bytes"]), created)
    if tokens:
        console.print(table)
    else:
        console.print("token caches: none yet (made by `lab data prepare` or `lab run`)")
    return 0


def _table(table_cls, box, title: str):
    """A borderless table that fits 80 columns (logs and SSH sessions)."""
    return table_cls(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def _short_source(source: str, width: int = 24) -> str:
    """A source label that fits a table cell: long paths keep their last components."""
    if len(source) <= width or "/" not in source:
        return source
    parts = source.split("/")
    out = parts[-1]
    for part in reversed(parts[:-1]):
        if len(out) + len(part) + 3 > width:
            break
        out = f"{part}/{out}"
    return f".../{out}"


def _builtin(args) -> int:
    from lm.data.builtin import builtin_corpus_info, builtin_corpus_path
    from lm.data.registry import human_bytes

    console = _console()
    with ProgressBars(console) as bars:
        path = builtin_corpus_path(progress=bars, rebuild=args.rebuild)
    info = builtin_corpus_info() or {}
    console.print(f"built-in corpus: {human_bytes(path.stat().st_size)} ({path.stat().st_size:,} bytes), "
                  f"{info.get('documents', 0):,} documents, {info.get('paragraphs', 0):,} paragraphs "
                  f"from {info.get('files', 0):,} files of Python {info.get('python', '?')}'s standard library")
    console.print(f"  {path}")
    return 0


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# Stages whose counts are bytes (shown as sizes and speeds); the others count items (files, merges).
_BYTE_STAGES = ("download", "decompress", "verify", "checking", "writing", "counting", "encoding")


class ProgressBars:
    """A ``progress(stage, done, total)`` callback drawing one rich progress bar per stage.

    On a terminal the bars are live; elsewhere (a log file, a pipe) nothing is
    drawn, so logs do not fill up with redraws.
    """

    def __init__(self, console=None, *, enabled: bool = True):
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        live = enabled and (console.is_terminal if console is not None else sys.stderr.isatty())
        self._tasks: dict[str, int] = {}
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), *_amount_columns(),
            TimeRemainingColumn(), console=console,
            disable=not live or bool(os.environ.get("LAB_NO_PROGRESS")),
        )

    def __enter__(self) -> "ProgressBars":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        task_id = self._tasks.get(stage)
        if task_id is None:
            is_bytes = any(word in stage for word in _BYTE_STAGES)
            task_id = self._tasks[stage] = self._progress.add_task(stage, total=total or None, bytes=is_bytes)
        self._progress.update(task_id, completed=done, total=total or None)


def _amount_columns():
    """Columns that show sizes and speeds for byte stages, ``done/total`` for counted ones."""
    from rich.progress import DownloadColumn, ProgressColumn, TransferSpeedColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task):
            if task.fields.get("bytes"):
                return DownloadColumn().render(task)
            return Text(f"{int(task.completed):,}/{int(task.total or 0):,}", style="progress.download")

    class Speed(ProgressColumn):
        def render(self, task):
            return TransferSpeedColumn().render(task) if task.fields.get("bytes") else Text("")

    return Amount(), Speed()
