"""The Chat tab: talk to a trained run, the reply streaming in from a worker thread.

Like ``lab chat``, the model is a base LM and the conversation is one running
text: each prompt is appended and the model continues it (its KV cache keeps
what was read). torch is imported here only, inside the worker, the first
time a reply is asked for. ctrl+g stops a reply at once; with "colors" on,
every generated token is tinted by the probability the model gave it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Select, Static, Switch

from lab.tui.tabs.base import LabPane
from lab.tui.messages import ChatPieces, notify
from lab.views.chat import ChatSession, checkpoint_choice, checkpoint_options
from lm.errors import LabError

# (lowest probability, style): a token's color says how sure the model was.
PROB_STYLES = ((0.5, "green"), (0.2, "cyan"), (0.05, "yellow"), (0.0, "red"))
FLUSH_SECONDS = 0.05  # how often streamed pieces are handed to the UI


def prob_style(p: float | None) -> str:
    """The style of a token with probability ``p`` (no style when unknown)."""
    if p is None:
        return ""
    return next(style for lo, style in PROB_STYLES if p >= lo)


def legend() -> Text:
    t = Text("token probability: ", style="dim")
    for (lo, style), hi in zip(PROB_STYLES, ("1", "0.5", "0.2", "0.05")):
        t.append(f"{lo:g}-{hi} ", style=style)
    return t


class ChatPane(LabPane):
    """Run and checkpoint pickers, sampling settings, the transcript and the prompt."""

    INITIAL_FOCUS = "#chat-prompt"

    BINDINGS = [
        Binding("ctrl+g", "stop_generation", "Stop reply", tooltip="stop the reply being generated, now"),
        Binding("ctrl+n", "new_conversation", "New text",
                tooltip="forget the running text; the model starts a new document"),
        Binding("ctrl+r", "reload_runs", "Reload runs", tooltip="reload the list of runs that have a checkpoint"),
        Binding("pageup", "scroll_log(-1)", "Scroll up", show=False, tooltip="scroll the text up"),
        Binding("pagedown", "scroll_log(1)", "Scroll down", show=False, tooltip="scroll the text down"),
    ]

    @classmethod
    def for_app(cls, app, **kwargs) -> "ChatPane":
        return cls(app.supervisor.runs_dir, app.supervisor.runs_label, **kwargs)

    def __init__(self, runs_dir: Path, runs_label: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.runs_dir = runs_dir
        self.runs_label = runs_label or str(runs_dir)
        self.transcript = Text()
        self.generating = False
        self._stop = threading.Event()
        self.session = ChatSession()  # the model: only the chat worker touches it
        self.checkpoint_note = ""
        self._options: list[tuple[str, str]] = []
        self.replies = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="chat-settings"):
            yield Select([], id="chat-run", compact=True, prompt="(run)")
            yield Select([("best", "best"), ("latest", "latest")], value="best", allow_blank=False,
                         id="chat-checkpoint", compact=True)
        with Horizontal(id="chat-sampling"):
            yield Label("temp", classes="chat-label")
            yield Input("0.8", id="chat-temperature", classes="chat-number", compact=True, type="number")
            yield Label("top-p", classes="chat-label")
            yield Input("0.95", id="chat-top-p", classes="chat-number", compact=True, type="number")
            yield Label("max", classes="chat-label")
            yield Input("200", id="chat-max", classes="chat-number", compact=True, type="integer")
            yield Label("colors", classes="chat-label")
            yield Switch(value=False, id="chat-colors")
        with VerticalScroll(id="chat-log", can_focus=False):  # pageup/pagedown scroll it from the prompt
            yield Static("", id="chat-transcript")
        yield Static("", id="chat-status")
        yield Input(placeholder="type a prompt; enter sends, ctrl+g stops the reply", id="chat-prompt")

    async def on_mount(self) -> None:
        await self.action_reload_runs()

    async def shown(self) -> None:
        """The tab became active: pick up runs that appeared since."""
        await self.action_reload_runs()

    # ---- runs ----------------------------------------------------------------

    async def action_reload_runs(self) -> None:
        """List runs that have a checkpoint to chat with."""
        from lm.runs import list_runs

        runs = [r for r in list_runs(self.runs_dir) if (Path(r.path) / "checkpoints").is_dir()
                and any((Path(r.path) / "checkpoints").glob("*.pt"))]
        options = [(f"{r.name} ({r.state})", str(r.path)) for r in runs]
        if [v for _, v in options] == [v for _, v in self._options]:
            return
        self._options = options
        old = self.query_one("#chat-run", Select)
        current = old.value
        if not options:
            old.set_options([])
            self._status(f"no run with a checkpoint in {self.runs_label}/ yet", "dim")
            return
        # A fresh Select without the blank entry: once there are runs, one of them is always chosen.
        value = current if current in [v for _, v in options] else options[0][1]
        had_focus = old.has_focus
        new = Select(options, value=value, allow_blank=False, id="chat-run", compact=True)
        await old.remove()
        await self.query_one("#chat-settings").mount(new, before=0)
        if had_focus:
            new.focus()
        self._pick_checkpoint(str(value))

    @on(Select.Changed, "#chat-run")
    def _run_changed(self, event: Select.Changed) -> None:
        if event.value is not Select.NULL:
            self._pick_checkpoint(str(event.value))

    def _pick_checkpoint(self, run: str) -> None:
        """Offer the run's checkpoints and choose the default one (best, else latest), saying which."""
        names = checkpoint_options(run)
        which, note = checkpoint_choice(run)
        sel = self.query_one("#chat-checkpoint", Select)
        sel.set_options([(n, n) for n in names] or [("best", "best")])
        if which is not None:
            sel.value = which
        self.checkpoint_note = note
        self._status(note, "dim" if which else "yellow")

    async def select_run(self, path: str | Path, checkpoint: str | None = None) -> None:
        """Choose the run (and a checkpoint; None: its default) to talk to (tests and scripted use)."""
        await self.action_reload_runs()
        self.query_one("#chat-run", Select).value = str(Path(path))
        self._pick_checkpoint(str(Path(path)))
        if checkpoint is not None:
            self.query_one("#chat-checkpoint", Select).value = checkpoint

    # ---- generating ----------------------------------------------------------

    def _params(self):
        from lm.decode import SamplingParams

        def num(id_: str, kind):
            raw = self.query_one(f"#{id_}", Input).value.strip()
            try:
                return kind(raw)
            except ValueError:
                raise LabError(f"{id_.removeprefix('chat-')} must be {'an integer' if kind is int else 'a number'}, "
                               f"got {raw!r}") from None

        return SamplingParams(temperature=num("chat-temperature", float), top_p=num("chat-top-p", float),
                              max_new_tokens=num("chat-max", int)).validate()

    @on(Input.Submitted, "#chat-prompt")
    def _submit(self, event: Input.Submitted) -> None:
        event.stop()
        self.send(event.value)

    def send(self, prompt: str) -> None:
        """Append ``prompt`` to the running text and stream the model's continuation."""
        if self.generating:
            notify(self, "a reply is still streaming; ctrl+g stops it", severity="warning")
            return
        run = self.query_one("#chat-run", Select).value
        if run is Select.NULL:
            notify(self, "choose a run with a checkpoint first", severity="warning")
            return
        try:
            params = self._params()
        except LabError as e:
            notify(self, str(e), severity="error")
            return
        checkpoint = str(self.query_one("#chat-checkpoint", Select).value)
        self.query_one("#chat-prompt", Input).value = ""
        if self.transcript:
            self.transcript.append("\n")
        self.transcript.append(prompt, style="bold")
        self._show_transcript()
        self.generating = True
        self._stop.clear()
        self._status("loading the model..." if self.session.key != (run, checkpoint) else "generating...", "dim")
        self._generate(str(run), checkpoint, prompt, params)

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def _generate(self, run: str, checkpoint: str, prompt: str, params) -> None:
        try:
            with self.session.lock:
                gen = self.session.generator_for(run, checkpoint)
                stream = gen.stream(prompt, params, continue_history=True)
                pending: list[tuple[str, float | None]] = []
                notices: list[str] = []
                last = time.monotonic()
                iterator = iter(stream)
                try:
                    for item in iterator:
                        if self._stop.is_set():
                            break
                        if item.text:
                            pending.append((item.text, item.prob))
                        if item.event in ("overflow", "notice"):
                            notices.append(item.message)  # said once in the status line, not in the text
                        if pending and time.monotonic() - last >= FLUSH_SECONDS:
                            self.post_message(ChatPieces(pending))
                            pending, last = [], time.monotonic()
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                result = stream.result
                info = "stopped" if result is None else (
                    f"{result.new_tokens} tokens, {result.tokens_per_s:.1f} tokens/s, finished: {result.finish_reason}")
                if notices:
                    info += f"; {notices[-1]}" + (f" ({len(notices)} times)" if len(notices) > 1 else "")
                self.post_message(ChatPieces(pending, done=True, info=info))
        except LabError as e:
            self.post_message(ChatPieces([], done=True, info=f"error: {e}"))
        except Exception as e:  # a crash in the model code: say so in the tab, keep the console alive
            self.post_message(ChatPieces([], done=True, info=f"error: {type(e).__name__}: {e}"))

    @on(ChatPieces)
    def _pieces(self, message: ChatPieces) -> None:
        message.stop()
        colors = self.query_one("#chat-colors", Switch).value
        for text, prob in message.pieces:
            self.transcript.append(text, style=prob_style(prob) if colors else "")
        self._show_transcript()
        if message.done:
            self.generating = False
            self.replies += 1
            error = message.info.startswith("error")
            self._status(message.info, "red" if error else "dim")
            if colors:
                self.query_one("#chat-status", Static).update(
                    Text(message.info + "   ", style="dim") + legend())
        else:
            self._status("generating... (ctrl+g stops)", "dim")

    def _show_transcript(self) -> None:
        self.query_one("#chat-transcript", Static).update(self.transcript)
        self.query_one("#chat-log", VerticalScroll).scroll_end(animate=False)

    def _status(self, text: str, style: str = "") -> None:
        self.query_one("#chat-status", Static).update(Text(text, style=style))

    def action_scroll_log(self, direction: int) -> None:
        log = self.query_one("#chat-log", VerticalScroll)
        (log.scroll_page_down if direction > 0 else log.scroll_page_up)(animate=False)

    def action_stop_generation(self) -> None:
        if self.generating:
            self._stop.set()
            self._status("stopping...", "dim")

    def action_new_conversation(self) -> None:
        """Forget the running text (the model starts a fresh document)."""
        if self.generating:
            notify(self, "stop the reply first (ctrl+g)", severity="warning")
            return
        self.transcript = Text()
        self._show_transcript()
        self.session.reset()
        self._status("new text", "dim")

    @property
    def transcript_text(self) -> str:
        return self.transcript.plain
