"""The Config tab: open an experiment, edit it as a form (or as TOML), check it, save it, launch it.

Every change is validated by the loader ``lab run`` uses (a few milliseconds,
debounced): each problem appears under the fields it names and in the
problems panel. Beside the form the calculator says whether the config fits
the chosen device and how fast it would train. F5 launches the run as a
separate ``lab run`` process and switches to the Monitor.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.lazy import Lazy
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, Switch, TextArea

from lab.views.config_doc import (ExperimentDoc, FormField, display_text, find_field, form_fields, parse_input,
                                  patch_text, save_experiment,
                                toml_from_values, validate_text, values_from_toml_dict, values_of)
from lab.tui.tabs.base import LabPane
from lab.tui.messages import CalcDone, notify
from lm.errors import LabError

DEFAULT_DEVICE = "m4"
VALIDATE_DELAY = 0.15


def device_for(training_device: str) -> str:
    """The calculator profile to size a config on by default, from its training.device."""
    kind = training_device.split(":")[0]
    return {"cpu": "cpu", "cuda": "rtx4090", "mps": "m4"}.get(kind, DEFAULT_DEVICE)


def field_widget(f: FormField, value):
    """The input widget for one field, holding ``value``."""
    if f.kind == "select":
        options = [(str(c), c) for c in f.doc.choices]
        return Select(options, value=value if value in f.doc.choices else Select.NULL, allow_blank=False,
                      id=f.widget_id, classes="field-input", compact=True)
    if f.kind == "switch":
        return Switch(value=bool(value), id=f.widget_id, classes="field-input")
    return Input(display_text(f, value), id=f.widget_id, classes="field-input", compact=True,
                 placeholder="(default)" if f.doc.default in ("(unset)", '""') else f.doc.default)


def doc_text(f: FormField, problems: list[str]) -> Text:
    """A field's documentation (dim) and its current problems (red)."""
    t = Text(f.doc.doc, style="dim")
    for p in problems:
        t.append("\n")
        t.append(f"✗ {p}", style="bold red")
    return t


class FormView(VerticalScroll):
    """The scrolling form; says when it is mounted (it is built lazily, after the first frame)."""

    class Mounted(Message):
        pass

    def on_mount(self) -> None:
        self.post_message(self.Mounted())


