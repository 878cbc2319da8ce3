"""The engine's sampler on CUDA in Triton: temperature, top-k, top-p and a step's bookkeeping for B rows.

It computes what :func:`lm.decode.sampling.sample_rows` computes, with the same
noise (:func:`lm.decode.sampling.race_noise`'s hash of seed, draw and token,
made inside the kernel), so one seed gives the same tokens here and in torch,
and each row's result depends on its own logits only (alone or batched, any
slot). In torch the nucleus sorts the vocabulary, a few dozen kernels a step
(~0.24 ms of a 0.62 ms GPT-2-small token on an H200: docs/performance.md); here
it needs no sort. The winner w of the race over all kept tokens is the
nucleus's winner exactly when w is in the nucleus, that is when the
probability of the tokens more likely than w is below top_p. So:

1. ``_race_blocks``: per block of the vocabulary, its race winner, the max and
   sum of exp of the logits (for the token's probability) and of the cut
   logits (for the nucleus's normaliser);
2. ``_race_combine``: per row, the winner and the normalisers; without a
   nucleus, the step ends here (token, probability, position + 1, draws + 1);
3. ``_nucleus_blocks``: per block, the mass of the tokens more likely than the
   winner, and the race winner among those tokens;
4. ``_nucleus_finish``: per row, the winner if that mass is below top_p, else
   the winner among the more likely tokens, checked the same way in a loop in
   the kernel (it runs with probability at most 1 - top_p per loop).

The nucleus's mass is summed in another order than torch's sorted cumulative
sum, so the two can disagree only where that mass lies within rounding of top_p.
"""

from __future__ import annotations

import torch

from lm.decode.launches import pow2, run_launches

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the engine samples in torch
    triton = tl = None

# Vocabulary entries per program of the multi-block kernels (and per loop of the per-row ones).
SAMPLE_BLOCK = 1024



