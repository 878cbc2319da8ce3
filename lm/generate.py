"""Text generation: KV-cache decoding and streamed text.

Three layers, each usable on its own:

* sampling on logits (:mod:`lm.sampling`, re-exported here): temperature,
  top-k, top-p, written with device tensors only so they run inside a captured
  CUDA graph without a host sync;
* :class:`Decoder`: token ids in, token ids out, batch 1. The prompt is read in
  one pass into the model's preallocated KV cache, then one token per step
  (:class:`lm.fused_step.FusedStep`, or the model's own forward). A step
  (forward, sampling, bookkeeping) reads and writes only static buffers, so on
  CUDA it is captured once per attention window in a CUDA graph and replayed;
  the host reads the sampled ids only every few tokens, pipelined;
* :class:`Generator`: text in, streamed text out, with a tokenizer. Pieces
  never end inside a UTF-8 character, stop strings are never shown, and each
  piece carries its token id and probability.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lm.decode_kernels import TritonSampler, TritonStep, triton_step_problem, triton_usable
from lm.errors import LabError
from lm.fused_step import FUSED_STEP_KNOWS, FusedStep, fused_step_problem, joint_kv_caches  # noqa: F401
from lm.inference import eos_token_id, token_byte_table
from lm.sampling import (SamplingParams, nucleus_mask, pick_token, race, sample, sampling_probs,  # noqa: F401
                         top_k_threshold)

FINISH_REASONS = ("eos", "stop", "length")
# When prompt + output outgrow the context, keep this fraction of it (the most recent tokens).
OVERFLOW_KEEP = 0.75
# Prefill lengths are rounded up to a power of two (at least this) so a chat's
# varying prompt lengths reuse a few traced shapes instead of tracing each one.
MIN_PREFILL_BUCKET = 8
# With a CUDA graph, prompts up to this many tokens are read by replaying the one-token step.
GRAPH_PREFILL_MAX = 32
# The fused step attends over the first `window` cache slots, a power of two from this up to
# the context: a short text does not scan the whole cache, and a reply needs only a few graphs.
MIN_WINDOW = 128
# How the fused step runs: "auto" (Triton kernels where they cover the model, else torch), "triton", "torch".
KERNELS = ("auto", "triton", "torch")


# ----------------------------------------------------------------------------- decoder

def attention_window(position: int, context_length: int, min_window: int = MIN_WINDOW) -> int:
    """Cache slots a step at ``position`` attends over: the smallest power-of-two multiple of
    ``min_window`` above the position, at most the context."""
    w = min_window
    while w <= position:
        w *= 2
    return min(w, context_length)


@dataclass(frozen=True)
class Decoded:
    """One generated token and its probability under the model (temperature 1, no cut)."""

    token_id: int
    prob: float


@dataclass(frozen=True)
class Notice:
    """Something the user should know about, between tokens: ``overflow`` or ``notice``."""

    kind: str
    message: str


class Decoder:
    """Batch-1 incremental decoding of one model, with a conversation history.

    ``history`` holds every token of the running text; the KV cache is valid for
    its first ``cached`` tokens. A step reads ``token_in`` at ``position``,
    writes its K/V at that slot, samples the next token into ``out_tokens`` /
    ``out_probs`` (indexed by position), feeds it back into ``token_in`` and
    advances ``position``: no host involvement, so steps can be queued back to
    back (and replayed from a CUDA graph) while the host reads earlier results.
    Puts the model in eval mode.

    ``kernels`` picks how the fused step runs: ``"auto"`` uses the Triton
    kernels of :mod:`lm.decode_kernels` (and its sampler) on CUDA where Triton
    is installed and covers the model, else the torch version; ``"torch"``
    never uses Triton; ``"triton"`` raises LabError where it cannot run.
    ``step_kind`` says which step runs: ``triton``, ``torch`` or ``model``.
    """

    def __init__(self, model: torch.nn.Module, *, cuda_graphs: bool | None = None, fused: bool | None = None,
                 chunk: int | None = None, kernels: str = "auto"):
        if kernels not in KERNELS:
            raise LabError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        model.eval()
        self.model = model
        self.cfg = model.cfg
        self.context_length = C = self.cfg.context_length
        V = self.cfg.vocab_size
        self.device = dev = model.lm_head.weight.device
        cuda = dev.type == "cuda"
        # The one-token forward: a fused step unless asked not to or the model is not one it knows;
        # its Triton kernels on CUDA where they cover the model, else the torch version.
        self.fused_problem = fused_step_problem(model) if fused is not False else "not asked for"
        self.triton_problem = ("not asked for" if kernels == "torch" or self.fused_problem is not None
                               else triton_step_problem(model))
        if kernels == "triton" and self.triton_problem is not None:
            raise LabError(f"the Triton decode step cannot run this model: {self.triton_problem}")
        with torch.no_grad():
            self.caches = joint_kv_caches(model) if self.fused_problem is None else model.new_kv_caches(1)
        self._fused = None
        if self.fused_problem is None:
            self._fused = (TritonStep if self.triton_problem is None else FusedStep)(model, self.caches)
        self.step_kind = "model" if self._fused is None else "triton" if self.triton_problem is None else "torch"
        # Sampling (top-p = 1) and the step's bookkeeping in two Triton kernels where Triton runs.
        self._sampler = TritonSampler(V, dev) if kernels != "torch" and triton_usable(dev) else None
        self.min_window = MIN_WINDOW
        self.token_in = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(V, dtype=torch.float32, device=dev)  # of the last step, for inspection
        self.noise = torch.ones(V, dtype=torch.float32, device=dev)
        self.temperature = torch.ones((), dtype=torch.float32, device=dev)
        self.neg_inv_temperature = torch.full((), -1.0, dtype=torch.float32, device=dev)
        self.top_p = torch.ones((), dtype=torch.float32, device=dev)
        self.out_tokens = torch.zeros(C, dtype=torch.long, device=dev)
        self.out_probs = torch.zeros(C, dtype=torch.float32, device=dev)
        try:
            self.generator = torch.Generator(device=dev)
        except RuntimeError:  # a backend without its own generators: draw on the CPU and copy
            self.generator = torch.Generator()
        self.use_graphs = cuda if cuda_graphs is None else bool(cuda_graphs) and cuda
        # Tokens per host read, and reads in flight: on CUDA the GPU runs ahead while the host streams.
        self.chunk = chunk or (8 if cuda else 4 if dev.type == "mps" else 1)
        self.depth = 2 if cuda else 1
        if cuda:
            self._host_tokens = torch.zeros(C, dtype=torch.long).pin_memory()
            self._host_probs = torch.zeros(C, dtype=torch.float32).pin_memory()
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._capture_stream = None
        self._notices: list[Notice] = []
        self.history: list[int] = []
        self.cached = 0

    def reset(self) -> None:
        """Forget the running text (the cache is simply overwritten later)."""
        self.history = []
        self.cached = 0

    # -- the forward passes

    @torch.inference_mode()
    def forward_tokens(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Run ``ids`` at positions start.. through the model, filling the cache; logits (len, V).

        The batch is padded to a power-of-two length so varying prompt lengths
        reuse a few shapes. Padding sits at positions after the real tokens: no
        real token attends to it, and real tokens overwrite those slots later.
        """
        T = len(ids)
        bucket = max(MIN_PREFILL_BUCKET, 1 << (T - 1).bit_length())
        if start + bucket > self.context_length:
            bucket = T
        x = torch.zeros(1, bucket, dtype=torch.long)
        x[0, :T] = torch.tensor(list(ids), dtype=torch.long)
        positions = torch.arange(start, start + bucket, device=self.device)
        return self.model(x.to(self.device), positions, self.caches)[0, :T]

    def window(self, position: int) -> int | None:
        """Cache slots the fused step attends over at ``position``: a power of two above it (None: all)."""
        if self._fused is None or not self._fused.uses_windows:
            return None
        return attention_window(position, self.context_length, self.min_window)

    def _step(self, mode: tuple[bool, int, bool], window: int | None) -> None:
        """One token: forward at ``position``, sample, write results; static shapes, no host sync."""
        greedy, top_k, nucleus = mode
        logits = self.logits  # fp32, kept for inspection
        if self._fused is not None:
            raw = self._fused(self.token_in, self.position, window, logits)
        else:
            raw = self.model(self.token_in, self.position, self.caches)[0, -1]
            logits.copy_(raw)
        if self._sampler is not None and not nucleus:
            self._sampler(logits, raw, self.neg_inv_temperature, top_k, self.position, self.out_tokens,
                          self.out_probs, self.token_in, greedy)
            return
        if greedy:
            token = logits.argmax(-1, keepdim=True)
        elif nucleus:
            token = race(sampling_probs(logits, self.temperature, top_k, self.top_p), self.noise)
        else:
            token = pick_token(logits, self.noise, self.neg_inv_temperature, top_k, rank_logits=raw)
        prob = torch.softmax(logits, -1).gather(0, token)
        self.out_tokens.index_copy_(0, self.position, token)
        self.out_probs.index_copy_(0, self.position, prob)
        self.token_in.copy_(token.view(1, 1))
        self.position.add_(1)

    def _graph_for(self, mode: tuple[bool, int, bool], window: int | None):
        """The CUDA graph of ``_step(mode, window)``, captured on first use; None if capture fails.

        A sampling mode's first capture runs the step once first (lazy
        initialisation: cuBLAS workspaces, kernel loading) at the current slot
        and restores ``token_in`` / ``position``; another window of a mode
        already captured runs the same ops on other shapes and is captured
        directly. Captures are made on one side stream with torch's
        ``capture_begin`` rather than ``torch.cuda.graph``, which would also
        synchronise and empty the allocator's cache each time.
        """
        key = (mode, window)
        if key in self._graphs:
            return self._graphs[key]
        saved_token, saved_position = self.token_in.clone(), self.position.clone()
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
                self._capture_stream = torch.cuda.Stream(device=self.device)
            stream = self._capture_stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                if not any(m == mode for m, _ in self._graphs):
                    self._step(mode, window)
                    self.token_in.copy_(saved_token)
                    self.position.copy_(saved_position)
                    stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(self._pool)
                try:
                    self._step(mode, window)  # recorded, not run
                finally:
                    graph.capture_end()
            torch.cuda.current_stream(self.device).wait_stream(stream)
        except Exception as e:  # a model op that cannot be captured: decode eagerly instead
            torch.cuda.synchronize(self.device)
            self.token_in.copy_(saved_token)
            self.position.copy_(saved_position)
            self.use_graphs = False
            self._notices.append(Notice("notice", f"CUDA graph capture failed ({type(e).__name__}: {e}); "
                                                  "decoding without CUDA graphs"))
            return None
        self._graphs[key] = graph
        return graph

    def _run_step(self, mode: tuple[bool, int, bool], position: int) -> None:
        """Queue the step at ``position`` (the host's copy of the device counter): replayed or eager."""
        window = self.window(position)
        graph = self._graph_for(mode, window) if self.use_graphs else None
        if graph is not None:
            graph.replay()
        else:
            self._step(mode, window)

    @torch.inference_mode()
    def _launch(self, mode: tuple[bool, int, bool], first: int, count: int) -> None:
        """Queue the ``count`` steps at positions first.., each with fresh noise."""
        needs_noise = not mode[0] and (mode[2] or self._sampler is None)  # else the sampler makes its own
        for position in range(first, first + count):
            if needs_noise:
                if self.generator.device == self.device:
                    self.noise.exponential_(generator=self.generator)
                else:
                    self.noise.copy_(torch.empty(self.noise.shape).exponential_(generator=self.generator))
            self._run_step(mode, position)

    def _fetch(self, start: int, end: int) -> Callable[[], tuple[list[int], list[float]]]:
        """Start reading results of positions start..end-1; the returned function waits for them."""
        if self.device.type != "cuda":
            return lambda: (self.out_tokens[start:end].tolist(), self.out_probs[start:end].tolist())
        self._host_tokens[start:end].copy_(self.out_tokens[start:end], non_blocking=True)
        self._host_probs[start:end].copy_(self.out_probs[start:end], non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait():
            done.synchronize()
            return self._host_tokens[start:end].tolist(), self._host_probs[start:end].tolist()
        return wait

    # -- generation

    def _sync_cache(self, mode: tuple[bool, int, bool]) -> None:
        """Prefill what the cache lacks (all history but its last token); point the step at the last.

        With a CUDA graph, a short prefill replays the one-token step per token
        instead: no new shape to trace and no eager launches, which is faster
        below a few dozen tokens (the step's own samples are simply overwritten).
        """
        last = len(self.history) - 1
        todo = self.history[self.cached:last]
        if self.use_graphs and 0 < len(todo) <= GRAPH_PREFILL_MAX:
            # A valid slot first: a capture warms up by running the step where position points.
            self.position.fill_(self.cached)
            for position, token in enumerate(todo, start=self.cached):
                self.token_in.fill_(token)
                self._run_step(mode, position)
        elif todo:
            self.forward_tokens(todo, self.cached)
        self.cached = last
        self.token_in.fill_(self.history[-1])
        self.position.fill_(last)

    def _overflow(self) -> Notice:
        keep = max(1, int(self.context_length * OVERFLOW_KEEP))
        dropped = len(self.history) - keep
        self.history = self.history[-keep:]
        self.cached = 0
        return Notice("overflow", f"context full ({self.context_length} tokens): dropped the oldest {dropped} "
                                  f"tokens, kept the last {keep} and re-read them")

    def tokens(self, prompt_ids: Sequence[int], params: SamplingParams, *,
               continue_history: bool = False) -> Iterator[Decoded | Notice]:
        """Append ``prompt_ids`` to the running text (reset first unless ``continue_history``) and
        yield up to ``params.max_new_tokens`` generated tokens, with a :class:`Notice` on context overflow.

        Stops only at the token limit: end-of-text and stop strings are the caller's
        business (it simply stops iterating). ``history`` and the cache stay
        consistent with the tokens yielded so far whenever iteration stops.
        """
        params.validate()
        V = self.cfg.vocab_size
        bad = [i for i in prompt_ids if not 0 <= int(i) < V]
        if bad:
            raise LabError(f"prompt token ids {bad[:5]} are outside the model's vocabulary (0..{V - 1}); "
                           "the tokenizer does not match this model")
        if not continue_history:
            self.reset()
        self.history.extend(int(i) for i in prompt_ids)
        if not self.history:
            raise LabError("the prompt is empty and there is no text to continue; give a prompt")
        if self._fused is not None:
            self._fused.refresh()
        greedy = params.temperature == 0
        top_k = params.top_k if 0 < params.top_k < V else 0
        mode = (greedy, 0 if greedy else top_k, not greedy and params.top_p < 1.0)
        temperature = max(float(params.temperature), 1e-6)
        self.temperature.fill_(temperature)
        self.neg_inv_temperature.fill_(-1.0 / temperature)
        self.top_p.fill_(float(params.top_p))
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        if self._sampler is not None:
            self._sampler.start(self.generator.initial_seed())
        produced = 0
        while produced < params.max_new_tokens:
            if len(self.history) > self.context_length:
                yield self._overflow()
            with torch.inference_mode():
                self._sync_cache(mode)
                if self._sampler is not None:  # noise keyed by the token's index in the reply, not by
                    self._sampler.draws.fill_(produced)  # how the prompt was read (graph replays draw too)
            first = len(self.history) - 1
            limit = min(self.context_length, first + params.max_new_tokens - produced)
            for token, prob in self._pipeline(mode, first, limit):
                while self._notices:
                    yield self._notices.pop(0)
                self.history.append(token)
                self.cached = len(self.history) - 1
                produced += 1
                yield Decoded(token, prob)

    def _pipeline(self, mode, first: int, limit: int) -> Iterator[tuple[int, float]]:
        """Steps at positions first..limit-1, ``depth`` chunks in flight; (token, prob) in order."""
        inflight = collections.deque()
        nxt = first
        while nxt < limit or inflight:
            while nxt < limit and len(inflight) < self.depth:
                end = min(nxt + self.chunk, limit)
                self._launch(mode, nxt, end - nxt)
                inflight.append(self._fetch(nxt, end))
                nxt = end
            tokens, probs = inflight.popleft()()
            yield from zip(tokens, probs)


# ----------------------------------------------------------------------------- text

class TextStream:
    """Generated bytes in, printable text out.

    Holds back an incomplete UTF-8 sequence (so no piece ends mid-character)
    and any tail that could be the start of a stop string (so a stop string is
    never shown). After a stop string, ``stopped`` is True and the rest is dropped.
    """

    def __init__(self, stop: Sequence[str] = ()):
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to show."""
        return self._release(self._held + self._utf8.decode(data))

    def flush(self) -> str:
        """End of output: everything held (an unfinished character becomes U+FFFD)."""
        return self._release(self._held + self._utf8.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool = False) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[:min(hits)]
        hold = 0 if final else max((n for s in self._stop for n in range(1, len(s))
                                    if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]


@dataclass(frozen=True)
class StreamItem:
    """One step of a text stream.

    ``text`` is what to print now (possibly empty, or several tokens' worth).
    A token step has ``token_id`` and ``prob`` (its probability under the
    model). ``event`` is None for plain tokens, ``overflow`` / ``notice`` for
    messages between tokens, and a finish reason (``eos``, ``stop``,
    ``length``) on the last item, which carries any text held back until then.
    """

    text: str
    token_id: int | None = None
    prob: float | None = None
    event: str | None = None
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.event in FINISH_REASONS


@dataclass
class GenerationResult:
    """A finished reply."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    seconds: float
    first_token_seconds: float
    messages: list[str] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second, prompt reading included."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class Generator:
    """A model and its tokenizer: prompts in, streamed text out, with a running conversation."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, cuda_graphs: bool | None = None,
                 fused: bool | None = None):
        self.decoder = Decoder(model, cuda_graphs=cuda_graphs, fused=fused)
        self.tokenizer = tokenizer
        self.token_bytes = token_byte_table(tokenizer, model.cfg.vocab_size)
        self.eos_id = eos_token_id(tokenizer)

    def reset(self) -> None:
        """Start a new conversation."""
        self.decoder.reset()

    def stream(self, prompt: str | Sequence[int], params: SamplingParams, *,
               continue_history: bool = False) -> "Stream":
        """An iterable of :class:`StreamItem`; its ``result`` is set once the last item is taken."""
        return Stream(self, prompt, params, continue_history)

    def generate(self, prompt: str | Sequence[int], params: SamplingParams, *, continue_history: bool = False,
                 on_item: Callable[[StreamItem], None] | None = None) -> GenerationResult:
        """Run a whole reply, calling ``on_item`` for each stream item."""
        stream = self.stream(prompt, params, continue_history=continue_history)
        for item in stream:
            if on_item is not None:
                on_item(item)
        return stream.result


class Stream:
    """One reply being generated; iterate it for :class:`StreamItem` objects."""

    def __init__(self, generator: Generator, prompt, params: SamplingParams, continue_history: bool):
        self.generator = generator
        self.prompt = prompt
        self.params = params.validate()
        self.continue_history = continue_history
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[StreamItem]:
        g, params = self.generator, self.params
        start = time.perf_counter()
        ids = g.tokenizer.encode(self.prompt) if isinstance(self.prompt, str) else list(self.prompt)
        if not ids and not (self.continue_history and g.decoder.history) and g.eos_id is not None:
            ids = [g.eos_id]  # an empty prompt starts a fresh document
        text = TextStream(params.stop)
        pieces, new_ids, messages = [], [], []
        finish, first_token_at = "length", None
        decoded = g.decoder.tokens(ids, params, continue_history=self.continue_history)
        with contextlib.closing(decoded):
            for ev in decoded:
                if isinstance(ev, Notice):
                    messages.append(ev.message)
                    yield StreamItem("", event=ev.kind, message=ev.message)
                    continue
                first_token_at = first_token_at or time.perf_counter()
                new_ids.append(ev.token_id)
                if params.stop_at_eos and ev.token_id == g.eos_id:
                    finish = "eos"
                    break
                piece = text.push(g.token_bytes[ev.token_id])
                pieces.append(piece)
                yield StreamItem(piece, ev.token_id, ev.prob)
                if text.stopped:
                    finish = "stop"
                    break
        tail = text.flush()
        pieces.append(tail)
        now = time.perf_counter()
        self.result = GenerationResult("".join(pieces), new_ids, finish, len(ids), now - start,
                                       (first_token_at or now) - start, messages)
        yield StreamItem(tail, event=finish, message=f"finished: {finish}")