class ConfigPane(LabPane):
    """Experiment picker, form or raw TOML, problems and the calculator's verdict."""

    INITIAL_FOCUS = "#experiment-select"

    BINDINGS = [
        Binding("f5,ctrl+l", "launch", "Launch",
                tooltip="launch the config as a new run (a separate lab run process) and watch it"),
        Binding("ctrl+s", "save_as", "Save as", tooltip="save the config as a new experiment file (never overwrites)"),
        Binding("ctrl+r", "toggle_raw", "Raw TOML", tooltip="switch between the form and the raw TOML text"),
        Binding("ctrl+o", "open_file", "Open file", tooltip="open an experiment file by path"),
        Binding("ctrl+f", "find_key", "Find key", tooltip="jump to a key of the form (e.g. lr, model.norm)"),
    ]

    @classmethod
    def for_app(cls, app, **kwargs) -> "ConfigPane":
        return cls(app.supervisor, app.cwd, app.experiment, **kwargs)

    def __init__(self, supervisor, cwd: Path, experiment: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.supervisor = supervisor
        self.cwd = cwd
        self.fields = form_fields()
        self.by_key = {f.key: f for f in self.fields}
        self._open_error = ""
        self.doc = self._initial_doc(experiment)
        self.validation = validate_text(self._doc_text(self.doc), self._source_name(), self.cwd,
                                        keep_lines=self.doc.loaded is None)
        self._timer = None
        self.form_ready = False
        self._pending_values: dict | None = None
        self._shown: dict[str, list[str]] = {}  # problems shown under each field
        self._quiet = False
        self._calc_token = 0

    def _initial_doc(self, experiment: str | None) -> ExperimentDoc:
        from lm.config.loader import list_experiment_files

        files = list_experiment_files(self.cwd)
        pick = experiment or next((f for f in files if Path(f).stem == "quickstart"), files[0] if files else None)
        if pick:
            try:
                return ExperimentDoc.open(pick, base_dir=self.cwd, strict=False)
            except LabError as e:
                self._open_error = str(e)
        return ExperimentDoc.default()

    @staticmethod
    def _doc_text(doc: ExperimentDoc) -> str:
        """The TOML the loader checks for a freshly opened document (its own text when it has problems,
        so a TOML syntax error is reported as such)."""
        return toml_from_values(doc.form_values()) if doc.loaded is not None else doc.original_text

    def _source_name(self) -> str:
        return self.doc.source or "the new experiment"

    # ---- layout --------------------------------------------------------------

    def compose(self) -> ComposeResult:
        from lm.calc import list_devices
        from lm.config.loader import list_experiment_files

        files = self._files = list_experiment_files(self.cwd)
        if self.doc.source and self.doc.source not in files:
            files.insert(0, self.doc.source)
        with Horizontal(id="config-bar"):
            yield Label("experiment", classes="bar-label")
            yield Select([(f, f) for f in files], value=self.doc.source if self.doc.source else Select.NULL,
                         id="experiment-select", compact=True, prompt="(new experiment)")
            yield Static("", id="config-source")
        with Horizontal(id="config-main"):
            with Vertical(id="config-switcher"):
                # Not focusable itself: tab goes from field to field, and a focused field scrolls into view.
                with Lazy(FormView(id="config-form", can_focus=False)):
                    values = self.doc.form_values()
                    sections: dict[str, list[FormField]] = {}
                    for f in self.fields:
                        sections.setdefault(f.section, []).append(f)
                    for section, fields in sections.items():
                        yield Static(Content(f"[{section}]" if section else "experiment"), classes="section-title")
                        for f in fields:
                            with Horizontal(classes="field-line"):
                                yield Label(f.doc.name, classes="field-name")
                                yield field_widget(f, values.get(f.key))
                            yield Static(doc_text(f, []), id=f"doc-{f.widget_id}", classes="field-doc")
                yield TextArea("", id="config-raw", soft_wrap=False, show_line_numbers=True, tab_behavior="indent")
            with VerticalScroll(id="config-side", can_focus=False):
                yield Static("Problems", classes="side-title")
                yield Static("", id="config-problems")
                yield Static("Calculator", classes="side-title")
                devices = [(d.key, d.key) for d in list_devices()]
                wanted = device_for(str(self.doc.form_values().get("training.device") or "auto"))
                yield Select(devices, value=wanted if any(k == wanted for k, _ in devices) else devices[0][1],
                             allow_blank=False, id="calc-device", compact=True)
                yield Static("", id="calc-verdict")

    def on_mount(self) -> None:
        if self.doc.loaded is None:  # a file with problems: its own text, whose lines the problems name
            self._show_raw(self.doc.original_text)
        self._show_source()
        self._show_problems()
        if self._open_error:
            notify(self, self._open_error, severity="error", timeout=10)

    # ---- reading and filling the form ----------------------------------------

    @on(FormView.Mounted)
    def _form_mounted(self, message: FormView.Mounted) -> None:
        message.stop()
        self.form_ready = True
        if self._raw_visible():
            self.query_one("#config-form").display = False
        if self._pending_values is not None:
            self.fill(self._pending_values)
            self._pending_values = None
        self._show_problems()

    def current_values(self) -> dict[str, object]:
        """{dotted key: parsed value} of every field as it stands."""
        if not self.form_ready:
            return self._pending_values or self.doc.form_values()
        out: dict[str, object] = {}
        for f in self.fields:
            w = self.query_one(f"#{f.widget_id}")
            if isinstance(w, Select):
                out[f.key] = None if w.value is Select.NULL else w.value
            elif isinstance(w, Switch):
                out[f.key] = w.value
            else:
                out[f.key] = parse_input(f, w.value)
        return out

    def fill(self, values: dict[str, object]) -> None:
        """Set every field (without each change re-validating on its own)."""
        if not self.form_ready:
            self._pending_values = values  # filled in when the form is mounted
            return
        self._quiet = True
        try:
            for f in self.fields:
                w = self.query_one(f"#{f.widget_id}")
                v = values.get(f.key)
                if isinstance(w, Select):
                    w.value = v if v in f.doc.choices else Select.NULL
                elif isinstance(w, Switch):
                    w.value = bool(v)
                else:
                    w.value = display_text(f, v)
        finally:
            self.call_after_refresh(self._unquiet)

    def _unquiet(self) -> None:
        self._quiet = False
        self.validate_now()

    def set_field(self, key: str, text: str) -> None:
        """Type ``text`` into the field ``key`` (tests and scripted use)."""
        w = self.query_one(f"#{self.by_key[key].widget_id}")
        if isinstance(w, Input):
            w.value = text
        elif isinstance(w, Switch):
            w.value = text.strip().lower() in ("true", "1", "yes", "on")
        else:
            w.value = text

    def _show_raw(self, text: str) -> None:
        raw = self.query_one("#config-raw", TextArea)
        raw.text = text
        raw.display = True
        if self.form_ready:
            self.query_one("#config-form").display = False

    def open_doc(self, doc: ExperimentDoc) -> None:
        """Show another experiment in the form (and the raw view)."""
        self.doc = doc
        self.fill(doc.form_values())
        if self._raw_visible() or doc.loaded is None:
            self._show_raw(doc.original_text)
        self._show_source()
        sel = self.query_one("#experiment-select", Select)
        if doc.source and doc.source not in self._files:
            self._files.insert(0, doc.source)
            sel.set_options([(f, f) for f in self._files])
        if doc.source:
            sel.value = doc.source

    def _show_source(self) -> None:
        v = self.validation
        if not self.doc.source:
            state = "new experiment, not saved (ctrl+s saves it)"
        elif v.ok and v.cfg != self.doc.loaded:
            state = "edited: F5 launches the edited config, ctrl+s saves it as a new file"
        elif not v.ok:
            state = "edited, with problems"
        else:
            state = "as saved" + (f" with --set {' '.join(self.doc.overrides)}" if self.doc.overrides else "")
        self.query_one("#config-source", Static).update(Content(state))

    # ---- validation ----------------------------------------------------------

    @on(Input.Changed, ".field-input")
    @on(Select.Changed, ".field-input")
    @on(Switch.Changed, ".field-input")
    @on(TextArea.Changed, "#config-raw")
    def _changed(self, event) -> None:
        if self._quiet:
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_DELAY, self.validate_now)

    def _raw_visible(self) -> bool:
        return bool(self.query_one("#config-raw", TextArea).display)

    def current_text(self) -> str:
        """The TOML being edited: the raw view's text, or the form's values as TOML."""
        if self._raw_visible():
            return self.query_one("#config-raw", TextArea).text
        return toml_from_values(self.current_values())

    def validate_now(self) -> None:
        """Load the current TOML with the strict loader and show what it says."""
        self._timer = None
        self.validation = validate_text(self.current_text(), self._source_name(), self.cwd,
                                        keep_lines=self._raw_visible())
        self._show_problems()
        self._show_source()

    def _show_problems(self) -> None:
        v = self.validation
        for f in self.fields if self.form_ready else ():
            problems = v.by_key.get(f.key, [])
            if self._shown.get(f.key, []) != problems:  # touch only what changed: each update re-lays out
                self._shown[f.key] = problems
                self.query_one(f"#doc-{f.widget_id}", Static).update(doc_text(f, problems))
                self.query_one(f"#{f.widget_id}").set_class(bool(problems), "-invalid-field")
        panel = self.query_one("#config-problems", Static)
        if v.ok:
            text = Text("✓ valid: ready to launch (F5)", style="green")
            for w in v.warnings:  # e.g. a dataset to download first
                text.append(f"\n! {w}", style="yellow")
            panel.update(text)
            self._estimate()
        else:
            t = Text(f"{len(v.problems)} problem{'s' if len(v.problems) != 1 else ''}:", style="bold red")
            for p in v.problems:
                t.append(f"\n• {p}")
            panel.update(t)
            self.query_one("#calc-verdict", Static).update(Text("(fix the problems to size this config)",
                                                               style="dim"))

    # ---- calculator verdict --------------------------------------------------

    @on(Select.Changed, "#calc-device")
    def _device_changed(self) -> None:
        if self.validation.ok:
            self._estimate()

    def _estimate(self) -> None:
        sel = self.query_one("#calc-device", Select)
        if sel.value is Select.NULL or self.validation.cfg is None:
            return
        self._calc_token += 1
        self._run_estimate(self.validation.cfg, str(sel.value), self._calc_token)

    @work(thread=True, exclusive=True, group="config-calc", exit_on_error=False)
    def _run_estimate(self, cfg, device: str, token: int) -> None:
        from lm.calc import estimate

        try:
            result = estimate(cfg, device)
        except LabError as e:
            self.post_message(CalcDone([], str(e), token))
            return
        self.post_message(CalcDone([result], "", token))

    @on(CalcDone)
    def _calc_done(self, message: CalcDone) -> None:
        message.stop()
        if message.token != self._calc_token:
            return
        box = self.query_one("#calc-verdict", Static)
        if message.error:
            box.update(Text(message.error, style="red"))
            return
        box.update(verdict_text(message.results[0], self.validation.cfg))

    # ---- actions -------------------------------------------------------------

    @on(Select.Changed, "#experiment-select")
    def _pick_experiment(self, event: Select.Changed) -> None:
        if self._quiet or event.value is Select.NULL or event.value == self.doc.source:
            return
        self._open(str(event.value))

    def is_edited(self) -> bool:
        """Whether the form (or the raw TOML) differs from the experiment as it was opened or saved."""
        if self._raw_visible():
            return self.query_one("#config-raw", TextArea).text != self.doc.original_text
        if self.doc.loaded is None:
            return self.current_values() != self.doc.form_values()
        v = validate_text(toml_from_values(self.current_values()), self._source_name(), self.cwd)
        return not v.ok or v.cfg != self.doc.loaded

    def _open(self, path: str) -> None:
        """Open another experiment; unsaved edits are discarded only after asking."""
        if not self.is_edited():
            self._open_now(path)
            return
        from lab.tui.screens.confirm import ConfirmScreen

        def answered(discard: bool | None) -> None:
            if discard:
                self._open_now(path)
            else:  # keep editing: the picker goes back to the experiment being edited
                self._select_quietly(self.doc.source)

        name = self.doc.source or "the new experiment"
        self.app.push_screen(ConfirmScreen(f"{name} has unsaved edits. Open {path} and discard them? "
                                           "(ctrl+s saves them as a new file)"), answered)

    def _select_quietly(self, source: str) -> None:
        """Show ``source`` in the experiment picker without opening it again."""
        sel = self.query_one("#experiment-select", Select)
        if source and source not in self._files:
            self._files.insert(0, source)
            sel.set_options([(f, f) for f in self._files])
        self._quiet = True
        sel.value = source if source else Select.NULL
        self.call_after_refresh(self._unquiet_only)

    def _unquiet_only(self) -> None:
        self._quiet = False

    def _open_now(self, path: str) -> None:
        try:
            doc = ExperimentDoc.open(path, base_dir=self.cwd, strict=False)
        except LabError as e:
            notify(self, str(e), severity="error", timeout=8)
            self._select_quietly(self.doc.source)
            return
        self.open_doc(doc)
        notify(self, f"opened {doc.source}" + ("" if doc.loaded is not None else ": it has problems (shown as TOML "
                                              "so their line numbers match; ctrl+r for the form)"),
                    severity="information" if doc.loaded else "warning")

    def action_open_file(self) -> None:
        from lab.tui.screens.prompt import PromptScreen

        def done(path: str | None) -> None:
            if path and path.strip():
                self._open(path.strip())

        self.app.push_screen(PromptScreen("Open an experiment file (a path, or a name under experiments/):",
                                          self.doc.source), done)

    def action_find_key(self) -> None:
        """Jump to a key of the form: its exact name, a part of it, or the closest spelling."""
        from lab.tui.screens.prompt import PromptScreen

        def done(query: str | None) -> None:
            if not query or not query.strip():
                return
            if self._raw_visible():
                notify(self, "the form is hidden: ctrl+r shows it, then ctrl+f finds a key", severity="warning")
                return
            f = find_field(self.fields, query)
            if f is None:
                notify(self, f"no key like {query.strip()!r} in the form", severity="warning")
                return
            widget = self.query_one(f"#{f.widget_id}")
            widget.focus()
            widget.scroll_visible(animate=False)
            notify(self, f"{f.key}: {f.doc.doc}", timeout=4)

        self.app.push_screen(PromptScreen("Jump to a key (lr, model.norm, warmup ...):"), done)

    def action_toggle_raw(self) -> None:
        raw = self.query_one("#config-raw", TextArea)
        if not self._raw_visible():
            values = self.current_values()
            unchanged = self.validation.ok and self.validation.cfg == self.doc.loaded
            self._show_raw(self.doc.original_text if unchanged else toml_from_values(values))
            raw.focus()
            return
        import tomllib

        text = raw.text
        v = validate_text(text, self._source_name(), self.cwd)
        if v.ok:
            values = values_of(v.cfg)
        else:
            try:
                values = values_from_toml_dict(tomllib.loads(text), self.current_values())
            except tomllib.TOMLDecodeError as e:
                notify(self, f"the TOML does not parse ({e}); fix it before going back to the form",
                            severity="error", timeout=8)
                return
        raw.display = False
        if self.form_ready:
            self.query_one("#config-form").display = True
        self.fill(values)
        self.query_one("#experiment-select").focus()  # the hidden text area had the focus

    def action_save_as(self) -> None:
        from lab.tui.screens.prompt import PromptScreen

        self.validate_now()
        cfg = self.validation.cfg
        if cfg is None:
            notify(self, f"fix the {len(self.validation.problems)} problem(s) before saving", severity="error")
            return

        text = self._text_to_save()

        def done(name: str | None) -> None:
            if not name:
                return
            try:
                path = save_experiment(cfg, name, self.cwd, text=text)
            except LabError as e:
                notify(self, str(e), severity="error", timeout=8)
                return
            rel = str(path.relative_to(self.cwd)) if path.is_relative_to(self.cwd) else str(path)
            self.doc = ExperimentDoc(rel, (), cfg, path.read_text(encoding="utf-8"))
            if self._raw_visible():
                self.query_one("#config-raw", TextArea).text = self.doc.original_text
            self._select_quietly(rel)  # the picker shows the new file: it is what is being edited now
            self.validate_now()
            kept = text is not None and self.doc.original_text == text
            notify(self, f"saved {rel}" + (" (comments kept)" if kept and "#" in text else ""))

        self.app.push_screen(PromptScreen("Save as a new experiment file:", f"experiments/{cfg.name}.toml",
                                          "A bare name goes to experiments/NAME.toml; existing files are "
                                          "never overwritten."), done)

    def _text_to_save(self) -> str | None:
        """The experiment's own text with the edits applied (comments kept), or None for a new one."""
        if self._raw_visible():
            return self.query_one("#config-raw", TextArea).text
        if not self.doc.original_text or self.doc.overrides:
            return None
        before, now = self.doc.form_values(), self.current_values()
        empty = ("", None)  # an empty field and an unset key are the same default
        changed = {k: v for k, v in now.items()
                   if before.get(k) != v and not (before.get(k) in empty and v in empty)}
        return patch_text(self.doc.original_text, changed)

    async def action_launch(self) -> None:
        self.validate_now()
        cfg = self.validation.cfg
        if cfg is None:
            notify(self, f"cannot launch: {len(self.validation.problems)} problem(s) in the config",
                        severity="error")
            return
        experiment, overrides = self.doc.launch_args(cfg)
        try:
            run_dir = self.supervisor.launch(cfg, experiment, overrides)
        except (LabError, OSError) as e:
            notify(self, f"could not start the run: {e}", severity="error", timeout=8)
            return
        notify(self, f"started {run_dir.name}; its output goes to {run_dir.name}/train.log")
        await self.app.show_run(run_dir)


def verdict_text(est, cfg) -> Text:
    """The calculator's verdict for the config: fits or not, speed, time for the whole run."""
    from lm.calc.units import fmt_bytes, fmt_count, fmt_seconds

    v, m, t = est.verdict, est.memory, est.time
    out = Text()
    out.append(est.device.title + "\n", style="bold")
    out.append("✓ fits" if v.fits else "✗ does not fit", style="green" if v.fits else "bold red")
    out.append(f"  {fmt_bytes(m.total)} of {fmt_bytes(m.capacity)}\n")
    out.append(f"params {fmt_count(est.params.total)}  ")
    out.append(f"{fmt_count(t.tokens_per_s)} tok/s  ")
    out.append(f"{fmt_seconds(t.step_s)}/step\n")
    out.append(f"{cfg.training.steps:,} steps ≈ {fmt_seconds(t.step_s * cfg.training.steps)}\n")
    if v.suggestion:
        out.append(v.suggestion, style="yellow")
    elif v.fits:
        out.append(f"batch_size up to {v.max_batch_size} fits", style="dim")
    return out
