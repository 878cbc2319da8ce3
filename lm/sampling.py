"""Sampling the next token from logits: temperature, top-k, top-p (nucleus), greedy.

Everything here works on device tensors without a host sync, so the decoder
can run it inside a captured CUDA graph. Randomness comes in as a buffer of
Exp(1) noise drawn outside the graph with a seeded generator: the token is the
winner of an exponential race, ``argmax_i p_i / E_i``, which picks token i with
probability p_i / sum(p) (the Gumbel-max trick in another form; no
``torch.multinomial``, no RNG state inside the graph).

Two ways to run the race, the same function of the same noise:

* :func:`pick_token` (top-p = 1): ``argmin_i ln E_i - l_i / T`` over the tokens
  at or above the k-th largest logit. No softmax, no sort, no division by the
  noise: a handful of full-vocabulary kernels plus one ``topk``.
* :func:`sampling_probs` + :func:`race` (top-p < 1): the nucleus needs the
  probabilities sorted, so the whole distribution is built first.
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


def pick_token(logits: torch.Tensor, exponential_noise: torch.Tensor, neg_inv_temperature: float | torch.Tensor,
               top_k: int = 0, rank_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The exponential race of :func:`race` without building the distribution (top-p = 1 only).

    argmax p_i / E_i = argmin ln E_i - l_i / T: the softmax's normaliser and max
    cancel, so ``logits`` (..., V) go straight in. Tokens below the k-th largest
    logit (``top_k`` > 0; ties with it stay) are out of the race.
    ``neg_inv_temperature`` is -1/T (a 0-dim device tensor in the decoder, so one
    captured graph serves every temperature). ``rank_logits`` may give the
    logits in the model's own dtype for the top-k search (bf16 halves its radix
    passes); they must be the values ``logits`` were converted from. -> (..., 1).
    """
    log_noise = exponential_noise.log()
    if isinstance(neg_inv_temperature, torch.Tensor):
        score = torch.addcmul(log_noise, logits, neg_inv_temperature)
    else:
        score = torch.add(log_noise, logits, alpha=neg_inv_temperature)
    if 0 < top_k < logits.shape[-1]:
        ranked = logits if rank_logits is None else rank_logits
        score = score.masked_fill_(logits < top_k_threshold(ranked, top_k), float("inf"))
    return score.argmin(-1, keepdim=True)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Sample token ids (..., 1) from ``logits`` (..., V) the way the decoder does."""
    params.validate()
    if params.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float()
    noise = torch.empty_like(logits).exponential_(generator=generator)
    if params.top_p >= 1:
        return pick_token(logits, noise, -1.0 / params.temperature, params.top_k)
    return race(sampling_probs(logits, params.temperature, params.top_k, params.top_p), noise)
