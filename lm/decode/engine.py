"""The decode engine: KV-cache slots, one-token steps, continuous batching.

An :class:`Engine` owns a model's KV cache for ``max_batch`` sequences (slots)
and decodes every live slot one token per step. A :class:`Request` (token ids
in, token ids out, its own sampling parameters, seed, stop limit) waits until a
slot is free, is admitted between steps (its prompt read into that slot's
cache), and retires when it is finished or cancelled; the slot then takes the
next request. Each slot keeps the tokens its cache holds, so a request that
continues an earlier text (a chat turn) reads only what is new.

A step reads and writes only static device buffers (tokens, positions, each
row's seed, draw counter, temperature, top-k, top-p and stop position), so on
CUDA it is captured once per (:class:`StepMode`, attention window) in a CUDA
graph and replayed for any mix of requests. The host launches ``chunk`` steps,
then reads their tokens while the next chunk runs (``depth`` chunks in flight).

The noise of a row's sampler is a function of its seed and the token's index in
the reply (:func:`lm.decode.sampling.race_noise`), and a row reads only its
own cache row, so a request gets the same tokens eager or replayed, alone or
batched, in any slot. On CUDA the step runs in Triton kernels
(:mod:`lm.decode.triton_step`, any batch) where they cover the model; elsewhere in torch
(:mod:`lm.decode.torch_step`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

import torch

from lm.decode.request import Decoded, Notice, Request
from lm.decode.sampling import SamplingParams, race_noise, sample_rows, token_keys
from lm.decode.torch_step import TorchStep, joint_kv_caches, torch_step_problem
from lm.decode.triton_sampler import TritonSampler
from lm.decode.triton_step import TritonStep, precompile, triton_step_problem, triton_usable
from lm.errors import LabError

# When prompt + output outgrow the context, keep this fraction of it (the most recent tokens).
OVERFLOW_KEEP = 0.75
# Prefill lengths are rounded up to a power of two (at least this) so varying prompt
# lengths reuse a few traced shapes instead of tracing each one.
MIN_PREFILL_BUCKET = 8
# With CUDA graphs, prompts up to this many tokens are read by replaying the one-token step
# (a batch step per token: no new shape to trace, no first use of the prefill's attention kernel).
GRAPH_PREFILL_MAX = 32
# Alone (batch 1) the replayed step costs a fraction of a millisecond, while the first prefill
# forward of a process pays ~0.4-0.7 s of cuDNN attention set-up (docs/performance.md): a
# context overflow's re-read of up to this many tokens replays too.
GRAPH_PREFILL_MAX_ALONE = 256
# The torch step attends over the first `window` cache slots, a power of two from this up to
# the context: a short text does not scan the whole cache, and a reply needs only a few graphs.
MIN_WINDOW = 128
# How the step runs: "auto" (Triton kernels on CUDA where they cover the model), "triton", "torch".
KERNELS = ("auto", "triton", "torch")
# Rows of the engine's integer state (one column per slot).
TOKEN, POSITION, DRAWS, SEED, TOP_K, STOP_AT, LIVE = range(7)


def attention_window(position: int, context_length: int, min_window: int = MIN_WINDOW) -> int:
    """Cache slots a step at ``position`` attends over: the smallest power-of-two multiple of
    ``min_window`` above the position, at most the context."""
    w = min_window
    while w <= position:
        w *= 2
    return min(w, context_length)


@dataclasses.dataclass(frozen=True)
class StepMode:
    """What the sampler of a step computes; fixed per captured graph, shared by every live row."""

    greedy: bool
    """Every live row is greedy (temperature 0): argmax only."""
    top_k: int
    """The largest top-k of the live rows (0: none has one); each row's own k is on the device."""
    nucleus: bool
    """Some live row cuts to a top-p nucleus (in torch, a sort of the vocabulary per step)."""

    @classmethod
    def of(cls, params: Iterable[SamplingParams], vocab_size: int) -> StepMode:
        sampling = [p for p in params if p.temperature > 0]
        return cls(greedy=not sampling,
                   top_k=max((p.top_k for p in sampling if 0 < p.top_k < vocab_size), default=0),
                   nucleus=any(p.top_p < 1 for p in sampling))


