"""Text generation: KV-cache decoding, sampling and streamed text.

Three layers, each usable on its own:

* sampling on logits (:func:`sampling_probs`, :func:`nucleus_mask`,
  :func:`sample`): temperature, top-k, top-p, written with device tensors only
  so they run inside a captured CUDA graph without a host sync;
* :class:`Decoder`: token ids in, token ids out, batch 1. The prompt is read in
  one pass into the model's preallocated KV cache, then one token per step.
  A step (model forward, sampling, bookkeeping) reads and writes only static
  buffers, so on CUDA it is captured once in a CUDA graph and replayed; the
  host reads the sampled ids only every few tokens, pipelined;
* :class:`Generator`: text in, streamed text out, with a tokenizer. Pieces
  never end inside a UTF-8 character, stop strings are never shown, and each
  piece carries its token id and probability.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lm.errors import LabError
from lm.inference import eos_token_id, token_byte_table

FINISH_REASONS = ("eos", "stop", "length")
# When prompt + output outgrow the context, keep this fraction of it (the most recent tokens).
OVERFLOW_KEEP = 0.75
# Prefill lengths are rounded up to a power of two (at least this) so a chat's
# varying prompt lengths reuse a few traced shapes instead of tracing each one.
MIN_PREFILL_BUCKET = 8
# With a CUDA graph, prompts up to this many tokens are read by replaying the one-token step.
GRAPH_PREFILL_MAX = 32


# ----------------------------------------------------------------------------- parameters

@dataclass
class SamplingParams:
    """How to pick each next token and when to stop."""

    temperature: float = 0.8
    """Divides the logits; 0 picks the most likely token (greedy)."""
    top_p: float = 0.95
    """Nucleus: sample from the smallest set of most likely tokens whose probability reaches top_p (1 = all)."""
    top_k: int = 0
    """Sample only from the k most likely tokens (0 = no limit)."""
    max_new_tokens: int = 256
    """Generate at most this many tokens."""
    seed: int | None = None
    """Seeds the sampler at the start of each reply, for reproducible text (None = a fresh random seed)."""
    stop: tuple[str, ...] = ()
    """Stop when the text contains one of these strings (they are not shown)."""
    stop_at_eos: bool = True
    """Stop at the end-of-text token."""

    def problems(self) -> list[str]:
        """Every invalid value, as readable sentences."""
        out = []
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            out.append(f"temperature must be a number >= 0 (0 = greedy), got {t!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0.0 < p <= 1.0):
            out.append(f"top_p must be in (0, 1] (1 keeps every token), got {p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            out.append(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k!r}")
        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            out.append(f"max_new_tokens must be an integer >= 1, got {n!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or self.seed < 0):
            out.append(f"seed must be a non-negative integer or None, got {self.seed!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            out.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        return out

    def validate(self) -> "SamplingParams":
        """Raise LabError naming every invalid value."""
        if problems := self.problems():
            raise LabError("invalid sampling parameters: " + "; ".join(problems) + ".")
        return self


# ----------------------------------------------------------------------------- sampling

def nucleus_mask(probs: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """True for the tokens of the top-p nucleus of ``probs`` (..., V).

    The nucleus is the smallest set of most likely tokens whose probability
    reaches ``top_p``: a token is in it when the mass of the tokens sorted before
    it is below ``top_p``, so the token that crosses the threshold is always in
    and so is the most likely one. Tokens tied with the last one in are in too,
    so the set never depends on how a sort orders equal probabilities. p = 1 keeps all.
    """
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = F.pad(sorted_probs.cumsum(-1)[..., :-1], (1, 0))  # exclusive cumulative sum
    n_in = (mass_before < top_p).sum(-1, keepdim=True)  # >= 1
    threshold = sorted_probs.gather(-1, n_in - 1)
    return (probs >= threshold) | (top_p >= 1)  # p = 1 keeps even zero-probability tokens


def sampling_probs(logits: torch.Tensor, temperature: float | torch.Tensor, top_k: int = 0,
                   top_p: float | torch.Tensor | None = None) -> torch.Tensor:
    """The distribution to sample from: softmax(logits / T), cut to top-k, then to the top-p nucleus.

    ``logits`` (..., V) -> probabilities (..., V) summing to 1. top-k keeps ties
    with the k-th token; ``top_p=None`` (or 1) skips the sort.
    """
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1):
        probs = probs * nucleus_mask(probs, top_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def race(probs: torch.Tensor, exponential_noise: torch.Tensor) -> torch.Tensor:
    """Index of argmax(p_i / E_i) with E_i ~ Exp(1): token i wins with probability p_i / sum(p).

    An exponential race instead of torch.multinomial: the noise is drawn into a
    static buffer outside a CUDA graph with a seeded generator, and the graph
    stays free of RNG state. (..., V) -> (..., 1).
    """
    return torch.argmax(probs / exponential_noise.clamp_min(1e-30), dim=-1, keepdim=True)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Sample token ids (..., 1) from ``logits`` (..., V) the way the decoder does."""
    params.validate()
    if params.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = sampling_probs(logits, params.temperature, params.top_k, params.top_p)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return race(probs, noise)


