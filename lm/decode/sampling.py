"""Sampling the next token from logits: temperature, top-k, top-p (nucleus), greedy.

The token is the winner of an exponential race, ``argmax_i p_i / E_i`` with
E_i ~ Exp(1), which picks token i with probability p_i / sum(p) (the
Gumbel-max trick in another form; no ``torch.multinomial``).

* :func:`sampling_probs`, :func:`nucleus_mask` and :func:`race` build the cut
  distribution step by step: the slow, obviously correct reference (and
  :func:`sample` for one-off use).
* :func:`sample_rows` is what the engine runs: B rows, each with its own
  temperature, top-k and top-p (device tensors, so one captured CUDA graph
  serves every request), as ``argmin_i ln E_i - l_i / T`` over the kept tokens.
* :func:`race_noise` makes the noise from each row's seed and draw number with
  a counter-based hash in plain integer ops: no generator state, the same
  numbers on every device and in every batch position, and it runs inside a
  CUDA graph. A request's text therefore depends on its seed only, never on
  which slot it got or who shared the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lm.errors import LabError


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
                                      or not 0 <= self.seed <= 2**32 - 1):
            out.append(f"seed must be an integer in 0..{2**32 - 1} or None, got {self.seed!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            out.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        return out

    def validate(self) -> "SamplingParams":
        """Raise LabError naming every invalid value."""
        if problems := self.problems():
            raise LabError("invalid sampling parameters: " + "; ".join(problems) + ".")
        return self


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


def top_k_threshold(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value along the last dimension of ``logits`` (..., V), as (..., 1).

    ``topk`` unsorted: only the smallest of the k is needed, so the sort of the
    k winners is skipped. Tokens tied with it are kept by ``logits >= threshold``.
    """
    return logits.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)


def sampling_probs(logits: torch.Tensor, temperature: float | torch.Tensor, top_k: int = 0,
                   top_p: float | torch.Tensor | None = None) -> torch.Tensor:
    """The distribution to sample from: softmax(logits / T), cut to top-k, then to the top-p nucleus.

    ``logits`` (..., V) -> probabilities (..., V) summing to 1. top-k keeps ties
    with the k-th token; ``top_p=None`` (or 1) skips the sort.
    """
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.shape[-1]:
        scaled = scaled.masked_fill(scaled < top_k_threshold(scaled, top_k), float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and not (isinstance(top_p, (int, float)) and top_p >= 1):
        probs = probs * nucleus_mask(probs, top_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def race(probs: torch.Tensor, exponential_noise: torch.Tensor) -> torch.Tensor:
    """Index of argmax(p_i / E_i) with E_i ~ Exp(1): token i wins with probability p_i / sum(p).

    (..., V) -> (..., 1). The noise is drawn outside (a static buffer, a seeded
    generator), so this runs inside a CUDA graph.
    """
    return torch.argmax(probs / exponential_noise.clamp_min(1e-30), dim=-1, keepdim=True)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Sample token ids (..., 1) from ``logits`` (..., V): the cut distribution, then the race."""
    params.validate()
    if params.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float()
    noise = torch.empty_like(logits).exponential_(generator=generator)
    return race(sampling_probs(logits, params.temperature, params.top_k, params.top_p), noise)


# ----------------------------------------------------------------------------- the engine's sampler

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without int64 overflow: c split into 16-bit halves."""
    hi, lo = c >> 16, c & 0xFFFF
    return ((((x * hi) & 0xFFFF) << 16) + x * lo) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32): a bijection of 0..2^32-1 with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def token_keys(vocab_size: int, device=None) -> torch.Tensor:
    """The hashed vocabulary indices (V,) that :func:`race_noise` combines with each row's key."""
    return _mix32(torch.arange(vocab_size, dtype=torch.int64, device=device) + 0x9E3779B9)


def race_noise(seed: torch.Tensor, draws: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """ln E for E ~ Exp(1), (B, V): one row per (seed, draw) pair, ``keys`` from :func:`token_keys`.

    ``seed`` (B,) is any non-negative int64, ``draws`` (B,) the index of the
    token in the reply. Uniforms have 24 bits: u = (h + 1/2) / 2^24 in (0, 1).
    """
    row = _mix32(_mix32(seed & _M32) ^ (seed >> 32))
    row = _mix32(row ^ _mix32(draws & _M32))
    h = _mix32(row.view(-1, 1) ^ keys.view(1, -1))  # (B, 1) ^ (1, V) -> (B, V)
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return torch.log(-torch.log(u))


def sample_rows(logits: torch.Tensor, log_noise: torch.Tensor, inv_temperature: torch.Tensor,
                top_k: torch.Tensor, top_p: torch.Tensor, *, greedy: bool, max_top_k: int, nucleus: bool,
                rank_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (B,) and their probabilities under the model (temperature 1, no cut), (B,).

    ``logits`` (B, V) fp32; per row ``inv_temperature`` (B,) is 1/T (0 for a
    greedy row), ``top_k`` (B,) int64 (0 = no limit, at most ``max_top_k``) and
    ``top_p`` (B,) (1 = no nucleus). ``greedy``, ``max_top_k`` and ``nucleus``
    say which work any row needs (fixed per captured graph). A row is greedy
    when its 1/T is 0. ``rank_logits`` may give the logits in the model's dtype
    for the top-k search (bf16 halves its radix passes).
    """
    best = logits.argmax(-1)
    if greedy:
        token = best
    else:
        scaled = logits * inv_temperature.view(-1, 1)
        score = log_noise - scaled  # argmin ln E - l / T = argmax p / E
        keep = None
        if max_top_k:
            ranked = logits if rank_logits is None else rank_logits
            values = ranked.topk(max_top_k, dim=-1, sorted=True).values  # (B, K), descending
            kth = values.gather(1, (top_k.clamp(1, max_top_k) - 1).view(-1, 1)).to(logits.dtype)
            kth = torch.where(top_k.view(-1, 1) > 0, kth, float("-inf"))  # ties with the k-th stay in
            keep = logits >= kth
        if nucleus:
            cut = scaled if keep is None else scaled.masked_fill(~keep, float("-inf"))
            ordered = cut.sort(dim=-1, descending=True).values
            probs = torch.softmax(ordered, dim=-1)
            mass_before = F.pad(probs.cumsum(-1)[:, :-1], (1, 0))  # exclusive cumulative sum
            n_in = (mass_before < top_p.view(-1, 1)).sum(-1, keepdim=True).clamp_min(1)
            in_nucleus = (cut >= ordered.gather(1, n_in - 1)) | (top_p.view(-1, 1) >= 1)
            keep = in_nucleus if keep is None else keep & in_nucleus
        if keep is not None:
            score = score.masked_fill(~keep, float("inf"))
        token = torch.where(inv_temperature > 0, score.argmin(-1), best)
    prob = torch.exp(logits.gather(1, token.view(-1, 1)).view(-1) - torch.logsumexp(logits, -1))
    return token, prob