class _SlotCache:
    """One slot's row of a layer's cache, as ``model.forward`` expects a KVCache (batch 1)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    def update(self, positions, k, v):
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v


@dataclasses.dataclass
class _Slot:
    request: Request | None = None
    cached: list[int] = dataclasses.field(default_factory=list)  # tokens whose K/V the slot's cache holds
    next_pos: int = 0  # position of the next step launched for it (host copy of the device counter)
    stop_at: int = 0
    epoch: int = 0  # admissions so far: results of steps launched for an earlier one are dropped


@dataclasses.dataclass
class _Chunk:
    rows: list[tuple[int, int, int, int]]  # (slot, epoch, first position, steps)
    wait: object


class Engine:
    """Continuous-batching decoder of one model over ``max_batch`` KV-cache slots (see the module doc).

    ``kernels``: ``"auto"`` uses the Triton step on CUDA where Triton
    covers the model, else the torch step; ``"torch"`` never uses Triton;
    ``"triton"`` raises LabError where it cannot run. ``step_kind`` says which
    runs. ``cuda_graphs`` (default: on CUDA) replays captured steps. Puts the
    model in eval mode. Thread-safe :meth:`submit`; everything else runs on
    one thread (the caller's, or :meth:`serve_forever`'s).
    """

    def __init__(self, model: torch.nn.Module, *, max_batch: int = 1, cuda_graphs: bool | None = None,
                 kernels: str = "auto", chunk: int | None = None):
        if kernels not in KERNELS:
            raise LabError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise LabError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if (problem := torch_step_problem(model)) is not None:
            raise LabError(f"the decode engine cannot run this model: {problem}")
        model.eval()
        self.model, self.cfg = model, model.cfg
        self.max_batch = B = max_batch
        self.context_length = C = self.cfg.context_length
        self.vocab_size = V = self.cfg.vocab_size
        self.device = dev = model.lm_head.weight.device
        cuda = dev.type == "cuda"
        with torch.no_grad():
            self.caches = joint_kv_caches(model, B)
        self.slot_caches = [[_SlotCache(c.k[b:b + 1], c.v[b:b + 1]) for c in self.caches] for b in range(B)]
        self.triton_problem = "not asked for" if kernels == "torch" else triton_step_problem(model)
        if kernels == "triton" and self.triton_problem is not None:
            raise LabError(f"the Triton decode step cannot run this model: {self.triton_problem}")
        use_triton = self.triton_problem is None
        self.step_impl = TritonStep(model, self.caches) if use_triton else TorchStep(model, self.caches)
        self.step_kind = "triton" if use_triton else "torch"
        self.state = torch.zeros(7, B, dtype=torch.long, device=dev)  # rows TOKEN .. LIVE, a column per slot
        self.floats = torch.zeros(2, B, dtype=torch.float32, device=dev)  # 1/T, top_p
        self.rows = torch.arange(B, device=dev)
        self.keys = token_keys(V, dev)
        self.logits = torch.zeros(B, V, dtype=torch.float32, device=dev)  # of the last step, for inspection
        self.out_tokens = torch.zeros(B, C + 1, dtype=torch.long, device=dev)  # by position; C: past the end
        self.out_probs = torch.zeros(B, C + 1, dtype=torch.float32, device=dev)
        # Sampling and the step's bookkeeping in Triton kernels on CUDA: the same tokens as sample_rows, no sort.
        self._sampler = None
        if kernels != "torch" and triton_usable(dev):
            st = self.state
            rows = dict(token=st[TOKEN], position=st[POSITION], draws=st[DRAWS], seed=st[SEED], top_k=st[TOP_K],
                        stop_at=st[STOP_AT], live=st[LIVE], inv_temperature=self.floats[0], top_p=self.floats[1])
            self._sampler = TritonSampler(V, B, C, rows, dev)
        if use_triton and os.environ.get("LAB_TRITON_PRECOMPILE", "1") != "0":
            self._precompile()
        # Batched rows attend over the whole cache: a window picked by the batch's longest text would
        # change how a row's attention is reduced (and so its rounding) with who else is in the batch.
        self.min_window = MIN_WINDOW if B == 1 else C
        self.use_graphs = cuda if cuda_graphs is None else bool(cuda_graphs) and cuda
        # Steps per host read, and reads in flight: on CUDA the GPU runs ahead while the host streams.
        self.chunk = chunk or (8 if cuda else 4 if dev.type == "mps" else 1)
        self.depth = 2 if cuda else 1
        if cuda:
            self._host_tokens = torch.zeros(B, C + 1, dtype=torch.long).pin_memory()
            self._host_probs = torch.zeros(B, C + 1, dtype=torch.float32).pin_memory()
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self._capture_stream = None
        self.slots = [_Slot() for _ in range(B)]
        self.waiting: collections.deque[Request] = collections.deque()
        self._inflight: collections.deque[_Chunk] = collections.deque()
        self._lock = threading.Condition()
        self._submitted: list[Request] = []
        self._stopping = False
        self.steps = 0  # steps launched, for statistics
        self.tokens = 0  # tokens decoded (launched) over all requests, for statistics

    # -- requests

    def submit(self, request: Request) -> Request:
        """Queue ``request`` for the next free slot (any thread)."""
        with self._lock:
            self._submitted.append(request)
            self._lock.notify()
        return request

    @property
    def active(self) -> int:
        """Slots holding a request that is still decoding (one that just finished is retired right after
        its last token reaches its reader, so a client can see its reply before the slot is free)."""
        return sum(s.request is not None and not s.request.done for s in self.slots)

    def pending(self) -> int:
        """Requests waiting for a slot."""
        with self._lock:
            return len(self._submitted) + len(self.waiting)

    def generate(self, request: Request) -> Iterator[Decoded | Notice]:
        """Decode ``request`` on this thread, yielding its events as they come. Stopping the
        iteration cancels it (the slot keeps what its cache holds for a continuation)."""
        self.submit(request)
        try:
            while True:
                while request.events:
                    yield request.events.popleft()
                if request.error is not None:
                    raise LabError(request.error)
                if request.done:
                    return
                self.run_round()
        finally:
            if not request.done:
                request.cancel()
                self.run_round()  # retire it now: its slot is free for the next request

    def serve_forever(self, idle: float = 0.05) -> None:
        """Run rounds until :meth:`stop` (then finish the requests already admitted or queued)."""
        while True:
            with self._lock:
                if not self._submitted and not self._busy():
                    if self._stopping:
                        return
                    self._lock.wait(idle)
                    continue
            try:
                self.run_round()
            except Exception as e:  # e.g. CUDA out of memory: fail what is in flight, keep serving
                self._fail_all(f"decoding failed ({type(e).__name__}: {e})")

    def _fail_all(self, message: str) -> None:
        """Finish every admitted and waiting request with ``message`` as its error; free every slot."""
        with self._lock:
            self.waiting.extend(self._submitted)
            self._submitted.clear()
        requests = [s.request for s in self.slots if s.request is not None] + list(self.waiting)
        self.waiting.clear()
        self._inflight.clear()
        for b, slot in enumerate(self.slots):
            slot.request, slot.cached = None, []
            slot.epoch += 1
        self.state[LIVE] = 0
        for r in requests:
            r.error = message
            r.finish("error")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def _busy(self) -> bool:
        return bool(self.waiting or self._inflight or any(s.request is not None for s in self.slots))

    # -- one round: retire, admit, launch, read

    @torch.inference_mode()
    def run_round(self) -> None:
        with self._lock:
            self.waiting.extend(self._submitted)
            self._submitted.clear()
        for b, slot in enumerate(self.slots):
            r = slot.request
            if r is not None and (r.cancelled or r.done):
                r.finish("cancelled")
                self._retire(b)
        while self.waiting and any(s.request is None for s in self.slots):
            r = self.waiting.popleft()
            if r.cancelled:
                r.finish("cancelled")
                continue
            try:
                self._admit(r)
            except LabError as e:
                r.error = str(e)
                r.finish("error")
        launched = False
        if len(self._inflight) < self.depth:
            launched = self._launch_chunk()
        if self._inflight and (len(self._inflight) >= self.depth or not launched):
            self._deliver(self._inflight.popleft())

    def _retire(self, b: int) -> None:
        slot = self.slots[b]
        r = slot.request
        # K/V are valid for every token before the last one taken (later steps may have run ahead).
        slot.cached = r.history[:max(0, len(r.history) - 1)] if r is not None else []
        slot.request = None
        self.state[LIVE, b] = 0

    def _pick_slot(self, ids: list[int]) -> tuple[int, int]:
        """The free slot whose cache shares the longest prefix with ``ids`` (and that length)."""
        best, best_len = -1, -1
        for b, slot in enumerate(self.slots):
            if slot.request is not None:
                continue
            n = 0
            for a, c in zip(slot.cached, ids):
                if a != c:
                    break
                n += 1
            if n > best_len:
                best, best_len = b, n
        return best, best_len

    def _admit(self, r: Request) -> None:
        """Read ``r``'s text into a free slot's cache and make the slot live."""
        V, C = self.vocab_size, self.context_length
        bad = [i for i in r.history if not 0 <= i < V]
        if bad:
            raise LabError(f"prompt token ids {bad[:5]} are outside the model's vocabulary (0..{V - 1}); "
                           "the tokenizer does not match this model")
        if not r.history:
            raise LabError("the prompt is empty and there is no text to continue; give a prompt")
        if len(r.history) > C:
            if not r.allow_overflow:
                raise LabError(f"the prompt has {len(r.history)} tokens; the model's context holds {C}")
            r.notice(self._overflow(r))
        b, shared = self._pick_slot(r.history[:-1])
        slot = self.slots[b]
        slot.request = r
        slot.epoch += 1
        slot.cached = []
        self._prefill(b, r, min(shared, len(r.history) - 1))

    def _overflow(self, r: Request) -> Notice:
        keep = max(1, int(self.context_length * OVERFLOW_KEEP))
        dropped = len(r.history) - keep
        r.history = r.history[-keep:]
        return Notice("overflow", f"context full ({self.context_length} tokens): dropped the oldest {dropped} "
                                  f"tokens, kept the last {keep} and re-read them")

    def _set_row(self, b: int, r: Request, position: int, live: bool) -> None:
        """Write slot ``b``'s state for ``r`` at ``position`` (one copy per tensor, in stream order)."""
        p = r.params
        slot = self.slots[b]
        remaining = p.max_new_tokens - r.produced
        slot.next_pos = position
        slot.stop_at = min(self.context_length, position + remaining)
        top_k = p.top_k if 0 < p.top_k < self.vocab_size else 0
        self.state[:, b] = torch.tensor([r.history[position], position, r.produced, r.seed, top_k, slot.stop_at, int(live)])
        inv_t = 0.0 if p.temperature == 0 else 1.0 / p.temperature
        self.floats[:, b] = torch.tensor([inv_t, p.top_p])

    def _prefill(self, b: int, r: Request, start: int) -> None:
        """Fill slot ``b``'s cache for r.history[start:-1] and point its step at the last token."""
        last = len(r.history) - 1
        todo = r.history[start:last]
        limit = GRAPH_PREFILL_MAX_ALONE if self.max_batch == 1 else GRAPH_PREFILL_MAX
        if self.use_graphs and 0 < len(todo) <= limit:
            # Replay the one-token step with only this row live: no new shape to trace or capture.
            live = self.state[LIVE].clone()
            self.state[LIVE] = 0
            self._set_row(b, r, start, True)
            self.slots[b].stop_at = self.context_length
            self.state[STOP_AT, b] = self.context_length
            mode = StepMode.of([r.params], self.vocab_size)
            for position, token in enumerate(todo, start=start):
                self.state[TOKEN, b] = token
                self._run_step(mode, position)
            live[b] = 1
            self.state[LIVE] = live
        elif todo:
            self.forward_tokens(todo, start, slot=b)
        self._set_row(b, r, last, True)
        self.slots[b].cached = r.history[:last]

    @torch.inference_mode()
    def forward_tokens(self, ids: Sequence[int], start: int, slot: int = 0) -> torch.Tensor:
        """Run ``ids`` at positions start.. of ``slot`` through the model, filling its cache; logits (len, V).

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
        return self.model(x.to(self.device), positions, self.slot_caches[slot])[0, :T]

    # -- steps

    def _window(self, position: int) -> int | None:
        if not self.step_impl.uses_windows:
            return None
        return attention_window(position, self.context_length, self.min_window)

    def _step(self, mode: StepMode, window: int | None) -> None:
        """One token for every live row: forward, sample, write results; static shapes, no host sync."""
        st, C = self.state, self.context_length
        pos = st[POSITION]
        raw = self.step_impl(st[TOKEN], pos.clamp(max=C - 1), window, self.logits)
        if self._sampler is not None:
            self._sampler(self.logits, raw, self.out_tokens, self.out_probs, greedy=mode.greedy, max_top_k=mode.top_k,
                          nucleus=mode.nucleus)
            return
        noise = None if mode.greedy else race_noise(st[SEED], st[DRAWS], self.keys)
        token, prob = sample_rows(self.logits, noise, self.floats[0], st[TOP_K], self.floats[1], greedy=mode.greedy,
                                  max_top_k=mode.top_k, nucleus=mode.nucleus, rank_logits=raw)
        go = (st[LIVE] > 0) & (pos < st[STOP_AT])
        at = pos.clamp(max=C)
        self.out_tokens[self.rows, at] = torch.where(go, token, self.out_tokens[self.rows, at])
        self.out_probs[self.rows, at] = torch.where(go, prob, self.out_probs[self.rows, at])
        st[TOKEN] = torch.where(go, token, st[TOKEN])
        step = go.long()
        st[POSITION] += step
        st[DRAWS] += step

    def _precompile(self) -> None:
        """Compile every Triton kernel a step can launch now, several at once, instead of one after another
        during the first reply (``LAB_TRITON_PRECOMPILE=0`` leaves it to the first launches).

        The launches are collected from the real step (greedy, sampling, and sampling with a nucleus: the
        sampler's variants without top-k), so they have exactly the argument types and constexprs the replies
        will use; nothing runs, so the step changes no state.
        """
        launches: list[tuple] = []
        parts = [p for p in (self.step_impl, self._sampler) if isinstance(p, (TritonStep, TritonSampler))]
        for part in parts:
            part.collect = launches
        try:
            with torch.inference_mode():
                modes = [StepMode(greedy=True, top_k=0, nucleus=False)]
                if self._sampler is not None:
                    modes += [StepMode(greedy=False, top_k=0, nucleus=nucleus) for nucleus in (False, True)]
                for mode in modes:
                    self._step(mode, None)
        finally:
            for part in parts:
                part.collect = None
        precompile(launches)

    def _graph_for(self, mode: StepMode, window: int | None):
        """The CUDA graph of ``_step(mode, window)``, captured on first use; None if capture fails.

        A mode's first capture runs the step once first (lazy initialisation:
        cuBLAS workspaces, kernel loading) and restores the state; another
        window of a mode already captured is captured directly. Captures are
        made on one side stream with ``capture_begin`` rather than
        ``torch.cuda.graph``, which would also synchronise and empty the
        allocator's cache each time.
        """
        key = (mode, window)
        if key in self._graphs:
            return self._graphs[key]
        saved = self.state.clone()
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
                self._capture_stream = torch.cuda.Stream(device=self.device)
            stream = self._capture_stream
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                if not any(m == mode for m, _ in self._graphs):
                    self._step(mode, window)
                    self.state.copy_(saved)
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
            self.state.copy_(saved)
            self.use_graphs = False
            message = (f"CUDA graph capture failed ({type(e).__name__}: {e}); decoding without CUDA graphs")
            for slot in self.slots:
                if slot.request is not None:
                    slot.request.notice(Notice("notice", message))
            return None
        self._graphs[key] = graph
        return graph

    def _run_step(self, mode: StepMode, max_position: int) -> None:
        """Queue one step whose live rows are at positions up to ``max_position``: replayed or eager."""
        window = self._window(max_position)
        graph = self._graph_for(mode, window) if self.use_graphs else None
        if graph is not None:
            graph.replay()
        else:
            self._step(mode, window)
        self.steps += 1

    def _launch_chunk(self) -> bool:
        live = [(b, s) for b, s in enumerate(self.slots)
                if s.request is not None and not s.request.done and s.next_pos < s.stop_at]
        if not live:
            return False
        n = min(self.chunk, max(s.stop_at - s.next_pos for _, s in live))
        mode = StepMode.of([s.request.params for _, s in live], self.vocab_size)
        rows = []
        for b, s in live:
            count = min(n, s.stop_at - s.next_pos)
            rows.append((b, s.epoch, s.next_pos, count))
        for i in range(n):
            self._run_step(mode, max(s.next_pos + min(i, s.stop_at - s.next_pos - 1) for _, s in live))
        for b, s in live:
            s.next_pos += min(n, s.stop_at - s.next_pos)
        self.tokens += sum(r[3] for r in rows)
        lo, hi = min(r[2] for r in rows), max(r[2] + r[3] for r in rows)
        self._inflight.append(_Chunk(rows, self._fetch(lo, hi)))
        return True

    def _fetch(self, lo: int, hi: int):
        """Start reading out_tokens/out_probs[:, lo:hi]; the returned function waits for them."""
        if self.device.type != "cuda":
            return lambda: (self.out_tokens[:, lo:hi].tolist(), self.out_probs[:, lo:hi].tolist())
        self._host_tokens[:, lo:hi].copy_(self.out_tokens[:, lo:hi], non_blocking=True)
        self._host_probs[:, lo:hi].copy_(self.out_probs[:, lo:hi], non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def wait():
            done.synchronize()
            return self._host_tokens[:, lo:hi].tolist(), self._host_probs[:, lo:hi].tolist()
        return wait

    def _deliver(self, chunk: _Chunk) -> None:
        tokens, probs = chunk.wait()
        lo = min(r[2] for r in chunk.rows)
        for b, epoch, first, count in chunk.rows:
            slot = self.slots[b]
            r = slot.request
            if r is None or slot.epoch != epoch or r.done or r.cancelled:
                continue  # retired while this chunk ran: its tokens are nobody's
            row_t, row_p = tokens[b], probs[b]
            for i in range(first - lo, first - lo + count):
                if not r.accept(int(row_t[i]), float(row_p[i])):
                    break
            if r.done:
                self._retire(b)
            elif slot.next_pos >= slot.stop_at and slot.next_pos == first + count:
                if slot.stop_at < self.context_length:  # its token limit (a request that did not say so)
                    r.finish("length")
                    self._retire(b)
                    continue
                self._retire(b)  # the context is full: re-read the most recent text, or stop
                if r.allow_overflow:
                    r.notice(self._overflow(r))
                    self.waiting.appendleft(r)
                else:
                    r.finish("length")