# ----------------------------------------------------------------------------- fused one-token step

def fused_step_problem(model: torch.nn.Module) -> str | None:
    """Why :class:`FusedStep` cannot stand in for ``model``'s forward (None if it can)."""
    from lm import model as M

    if type(model) is not M.TransformerLM:
        return f"{type(model).__name__} is not lm.model.TransformerLM"
    unknown = {f.name for f in dataclasses.fields(model.cfg)} - FUSED_STEP_KNOWS
    if unknown:
        return f"model settings {sorted(unknown)} are unknown to the fused step"
    for layer in model.layers:
        parts = [(layer, M.TransformerBlock), (layer.attn, M.CausalSelfAttention)]
        parts += [(layer.ffn, M.SwiGLU if model.cfg.ffn == "swiglu" else M.SiLUMLP)]
        parts += [(getattr(layer, n, None), M.RMSNorm) for n in ("ln1", "ln2") if model.cfg.norm != "none"]
        if any(type(m) is not cls for m, cls in parts):
            return "the model's layers are not the ones the fused step was written for"
    return None


FUSED_STEP_KNOWS = {"vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta",
                    "norm", "position", "ffn", "tie_embeddings", "attn_dropout", "resid_dropout", "attention",
                    "rmsnorm_eps"}


class FusedStep:
    """``model(token, position, caches)`` for one token, in about a third of the kernels.

    At batch 1 a decode step's GPU time is mostly kernel count (each costs a few
    microseconds; reading all the weights ~0.1 ms), and TransformerLM.forward
    spends ~50 small kernels per layer. Here: one fused RMSNorm, RoPE as
    x*cos + swap(x)*sin on Q and K together with the tables and the mask built
    once per step, residual adds folded into the output matmuls, no einx. The
    same function of the same weights (the tests compare it with model.forward
    for every ablation switch); attention is torch's SDPA for both kernels.
    """

    def __init__(self, model: torch.nn.Module, caches):
        cfg = self.cfg = model.cfg
        self.caches = caches
        self.emb, self.head = model.token_embeddings.weight, model.lm_head.weight
        dtype, dev = self.head.dtype, self.head.device
        self.final = model.ln_final.weight if cfg.norm != "none" else None
        norms = cfg.norm != "none"
        self.layers = [(b.ln1.weight if norms else None, b.attn.qkv_proj.weight, b.attn.output_proj.weight,
                        b.ln2.weight if norms else None, b.ffn.w1.weight, b.ffn.w2.weight,
                        b.ffn.w3.weight if cfg.ffn == "swiglu" else None) for b in model.layers]
        self.k_pos = torch.arange(cfg.context_length, device=dev).view(1, -1)
        self.zero = torch.zeros((), dtype=dtype, device=dev)
        self.ninf = torch.full((), float("-inf"), dtype=dtype, device=dev)
        if cfg.position == "rope":  # pairs (x0, x1) -> (x0 c - x1 s, x1 c + x0 s) = x * cos2 + swap(x) * sin2
            rope = model.layers[0].attn.rope
            self.cos2 = rope.cos.repeat_interleave(2, -1).to(dtype)
            self.sin2 = torch.stack((-rope.sin, rope.sin), -1).flatten(-2).to(dtype)

    def _norm(self, x, w):
        return F.rms_norm(x, (x.shape[-1],), w, self.cfg.rmsnorm_eps)

    def __call__(self, token_in: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (V,) of the token in ``token_in`` (1, 1) at ``position`` (1,); writes its K/V."""
        c = self.cfg
        H, dh, d = c.num_heads, c.d_head, c.d_model
        pre, post = c.norm == "pre", c.norm == "post"
        x = self.emb.index_select(0, token_in.view(1))  # (1, d)
        mask = torch.where(self.k_pos <= position, self.zero, self.ninf)  # (1, context) additive
        if c.position == "rope":
            cos, sin = self.cos2.index_select(0, position), self.sin2.index_select(0, position)  # (1, dh)
        for (ln1, wqkv, wo, ln2, w1, w2, w3), cache in zip(self.layers, self.caches):
            qkv = F.linear(self._norm(x, ln1) if pre else x, wqkv)  # (1, 3d): q | k | v, heads major
            qk = qkv[:, :2 * d].view(2 * H, dh)
            if c.position == "rope":
                qk = torch.addcmul(qk * cos, qk.view(2 * H, dh // 2, 2).flip(-1).view(2 * H, dh), sin)
            cache.k.index_copy_(2, position, qk[H:].view(1, H, 1, dh))
            cache.v.index_copy_(2, position, qkv[:, 2 * d:].view(1, H, 1, dh))
            att = F.scaled_dot_product_attention(qk[:H].view(1, H, 1, dh), cache.k, cache.v, attn_mask=mask)
            x = torch.addmm(x, att.reshape(1, d), wo.t())
            if post:
                x = self._norm(x, ln1)
            h = self._norm(x, ln2) if pre else x
            g = F.silu(F.linear(h, w1))
            if w3 is not None:
                g = g.mul_(F.linear(h, w3))
            x = torch.addmm(x, g, w2.t())
            if post:
                x = self._norm(x, ln2)
        if self.final is not None:
            x = self._norm(x, self.final)
        return F.linear(x, self.head)[0]


# ----------------------------------------------------------------------------- decoder

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
    """

    def __init__(self, model: torch.nn.Module, *, cuda_graphs: bool | None = None, fused: bool | None = None,
                 chunk: int | None = None):
        model.eval()
        self.model = model
        self.cfg = model.cfg
        self.context_length = C = self.cfg.context_length
        V = self.cfg.vocab_size
        self.device = dev = model.lm_head.weight.device
        cuda = dev.type == "cuda"
        with torch.no_grad():
            self.caches = model.new_kv_caches(1)
        self.token_in = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(V, dtype=torch.float32, device=dev)  # of the last step, for inspection
        self.noise = torch.ones(V, dtype=torch.float32, device=dev)
        self.temperature = torch.ones((), dtype=torch.float32, device=dev)
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
        # The one-token forward: FusedStep unless asked not to or the model is not one it knows.
        self.fused_problem = fused_step_problem(model) if fused is not False else "not asked for"
        self._fused = FusedStep(model, self.caches) if self.fused_problem is None else None
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None
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

    def _step(self, mode: tuple[bool, int, bool]) -> None:
        """One token: forward at ``position``, sample, write results; static shapes, no host sync."""
        greedy, top_k, nucleus = mode
        if self._fused is not None:
            logits = self._fused(self.token_in, self.position).float()
        else:
            logits = self.model(self.token_in, self.position, self.caches)[0, -1].float()
        self.logits.copy_(logits)
        if greedy:
            token = logits.argmax(-1, keepdim=True)
        else:
            probs = sampling_probs(logits, self.temperature, top_k, self.top_p if nucleus else None)
            token = race(probs, self.noise)
        prob = (logits.gather(0, token) - logits.logsumexp(0)).exp()
        self.out_tokens.index_copy_(0, self.position, token)
        self.out_probs.index_copy_(0, self.position, prob)
        self.token_in.copy_(token.view(1, 1))
        self.position.add_(1)

    def _graph_for(self, mode: tuple[bool, int, bool]):
        """The CUDA graph of ``_step(mode)``, captured on first use; None if capture fails."""
        if mode in self._graphs:
            return self._graphs[mode]
        saved_token, saved_position = self.token_in.clone(), self.position.clone()
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up (lazy inits, workspaces) at the same slot, then restore
                    self._step(mode)
                    self.token_in.copy_(saved_token)
                    self.position.copy_(saved_position)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(mode)  # recorded, not run
        except Exception as e:  # a model op that cannot be captured: decode eagerly instead
            torch.cuda.synchronize(self.device)
            self.token_in.copy_(saved_token)
            self.position.copy_(saved_position)
            self.use_graphs = False
            self._notices.append(Notice("notice", f"CUDA graph capture failed ({type(e).__name__}: {e}); "
                                                  "decoding without CUDA graphs"))
            return None
        self._graphs[mode] = graph
        return graph

    @torch.inference_mode()
    def _launch(self, mode: tuple[bool, int, bool], count: int) -> None:
        """Queue ``count`` steps."""
        for _ in range(count):
            if not mode[0]:
                if self.generator.device == self.device:
                    self.noise.exponential_(generator=self.generator)
                else:
                    self.noise.copy_(torch.empty(self.noise.shape).exponential_(generator=self.generator))
            graph = self._graph_for(mode) if self.use_graphs else None
            if graph is not None:
                graph.replay()
            else:
                self._step(mode)

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
        graph = None
        if self.use_graphs and 0 < len(todo) <= GRAPH_PREFILL_MAX:
            # A valid slot first: a capture warms up by running the step where position points.
            self.position.fill_(self.cached)
            self.token_in.fill_(todo[0])
            graph = self._graph_for(mode)
        if graph is not None:
            for token in todo:
                self.token_in.fill_(token)
                graph.replay()
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
        greedy = params.temperature == 0
        top_k = params.top_k if 0 < params.top_k < V else 0
        mode = (greedy, 0 if greedy else top_k, not greedy and params.top_p < 1.0)
        self.temperature.fill_(max(float(params.temperature), 1e-6))
        self.top_p.fill_(float(params.top_p))
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        produced = 0
        while produced < params.max_new_tokens:
            if len(self.history) > self.context_length:
                yield self._overflow()
            with torch.inference_mode():
                self._sync_cache(mode)
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
                self._launch(mode, end - nxt)
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
