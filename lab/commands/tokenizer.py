"""``lab tokenizer``: train a byte-level BPE tokenizer, inspect it, encode text or a corpus with it.

Examples::

    lab tokenizer train data/tinystories.txt --vocab-size 10000 --out tok/
    lab tokenizer info tok/
    lab tokenizer encode tok/ --text "Once upon a time"
    lab tokenizer encode tok/ data/tinystories.txt --out data/tinystories.bin
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_SPECIALS = ["<|endoftext|>"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "tokenizer", help="train, inspect and apply byte-level BPE tokenizers",
        description="Byte-level BPE tokenizers in GPT-2 format (vocab.json, merges.txt, special_tokens.json).\n"
                    "  lab tokenizer train corpus.txt --vocab-size 10000 --out tok/\n"
                    "  lab tokenizer info tok/\n"
                    "  lab tokenizer encode tok/ --text 'Once upon a time'\n"
                    "  lab tokenizer encode tok/ corpus.txt --out corpus.bin",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a tokenizer on a UTF-8 text file",
                       description="Train a byte-level BPE (GPT-2 pre-tokenizer, CS336 tie-breaking) and save it "
                                   "as vocab.json, merges.txt and special_tokens.json in --out.")
    t.add_argument("input", metavar="INPUT", help="UTF-8 text corpus")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="256 bytes + special tokens + merges, e.g. 10000")
    t.add_argument("--special", action="extend", nargs="+", default=None, metavar="TOKEN",
                   help="special token(s), never merged into (default: <|endoftext|>)")
    t.add_argument("--no-special", action="store_true", help="train without special tokens")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer files into")
    t.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that pre-tokenize the corpus (default: all cores)")
    t.add_argument("--force", action="store_true", help="overwrite the tokenizer files in a non-empty --out")

    i = sub.add_parser("info", help="show a tokenizer's size, special tokens, fingerprint and longest tokens")
    i.add_argument("dir", metavar="DIR", help="tokenizer directory (as written by `lab tokenizer train`)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    e = sub.add_parser("encode", help="show how a text tokenizes, or encode a corpus into a token file",
                       description="With --text, print the ids and pieces of a text. With INPUT, write the "
                                   "token file --out (uint16/uint32 ids) and its JSON sidecar --out.json.")
    e.add_argument("dir", metavar="DIR", help="tokenizer directory")
    e.add_argument("input", nargs="?", metavar="INPUT", help="UTF-8 corpus to encode into a token file")
    e.add_argument("--text", help="text to tokenize and show")
    e.add_argument("--out", metavar="PATH", help="token file to write (default: INPUT with .bin)")
    e.add_argument("--workers", type=int, default=None, metavar="N",
                   help="encoding processes (default: all cores)")
    e.add_argument("--force", action="store_true", help="overwrite an existing --out token file")
    return p


def run(args) -> int:
    action = {"train": _train, "info": _info, "encode": _encode}[args.tokenizer_command]
    return action(args)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _train(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from lm.atomic import refuse_overwrite
    from lm.errors import TokenizerError
    from lm.tokenizer import Tokenizer
    from lm.tokenizer.chunks import check_corpus
    from lm.tokenizer.pretokenize import normalize_special_tokens
    from lm.tokenizer.train import check_vocab_size, train_bpe_detailed

    specials = [] if args.no_special else normalize_special_tokens(args.special or DEFAULT_SPECIALS)
    num_merges = check_vocab_size(args.vocab_size, specials)
    size = check_corpus(args.input)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise TokenizerError(f"--out {args.out} is a file; give a directory for vocab.json and merges.txt")
    refuse_overwrite(args.out, force=args.force, directory=True)
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        counting = bar.add_task("pre-tokenizing", total=max(size, 1), detail=_human_bytes(size))
        merging = bar.add_task("merging", total=max(num_merges, 1), detail=f"{num_merges} merges", start=False)

        def report(bytes_read: int, merges_done: int) -> None:
            if merges_done == 0:
                bar.update(counting, completed=bytes_read)
            else:
                bar.update(counting, completed=max(size, 1))
                bar.start_task(merging)
                bar.update(merging, completed=merges_done)

        result = train_bpe_detailed(args.input, args.vocab_size, specials, progress=report, workers=args.workers)
        bar.update(counting, completed=max(size, 1))
        bar.start_task(merging)
        bar.update(merging, completed=max(num_merges, 1))
    tokenizer = Tokenizer(result.vocab, result.merges, result.special_tokens)
    out = tokenizer.save(args.out)
    elapsed = time.perf_counter() - start
    print(f"trained {tokenizer.vocab_size}-token BPE on {args.input} ({_human_bytes(result.num_bytes)}) "
          f"in {elapsed:.2f} s (pre-tokenize {result.seconds_pretokenize:.2f} s, merge {result.seconds_merge:.2f} s)")
    if len(result.merges) < num_merges:
        print(f"note: the corpus ran out of pairs after {len(result.merges)} of {num_merges} merges")
    print(f"  pre-tokens   {result.num_pretokens:,} ({result.num_unique_pretokens:,} distinct)")
    print(f"  tokens       {result.num_tokens:,} on the training corpus")
    print(f"  compression  {result.bytes_per_token:.3f} bytes/token")
    print(f"  special      {', '.join(result.special_tokens) or '(none)'}")
    print(f"  saved        {out}/  (vocab.json, merges.txt, special_tokens.json)")
    print(f"  fingerprint  {tokenizer.fingerprint()[:16]}")
    return 0


def _printable(token: bytes) -> str:
    text = token.decode("utf-8", errors="replace")
    return json.dumps(text, ensure_ascii=False)


def _info(args) -> int:
    from lm.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(args.dir)
    specials = {tok.special_token_id(s): s for s in tok.special_tokens}
    ordinary = [(i, b) for i, b in tok.vocab.items() if i not in specials]
    longest = sorted(ordinary, key=lambda item: (-len(item[1]), item[0]))[:10]
    summary = {
        "dir": str(args.dir), "vocab_size": tok.vocab_size, "merges": len(tok.merges),
        "special_tokens": {s: i for i, s in specials.items()}, "fingerprint": tok.fingerprint(),
        "longest_tokens": [{"id": i, "token": b.decode("utf-8", errors="replace"), "bytes": len(b)} for i, b in longest],
        "last_merges": [f"{a.decode('utf-8', 'replace')} + {b.decode('utf-8', 'replace')}" for a, b in tok.merges[-5:]],
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
        return 0
    print(f"tokenizer   {args.dir}")
    print(f"vocab size  {tok.vocab_size} ({len(tok.merges)} merges)")
    print(f"special     {', '.join(f'{s} = {i}' for i, s in specials.items()) or '(none)'}")
    print(f"fingerprint {tok.fingerprint()}")
    print("longest     " + "  ".join(f"{i}:{_printable(b)}" for i, b in longest[:6]))
    print("last merges " + "  ".join(_printable(a) + "+" + _printable(b) for a, b in tok.merges[-4:]))
    return 0


def _encode(args) -> int:
    from lm.errors import TokenizerError
    from lm.tokenizer import Tokenizer

    if (args.text is None) == (args.input is None):
        raise TokenizerError("lab tokenizer encode needs either --text TEXT or an INPUT corpus file (not both)")
    tok = Tokenizer.from_dir(args.dir)
    if args.text is not None:
        ids = tok.encode(args.text)
        print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(1, len(ids)):.2f} bytes/token")
        print("ids    " + " ".join(map(str, ids)))
        print("pieces " + " ".join(_printable(tok.token_bytes(i)) for i in ids))
        return 0
    return _encode_file(tok, args)


def _encode_file(tok, args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from lm.atomic import refuse_overwrite
    from lm.errors import TokenizerError
    from lm.tokenizer.chunks import check_corpus

    size = check_corpus(args.input)
    out = args.out or os.path.splitext(args.input)[0] + ".bin"
    if os.path.abspath(out) == os.path.abspath(args.input):
        raise TokenizerError(f"--out {out} is the corpus being encoded; give another path for the token file")
    refuse_overwrite(out, force=args.force)
    refuse_overwrite(out + ".json", force=args.force, option="the sidecar")
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(TextColumn("encoding"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task("encoding", total=max(size, 1))
        info = tok.encode_file(args.input, out, workers=args.workers,
                               progress=lambda done, total: bar.update(task, completed=done))
    elapsed = time.perf_counter() - start
    print(f"encoded {args.input} ({_human_bytes(info.num_bytes)}) into {out} in {elapsed:.2f} s "
          f"({info.num_bytes / max(elapsed, 1e-9) / 1e6:.1f} MB/s)")
    print(f"  tokens       {info.num_tokens:,} ({info.dtype})")
    print(f"  compression  {info.num_bytes / max(1, info.num_tokens):.3f} bytes/token")
    print(f"  sidecar      {out}.json")
    sys.stdout.flush()
    return 0