if triton is not None:
    @triton.jit
    def _mix32(x):
        """:func:`lm.decode.sampling._mix32` on uint32 (products wrap mod 2^32)."""
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        return x ^ (x >> 16)

    @triton.jit
    def _race_noise(seed_ptr, draws_ptr, b, idx):
        """ln E for tokens ``idx`` of row b: :func:`lm.decode.sampling.race_noise`, bit for bit before the logs."""
        seed = tl.load(seed_ptr + b)
        draws = tl.load(draws_ptr + b)
        row = _mix32(_mix32((seed & 0xFFFFFFFF).to(tl.uint32)) ^ (seed >> 32).to(tl.uint32))
        row = _mix32(row ^ _mix32((draws & 0xFFFFFFFF).to(tl.uint32)))
        h = _mix32(row ^ _mix32(idx.to(tl.uint32) + 0x9E3779B9))
        u = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216)
        return tl.log(-tl.log(u))

    @triton.jit
    def _cut_and_score(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, idx, valid, inv_t, V, TOP_K: tl.constexpr):
        """For tokens ``idx`` of row b: their logits, the cut logits (l / T, -inf where top-k drops them)
        and their race scores ln E - l / T (inf where dropped)."""
        logit = tl.load(logits_ptr + b * V + idx, mask=valid, other=float("-inf"))
        scaled = logit * inv_t  # a product, then a difference: as torch rounds them (no FMA: see launches)
        score = _race_noise(seed_ptr, draws_ptr, b, idx) - scaled
        cut = scaled
        if TOP_K:
            keep = logit >= tl.load(kth_ptr + b)
            score = tl.where(keep, score, float("inf"))
            cut = tl.where(keep, scaled, float("-inf"))
        return logit, tl.where(valid, cut, float("-inf")), tl.where(valid, score, float("inf"))

    @triton.jit
    def _race_blocks(logits_ptr, kth_ptr, inv_t_ptr, seed_ptr, draws_ptr, score_ptr, index_ptr, stats_ptr, V, NBLK,
                     GREEDY: tl.constexpr, TOP_K: tl.constexpr, NUCLEUS: tl.constexpr, BLOCK: tl.constexpr):
        """Block pid_0 of row pid_1: its race winner (score, index; first on ties) and four statistics:
        max and sum of exp(l - max) of the logits, the same of the cut logits (NUCLEUS)."""
        blk, b = tl.program_id(0), tl.program_id(1)
        idx = blk * BLOCK + tl.arange(0, BLOCK)
        valid = idx < V
        at = b * NBLK + blk
        if GREEDY:
            logit = tl.load(logits_ptr + b * V + idx, mask=valid, other=float("-inf"))
            score = tl.where(valid, -logit, float("inf"))
        else:
            inv_t = tl.load(inv_t_ptr + b)
            logit, cut, score = _cut_and_score(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, idx, valid, inv_t, V,
                                               TOP_K)
            score = tl.where(inv_t > 0, score, tl.where(valid, -logit, float("inf")))  # a greedy row: argmax
            if NUCLEUS:
                top = tl.max(cut, 0)
                safe = tl.where(top > float("-inf"), top, 0.0)
                tl.store(stats_ptr + 4 * at + 2, top)
                tl.store(stats_ptr + 4 * at + 3, tl.sum(tl.where(cut > float("-inf"), tl.exp(cut - safe), 0.0), 0))
        best, where = tl.min(score, 0, return_indices=True, return_indices_tie_break_left=True)
        tl.store(score_ptr + at, best)
        tl.store(index_ptr + at, blk * BLOCK + where)
        top = tl.max(logit, 0)
        tl.store(stats_ptr + 4 * at, top)
        tl.store(stats_ptr + 4 * at + 1, tl.sum(tl.where(valid, tl.exp(logit - top), 0.0), 0))

    @triton.jit
    def _record(logits_ptr, token, lse, b, V, C, tokens_ptr, probs_ptr, token_in_ptr, pos_ptr, draws_ptr, live_ptr,
                stop_ptr):
        """The end of a step for row b, as the torch engine's: if live and before its stop, the token and its
        probability exp(l - logsumexp(l)) at the position, the next input, position + 1, draws + 1."""
        pos = tl.load(pos_ptr + b)
        go = (tl.load(live_ptr + b) > 0) & (pos < tl.load(stop_ptr + b))
        at = b * (C + 1) + tl.minimum(pos, C)
        tl.store(tokens_ptr + at, token, mask=go)
        tl.store(probs_ptr + at, tl.exp(tl.load(logits_ptr + b * V + token) - lse), mask=go)
        tl.store(token_in_ptr + b, token, mask=go)
        tl.store(pos_ptr + b, pos + 1, mask=go)
        tl.store(draws_ptr + b, tl.load(draws_ptr + b) + 1, mask=go)

    @triton.jit
    def _race_combine(logits_ptr, score_ptr, index_ptr, stats_ptr, cand_ptr, norms_ptr, tokens_ptr, probs_ptr,
                      token_in_ptr, pos_ptr, draws_ptr, live_ptr, stop_ptr, V, C, NBLK,
                      NUCLEUS: tl.constexpr, BLOCK_NB: tl.constexpr):
        """Row pid_0: the winner over the blocks (first block on ties) and logsumexp of the logits; then the
        step's end, or (NUCLEUS) the winner, logsumexp, and the cut logits' max and sum for the nucleus kernels."""
        b = tl.program_id(0)
        j = tl.arange(0, BLOCK_NB)
        m = j < NBLK
        at = b * NBLK + j
        _, first = tl.min(tl.load(score_ptr + at, mask=m, other=float("inf")), 0, return_indices=True,
                          return_indices_tie_break_left=True)
        token = tl.load(index_ptr + b * NBLK + first)
        top = tl.load(stats_ptr + 4 * at, mask=m, other=float("-inf"))
        big = tl.max(top, 0)
        lse = big + tl.log(tl.sum(tl.where(m, tl.load(stats_ptr + 4 * at + 1, mask=m, other=0.0) * tl.exp(top - big),
                                           0.0), 0))
        if NUCLEUS:
            ctop = tl.load(stats_ptr + 4 * at + 2, mask=m, other=float("-inf"))
            cbig = tl.max(ctop, 0)
            live = m & (ctop > float("-inf"))
            csum = tl.sum(tl.where(live, tl.load(stats_ptr + 4 * at + 3, mask=m, other=0.0) *
                                   tl.exp(ctop - tl.where(live, cbig, ctop)), 0.0), 0)
            tl.store(cand_ptr + b, token)
            tl.store(norms_ptr + 3 * b, lse)
            tl.store(norms_ptr + 3 * b + 1, cbig)
            tl.store(norms_ptr + 3 * b + 2, csum)
        else:
            _record(logits_ptr, token, lse, b, V, C, tokens_ptr, probs_ptr, token_in_ptr, pos_ptr, draws_ptr, live_ptr,
                    stop_ptr)

    @triton.jit
    def _nucleus_blocks(logits_ptr, kth_ptr, inv_t_ptr, top_p_ptr, seed_ptr, draws_ptr, cand_ptr, norms_ptr,
                        mass_ptr, score_ptr, index_ptr, V, NBLK, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
        """Block pid_0 of row pid_1: the cut mass exp(c - max) of the tokens whose cut logit c is above the
        candidate's, and the race winner among them (rows without a nucleus skip)."""
        blk, b = tl.program_id(0), tl.program_id(1)
        inv_t = tl.load(inv_t_ptr + b)
        if (inv_t > 0) & (tl.load(top_p_ptr + b) < 1.0):
            idx = blk * BLOCK + tl.arange(0, BLOCK)
            valid = idx < V
            v = tl.load(logits_ptr + b * V + tl.load(cand_ptr + b)) * inv_t  # the candidate is kept: its cut logit
            _, cut, score = _cut_and_score(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, idx, valid, inv_t, V, TOP_K)
            above = cut > v
            at = b * NBLK + blk
            tl.store(mass_ptr + at, tl.sum(tl.where(above, tl.exp(cut - tl.load(norms_ptr + 3 * b + 1)), 0.0), 0))
            best, where = tl.min(tl.where(above, score, float("inf")), 0, return_indices=True,
                                 return_indices_tie_break_left=True)
            tl.store(score_ptr + at, best)
            tl.store(index_ptr + at, blk * BLOCK + where)

    @triton.jit
    def _mass_above(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, token, inv_t, cmax, V, TOP_K: tl.constexpr,
                    BLOCK: tl.constexpr):
        """(cut mass above ``token``'s cut logit, the race winner among those tokens), over the whole row."""
        v = tl.load(logits_ptr + b * V + token) * inv_t
        mass = tl.zeros((), tl.float32)
        best = tl.full((), float("inf"), tl.float32)
        winner = token
        for k0 in range(0, V, BLOCK):
            idx = k0 + tl.arange(0, BLOCK)
            valid = idx < V
            _, cut, score = _cut_and_score(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, idx, valid, inv_t, V, TOP_K)
            above = cut > v
            mass += tl.sum(tl.where(above, tl.exp(cut - cmax), 0.0), 0)
            s, where = tl.min(tl.where(above, score, float("inf")), 0, return_indices=True,
                              return_indices_tie_break_left=True)
            if s < best:  # strictly: the earlier block wins ties
                best = s
                winner = (k0 + where).to(tl.int64)
        return mass, winner

    @triton.jit
    def _nucleus_finish(logits_ptr, kth_ptr, inv_t_ptr, top_p_ptr, seed_ptr, draws_ptr, cand_ptr, norms_ptr,
                        mass_ptr, score_ptr, index_ptr, tokens_ptr, probs_ptr, token_in_ptr, pos_ptr, live_ptr,
                        stop_ptr, V, C, NBLK, TOP_K: tl.constexpr, BLOCK: tl.constexpr, BLOCK_NB: tl.constexpr):
        """Row pid_0: the nucleus's winner, then the step's end."""
        b = tl.program_id(0)
        token = tl.load(cand_ptr + b)
        inv_t = tl.load(inv_t_ptr + b)
        top_p = tl.load(top_p_ptr + b)
        if (inv_t > 0) & (top_p < 1.0):
            j = tl.arange(0, BLOCK_NB)
            m = j < NBLK
            cmax = tl.load(norms_ptr + 3 * b + 1)
            total = tl.load(norms_ptr + 3 * b + 2)
            if tl.sum(tl.load(mass_ptr + b * NBLK + j, mask=m, other=0.0), 0) / total >= top_p:
                # The candidate is outside the nucleus: the winner among the tokens above it, then again.
                _, first = tl.min(tl.load(score_ptr + b * NBLK + j, mask=m, other=float("inf")), 0,
                                  return_indices=True, return_indices_tie_break_left=True)
                token = tl.load(index_ptr + b * NBLK + first)
                mass, above = _mass_above(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, token, inv_t, cmax, V, TOP_K,
                                          BLOCK)
                while mass / total >= top_p:
                    token = above
                    mass, above = _mass_above(logits_ptr, kth_ptr, seed_ptr, draws_ptr, b, token, inv_t, cmax, V,
                                              TOP_K, BLOCK)
        _record(logits_ptr, token, tl.load(norms_ptr + 3 * b), b, V, C, tokens_ptr, probs_ptr, token_in_ptr, pos_ptr,
                draws_ptr, live_ptr, stop_ptr)


    KERNELS = (_mix32, _race_noise, _cut_and_score, _race_blocks, _record, _race_combine, _nucleus_blocks, _mass_above,
               _nucleus_finish)
else:
    KERNELS = ()


class TritonSampler:
    """Sampling and a step's bookkeeping for B rows in two kernels (four with a nucleus; top-k values from
    ``torch.topk``), in place of :func:`lm.decode.sampling.sample_rows`, its noise and the writes that end a
    step (~13 small torch kernels, ~40 more for the nucleus's sort).

    ``rows``: the engine's per-slot tensors, each (B,): ``token`` (the next input), ``position``, ``draws``,
    ``seed``, ``top_k``, ``stop_at``, ``live`` (int64), ``inv_temperature`` and ``top_p`` (fp32); the
    sampler reads and writes them in place, so one captured graph serves every request.
    """

    collect: list | None = None
    """When a list, calls append their launches to it instead of running them (see ``triton_step.precompile``)."""

    def __init__(self, vocab_size: int, batch: int, context_length: int, rows: dict[str, torch.Tensor], device):
        self.vocab_size, self.batch, self.context_length = vocab_size, batch, context_length
        self.rows = rows
        self.blocks = -(-vocab_size // SAMPLE_BLOCK)
        n = batch * self.blocks
        self.score = torch.zeros(n, dtype=torch.float32, device=device)
        self.index = torch.zeros(n, dtype=torch.long, device=device)
        self.stats = torch.zeros(4 * n, dtype=torch.float32, device=device)
        self.mass = torch.zeros(n, dtype=torch.float32, device=device)
        self.cand = torch.zeros(batch, dtype=torch.long, device=device)
        self.norms = torch.zeros(3 * batch, dtype=torch.float32, device=device)
        self.kth = torch.full((batch,), float("-inf"), dtype=torch.float32, device=device)

    def __call__(self, logits: torch.Tensor, raw: torch.Tensor, out_tokens: torch.Tensor, out_probs: torch.Tensor,
                 *, greedy: bool, max_top_k: int, nucleus: bool) -> None:
        """Sample every row from fp32 ``logits`` (B, V) (``raw``: them in the model's dtype, for top-k), writing
        ``out_tokens`` / ``out_probs`` (B, context + 1) at each live row's position."""
        top_k = bool(max_top_k) and not greedy
        if top_k:  # the k-th largest logit per row, as sample_rows takes it (ties with it stay in)
            k = self.rows["top_k"]
            values = raw.topk(max_top_k, dim=-1, sorted=True).values
            kth = values.gather(1, (k.clamp(1, max_top_k) - 1).view(-1, 1)).view(-1).to(torch.float32)
            self.kth.copy_(torch.where(k > 0, kth, float("-inf")))
        run_launches(self.launches(logits, out_tokens, out_probs, greedy=greedy, top_k=top_k, nucleus=nucleus and not greedy),
                self.collect)

    def launches(self, logits, out_tokens, out_probs, *, greedy: bool, top_k: bool, nucleus: bool) -> list[tuple]:
        """The kernel launches of a call, as (kernel, grid, args, kwargs)."""
        r, B, NB, V, C = self.rows, self.batch, self.blocks, self.vocab_size, self.context_length
        # No FMA: l / T and ln E - l / T must round as torch's separate product and difference do.
        exact = dict(enable_fp_fusion=False)
        out = [
            (_race_blocks, (NB, B),
             (logits, self.kth, r["inv_temperature"], r["seed"], r["draws"], self.score, self.index, self.stats, V, NB),
             dict(GREEDY=greedy, TOP_K=top_k, NUCLEUS=nucleus, BLOCK=SAMPLE_BLOCK, **exact)),
            (_race_combine, (B,),
             (logits, self.score, self.index, self.stats, self.cand, self.norms, out_tokens, out_probs, r["token"],
              r["position"], r["draws"], r["live"], r["stop_at"], V, C, NB),
             dict(NUCLEUS=nucleus, BLOCK_NB=pow2(NB))),
        ]
        if nucleus:
            common = (logits, self.kth, r["inv_temperature"], r["top_p"], r["seed"], r["draws"], self.cand, self.norms,
                      self.mass, self.score, self.index)
            out += [
                (_nucleus_blocks, (NB, B), (*common, V, NB), dict(TOP_K=top_k, BLOCK=SAMPLE_BLOCK, **exact)),
                (_nucleus_finish, (B,),
                 (*common, out_tokens, out_probs, r["token"], r["position"], r["live"], r["stop_at"], V, C, NB),
                 dict(TOP_K=top_k, BLOCK=SAMPLE_BLOCK, BLOCK_NB=pow2(NB), **exact)),
            ]
        return out

