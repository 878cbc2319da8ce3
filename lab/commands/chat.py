"""``lab chat``: a prompt loop in a plain terminal, streaming a trained run's replies.

The models are base language models, so a "conversation" is one running text:
each line you type is appended to it and the model continues from there. The
KV cache keeps the text read so far, so each turn only reads the new line.
Works with piped input too (one line per turn), which is how it is tested.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lab.commands.sample import add_model_args, add_sampling_args, load_generator, sampling_params, stats_line

HELP = """commands:
  /temp T      temperature (0 = greedy)       /top_p P   nucleus cut, 1 = off
  /top_k K     keep the K likeliest, 0 = off  /max N     tokens per reply
  /seed N      reproducible replies (/seed off for random)
  /stop TEXT   also stop at TEXT (/stop off clears)
  /reset       forget the text so far          /settings  show the settings
  /help        this list                       /quit      leave (also Ctrl-D)
Each line you type is appended to the running text and the model continues it;
Ctrl-C stops a reply."""

# command -> (SamplingParams field, parser)
SETTINGS = {
    "/temp": ("temperature", float), "/temperature": ("temperature", float),
    "/top_p": ("top_p", float), "/top-p": ("top_p", float),
    "/top_k": ("top_k", int), "/top-k": ("top_k", int),
    "/max": ("max_new_tokens", int), "/max_tokens": ("max_new_tokens", int),
    "/seed": ("seed", int),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "chat", help="talk to a trained model in the terminal",
        description="A prompt loop over a run's model: each line continues the running text and the reply "
                    "streams in. Type /help for the commands (/temp, /top_p, /top_k, /max, /seed, /reset, "
                    "/quit). Reads lines from stdin when it is not a terminal.")
    add_model_args(p)
    add_sampling_args(p)
    return p


def _history_file() -> Path:
    root = os.environ.get("LAB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lab")
    return Path(root) / "chat_history"


class Chat:
    """The loop's state: the generator, the settings and where text goes."""

    def __init__(self, generator, params, out=None, interactive: bool = False):
        self.gen = generator
        self.params = params
        self.out = out or sys.stdout
        self.interactive = interactive

    def say(self, text: str) -> None:
        """A line from the program (not the model)."""
        dim, reset = ("\033[2m", "\033[0m") if self.interactive else ("", "")
        self.out.write(f"{dim}{text}{reset}\n")
        self.out.flush()

    def settings_text(self) -> str:
        p = self.params
        stop = ", ".join(repr(s) for s in p.stop) or "none"
        return (f"temperature {p.temperature}, top_p {p.top_p}, top_k {p.top_k}, max {p.max_new_tokens} tokens, "
                f"seed {p.seed if p.seed is not None else 'random'}, stop strings {stop}")

    def command(self, line: str) -> bool:
        """Handle a /command; False means quit."""
        import dataclasses

        from lm.errors import LabError

        name, _, arg = line.strip().partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return False
        if name in ("/help", "/?"):
            self.say(HELP)
        elif name == "/reset":
            self.gen.reset()
            self.say("[the running text is cleared]")
        elif name in ("/settings", "/show"):
            self.say(self.settings_text())
        elif name == "/stop":
            stop = () if arg.lower() in ("", "off", "none") else (*self.params.stop, arg)
            self.params = dataclasses.replace(self.params, stop=stop)
            self.say(self.settings_text())
        elif name in SETTINGS:
            field, parse = SETTINGS[name]
            if not arg:
                self.say(f"{name} needs a value, e.g. {name} {getattr(self.params, field) or 1}")
                return True
            try:
                value = None if field == "seed" and arg.lower() in ("off", "none", "random") else parse(arg)
                self.params = dataclasses.replace(self.params, **{field: value}).validate()
            except ValueError:
                self.say(f"{name} needs {'an integer' if parse is int else 'a number'}, got {arg!r}")
                return True
            except LabError as e:
                self.say(str(e))
                return True
            self.say(self.settings_text())
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return True

    def reply(self, text: str) -> None:
        """Stream the model's continuation of the running text plus ``text``."""
        stream = self.gen.stream(text, self.params, continue_history=True)
        try:
            for item in stream:
                if item.text:  # notices (context overflow) come in the stats line after the reply
                    self.out.write(item.text)
                    self.out.flush()
        except KeyboardInterrupt:
            self.out.write("\n")
            self.say("[stopped]")
            return
        self.out.write("\n")
        self.say(stats_line(stream.result))


def _read_lines(interactive: bool):
    """Input lines; readline editing and history on a terminal."""
    if not interactive:
        # Bytes decoded with replacement: invalid UTF-8 on a pipe becomes U+FFFD instead of ending the session.
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text-only stdin (a StringIO): already str
            for line in sys.stdin:
                yield line.rstrip("\n")
            return
        for raw in stream:
            yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
        return
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        readline = None
    hist = _history_file()
    if readline is not None:
        try:
            readline.read_history_file(hist)
        except OSError:
            pass
    try:
        while True:
            try:
                yield input("you> ")
            except KeyboardInterrupt:
                print()
                continue
            except EOFError:
                print()
                return
    finally:
        if readline is not None:
            try:
                hist.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(hist)
            except OSError:
                pass


def run(args) -> int:
    params = sampling_params(args)
    interactive = sys.stdin.isatty()
    gen, loaded = load_generator(args)
    chat = Chat(gen, params, interactive=interactive and sys.stdout.isatty())
    chat.say(f"chat with {loaded.checkpoint_path}; /help for commands, /quit to leave")
    for line in _read_lines(interactive):
        if line.strip().startswith("/"):
            if not chat.command(line):
                break
        elif line.strip():
            chat.reply(line)
    return 0
