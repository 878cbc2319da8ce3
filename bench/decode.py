"""Decoding speed at batch 1: tokens/s of a reply, cold (first after loading) and warm.

Ways to generate the same number of tokens from the same random-weight model:

  (a)   naive          nanoGPT-style: a full forward over the whole growing sequence per token (the baseline)
  (b)   eager          lm.decode.Engine: prompt read once into the KV cache, then one token per step
  (c)   graph          the same engine with its one-token step captured in a CUDA graph (CUDA only)
  (c'') graph-torch    (c) with the torch step (lm.decode.torch_step) instead of the Triton kernels
  (d)   compiled       the torch step + sampler under torch.compile(mode="reduce-overhead"), no own graphs
  (d')  compiled-graph the torch step + sampler under torch.compile (default mode) inside the engine's graphs

(b) and (c) use the engine's step: Triton kernels on CUDA
(lm.decode.triton_step.TritonStep, at batch 1 with its sampler) where Triton is installed,
else the torch step. (d) and (d') answer whether a compiled plain step matches
the hand-written kernels. --batch N decodes N requests at once in one engine
(continuous batching) and reports aggregate and per-request tokens/s.

"cold" is the first reply after the weights are on the device: it includes the
decoder's buffers, any warm-up and the CUDA graph capture. "warm" is the median
of later replies. By default each mode runs in a fresh process so that one
mode's warm-up (cuBLAS, einx traces) does not flatter the next one's cold time.

Usage (the `small` preset is GPT-2-small shaped: 768 wide, 12 layers, 12 heads,
vocab 50257, context 1024; weights bf16 on CUDA):

    python3 bench/decode.py                        # H100: the numbers of docs/performance.md (Decoding)
    python3 bench/decode.py --preset tiny          # CPU-sized smoke run
    python3 bench/decode.py --modes eager,graph --new-tokens 512 --top-p 0.9
    python3 bench/decode.py --check                # logits of every step vs full forwards, every ablation
    python3 bench/decode.py --profile              # kernels and GPU time of one replayed step

Needs only torch, numpy, einx and regex (and Triton, which CUDA builds of torch bring, for the
Triton step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = {"naive": "(a) naive loop, no cache", "eager": "(b) KV cache, eager",
         "graph": "(c) KV cache + CUDA graph", "graph-torch": "(c'') CUDA graph, torch step",
         "compiled": "(d) torch.compile reduce-overhead", "compiled-graph": "(d') torch.compile in own graph"}
# Peak memory bandwidth by GPU name, for the time-to-read-the-weights floor.
BANDWIDTH = {"H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12,
             "RTX 4090": 1.0e12, "L40S": 0.864e12}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="model preset (small is overridden to vocab 50257, ctx 1024)")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200, help="nanoGPT's sample.py default")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--warm-runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="requests decoded at once (continuous batching)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--in-process", action="store_true", help="run every mode in this process (cold times flattered)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--check", action="store_true",
                   help="instead of timing: check on this device that the decoder (CUDA graph, fused step) gives "
                        "the logits and greedy tokens of a full forward pass, for every ablation switch, in fp32")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing replies: profile the replayed CUDA-graph step (kernels per step, GPU "
                        "time per step for each attention window, the costliest kernels)")
    p.add_argument("--child-timeout", type=float, default=600, help="seconds a mode may take (its own process)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_config(args):
    from lm.model import ModelConfig

    over = {}
    if args.preset == "small":
        over = {"vocab_size": 50257, "context_length": 1024}
    if args.vocab_size:
        over["vocab_size"] = args.vocab_size
    if args.context_length:
        over["context_length"] = args.context_length
    return ModelConfig.from_name(args.preset, **over)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_reply(model, prompt, n, args, generator):
    """nanoGPT's generate(): crop to the context, full forward, take the last logits, top-k, multinomial."""
    import torch

    idx = prompt
    ctx = model.cfg.context_length
    for _ in range(n):
        logits = model(idx[:, -ctx:])[:, -1, :].float() / args.temperature
        if args.top_k:
            v, _ = torch.topk(logits, min(args.top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx[0, prompt.shape[1]:].tolist()  # the host needs the ids: this syncs


def make_engine(mode: str, model, args):
    """The engine a mode times (compiled modes wrap its step function)."""
    import torch

    from lm.decode import Engine

    graphs = mode.startswith("graph") or mode == "compiled-graph"
    kernels = "auto" if mode in ("eager", "graph") else "torch"
    engine = Engine(model, max_batch=args.batch, cuda_graphs=graphs, kernels=kernels)
    if mode.startswith("compiled"):
        engine.min_window = model.cfg.context_length  # one window: one compiled graph per sampling mode
        engine._step = torch.compile(engine._step, mode="reduce-overhead" if mode == "compiled" else "default",
                                     dynamic=False)
    return engine


def measure(mode: str, args) -> dict:
    """Build the model, then time one cold and ``warm_runs`` warm replies of ``mode`` (``batch`` at once)."""
    import torch

    from lm.decode import Decoded, Notice, Request, SamplingParams, resolve_device, resolve_dtype
    from lm.model import TransformerLM

    dev = resolve_device(args.device)
    dt = resolve_dtype(args.dtype, dev)
    if (mode.startswith("graph") or mode.startswith("compiled")) and dev.type != "cuda":
        return {"mode": mode, "skipped": "CUDA graphs need a CUDA device"}
    cfg = model_config(args)
    torch.manual_seed(0)
    with torch.no_grad():
        model = TransformerLM(cfg, device=dev, dtype=dt).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.new_tokens, seed=0, stop_at_eos=False)
    sync(dev)
    engine, notices, firsts = None, [], []

    def reply() -> list[int]:
        nonlocal engine
        if mode == "naive":
            with torch.inference_mode():
                gen = torch.Generator(device=dev).manual_seed(0)
                return naive_reply(model, prompt.to(dev), args.new_tokens, args, gen)
        if engine is None:
            engine = make_engine(mode, model, args)
            notices.append(f"step: {engine.step_kind}" + (f" (Triton: {engine.triton_problem})"
                                                           if engine.step_kind == "torch" else ""))
        t0 = time.perf_counter()
        requests = [Request(prompt[0].tolist(), params) for _ in range(args.batch)]
        for r in requests:
            engine.submit(r)
        first = None
        while not all(r.done for r in requests):
            engine.run_round()
            if first is None and requests[0].produced:
                first = time.perf_counter() - t0
        firsts.append(first)
        for r in requests:
            notices.extend(e.message for e in r.events if isinstance(e, Notice))
        return [e.token_id for e in requests[0].events if isinstance(e, Decoded)]

    times = []
    for _ in range(1 + args.warm_runs):
        t0 = time.perf_counter()
        tokens = reply()
        sync(dev)
        times.append(time.perf_counter() - t0)
        assert len(tokens) == args.new_tokens
    return {"mode": mode, "cold_s": times[0], "warm_s": statistics.median(times[1:]) if args.warm_runs else None,
            "first_token_s": firsts[:1] + [statistics.median(firsts[1:])] if len(firsts) > 1 else firsts,
            "tokens": tokens, "notices": notices, "device": describe_device(dev, dt),
            "params": model.num_params(), "batch": args.batch if mode != "naive" else 1,
            "bytes_per_token": bytes_read_per_token(model, args.prompt_tokens - 1, args.new_tokens)}


def describe_device(dev, dt) -> str:
    import torch

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return f"{name} {str(dt).removeprefix('torch.')}, torch {torch.__version__}"


def bytes_read_per_token(model, first: int, n: int) -> dict:
    """Weights a decode step reads (the embedding table only by one row) and the KV cache it scans.

    The Triton step's attention reads the cache up to the position, so the KV
    bytes are those of the filled prefix, averaged over the positions
    first..first+n-1 of a reply (the torch fused step reads a power-of-two
    window around it, the model's forward the whole cache).
    """
    c = model.cfg
    elt = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) * elt
    if not c.tie_embeddings:
        weights -= model.token_embeddings.weight.numel() * elt
    slots = sum(min(p + 1, c.context_length) for p in range(first, first + n)) / n
    kv = 2 * c.num_layers * slots * c.d_model * elt
    return {"weights": weights, "kv_cache": kv, "kv_full": 2 * c.num_layers * c.context_length * c.d_model * elt}


def run_child(mode: str, args) -> dict:
    if args.in_process:
        return measure(mode, args)
    argv = [a for a in sys.argv[1:]]
    try:
        proc = subprocess.run([sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True,
                              timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"did not finish in {args.child_timeout:.0f} s"}
    if proc.returncode != 0:
        return {"mode": mode, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s:,.0f}" if tokens_per_s >= 10 else f"{tokens_per_s:.2f}"


def report(results: list[dict], args) -> None:
    first = next((r for r in results if "device" in r), None)
    cfg = model_config(args)
    if first:
        print(f"decode benchmark: preset {args.preset} ({first['params'] / 1e6:.1f}M params, vocab {cfg.vocab_size}, "
              f"context {cfg.context_length}) on {first['device']}")
    print(f"batch {args.batch}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, temperature "
          f"{args.temperature}, top_k {args.top_k}, top_p {args.top_p}; warm = median of {args.warm_runs}; "
          f"{'one process' if args.in_process else 'a fresh process per mode'}\n")
    base = next((r for r in results if r["mode"] == "naive" and "cold_s" in r), None)
    print(f"{'mode':36} {'cold tok/s':>11} {'warm tok/s':>11} {'warm ms/tok':>12} {'x naive warm':>13} "
          f"{'x naive cold':>13} {'1st tok cold/warm ms':>21}")
    n = args.new_tokens
    for r in results:
        label = f"{MODES[r['mode']]:36}"
        if "cold_s" not in r:
            print(f"{label} {r.get('skipped') or 'error: ' + r.get('error', '?')}")
            continue
        k = r.get("batch", 1)  # aggregate over the batch's requests
        cold, warm = k * n / r["cold_s"], (k * n / r["warm_s"] if r["warm_s"] else float("nan"))
        rw = f"{warm / (n / base['warm_s']):.1f}x" if base and base["warm_s"] else "-"
        rc = f"{cold / (n / base['cold_s']):.1f}x" if base else "-"
        ft = "/".join(f"{t * 1000:.0f}" for t in r.get("first_token_s", []) if t is not None) or "-"
        print(f"{label} {_rate(cold):>11} {_rate(warm):>11} {1000 / warm:12.3f} {rw:>13} {rc:>13} {ft:>21}")
        for msg in sorted(set(r.get("notices", []))):
            count = r["notices"].count(msg)
            print(f"    note{f' ({count}x)' if count > 1 else ''}: {msg}")
    by_mode = {r["mode"]: r for r in results if "tokens" in r}
    print()
    for a, b in (("eager", "graph"), ("graph-torch", "compiled"), ("graph-torch", "compiled-graph")):
        if a in by_mode and b in by_mode:
            same = sum(x == y for x, y in zip(by_mode[a]["tokens"], by_mode[b]["tokens"]))
            print(f"same seed, {a} vs {b}: {same}/{n} tokens equal")
    if first:
        b = first["bytes_per_token"]
        total = b["weights"] + b["kv_cache"]
        line = (f"\nread per token: weights {b['weights'] / 1e6:.0f} MB + KV cache {b['kv_cache'] / 1e6:.0f} MB "
                f"(the filled prefix on average; the whole cache is {b.get('kv_full', 0) / 1e6:.0f} MB) "
                f"= {total / 1e6:.0f} MB")
        bw = next((v for k, v in BANDWIDTH.items() if k in first["device"]), None)
        if bw:
            line += (f"; floor at {bw / 1e12:.2f} TB/s: {total / bw * 1e6:.0f} us/token "
                     f"({bw / total:,.0f} tokens/s); weights alone {b['weights'] / bw * 1e6:.0f} us")
        print(line)
    if first and "H100" in first["device"]:
        print("targets (H100, bf16): >= 2,000 tokens/s warm and >= 1,000 cold with CUDA graphs")


def check(args) -> int:
    """Greedy decoding through the whole pipeline (graph, each step, overflow) against full forwards."""
    import dataclasses

    import torch

    from lm.decode import OVERFLOW_KEEP, Decoded, Engine, Request, SamplingParams, resolve_device
    from lm.model import ModelConfig, TransformerLM

    dev = resolve_device(args.device)
    base = ModelConfig(vocab_size=97, context_length=48, d_model=64, num_layers=2, num_heads=4, d_ff=96)
    switches = {"default": {}, "nope": {"position": "nope"}, "post-norm": {"norm": "post"},
                "no-norm": {"norm": "none"}, "silu": {"ffn": "silu", "d_ff": None}, "tied": {"tie_embeddings": True},
                "naive-attention": {"attention": "naive"}}
    failures = 0
    for name, change in switches.items():
        cfg = dataclasses.replace(base, **change)
        torch.manual_seed(0)
        model = TransformerLM(cfg, device=dev).eval()
        for graphs, kernels in ((True, "auto"), (True, "torch"), (False, "auto"), (False, "torch")):
            if kernels == "torch" and (dev.type != "cuda" or name == "post-norm"):
                continue  # the same step as "auto" there
            dec = Engine(model, cuda_graphs=graphs, chunk=1, kernels=kernels)
            dec.depth = 1  # read each step's logits before the next step runs
            dec.min_window = 8  # attention windows 8, 16, 32 and 48 (the context) all get used
            n = 2 * cfg.context_length  # overflows once or twice on the way
            prompt = [3, 1, 4, 1, 5, 9, 2, 6]
            worst, not_argmax, hist = 0.0, 0, list(prompt)
            keep = int(cfg.context_length * OVERFLOW_KEEP)
            with torch.no_grad():
                for ev in dec.generate(Request(prompt, SamplingParams(temperature=0, max_new_tokens=n))):
                    if not isinstance(ev, Decoded):
                        if ev.kind != "overflow":
                            print(f"     note: {ev.message}")
                        continue
                    if len(hist) > cfg.context_length:  # the engine's overflow rule, replayed
                        hist = hist[-keep:]
                    ref = model(torch.tensor(hist, device=dev))[-1].float()
                    worst = max(worst, (dec.logits[0] - ref).abs().max().item())
                    not_argmax += bool(ref[ev.token_id] < ref.max() - 1e-3)  # near-ties may go either way
                    hist.append(ev.token_id)
            captured = bool(dec._graphs)
            windows = sorted({w for _, w in dec._graphs if w})
            ok = not_argmax == 0 and worst < 1e-3 and captured == (graphs and dev.type == "cuda")
            failures += not ok
            graph = ("captured" if captured else "NOT CAPTURED" if graphs and dev.type == "cuda"
                     else "n/a" if graphs else "off")
            print(f"{'ok  ' if ok else 'FAIL'} {name:16} graph={graph:8} step={dec.step_kind:6} "
                  f"max |logit diff| {worst:.2e}, {n - not_argmax}/{n} greedy tokens are the argmax"
                  f"{f', windows {windows}' if windows else ''}")
            if dec.step_kind == "torch" and kernels == "auto" and dev.type == "cuda":
                print(f"     (Triton step not used: {dec.triton_problem})")
    for kernels in ("auto", "torch") if dev.type == "cuda" else ("auto",):
        failures += not check_batched(dev, base, kernels)
        failures += not check_batch_invariance(dev, kernels)
    if dev.type == "cuda":
        failures += not check_sampler(dev)
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


def check_batched(dev, cfg, kernels: str) -> bool:
    """Three greedy requests in one engine of 3 slots, joining at different steps: each token must be the
    argmax of a full forward over that request's own text (its prompt and the tokens before it)."""
    import torch

    from lm.decode import Engine, Request, SamplingParams
    from lm.model import TransformerLM

    torch.manual_seed(1)
    model = TransformerLM(cfg, device=dev).eval()
    engine = Engine(model, max_batch=3, kernels=kernels, chunk=2)
    prompts = [[3, 1, 4, 1, 5], [2, 7, 1, 8, 2, 8, 1, 8, 2], [1, 6]]
    requests = [Request(p, SamplingParams(temperature=0, max_new_tokens=30)) for p in prompts]
    engine.submit(requests[0])
    rounds = 0
    while not all(r.done for r in requests):
        if rounds in (3, 7):  # the others join while the first is decoding
            engine.submit(requests[1 if rounds == 3 else 2])
        engine.run_round()
        rounds += 1
    worst_gap, not_argmax, total = 0.0, 0, 0
    with torch.no_grad():
        for p, r in zip(prompts, requests):
            out = [e.token_id for e in r.events if hasattr(e, "token_id")]
            logits = model(torch.tensor(p + out[:-1], device=dev)).float()[len(p) - 1:]
            for i, t in enumerate(out):
                gap = (logits[i].max() - logits[i, t]).item()
                worst_gap = max(worst_gap, gap)
                not_argmax += gap > 1e-3  # near-ties may go either way
                total += 1
    ok = not_argmax == 0 and total == 90
    print(f"{'ok  ' if ok else 'FAIL'} {'batched x3':16} graph={str(engine.use_graphs):8} step={engine.step_kind:6} "
          f"{total - not_argmax}/{total} greedy tokens are the argmax of a full forward (largest gap {worst_gap:.1e})")
    return ok


def check_batch_invariance(dev, kernels: str) -> bool:
    """One request alone in a 1-slot engine (``lab sample``) and in slot 6 of an 8-slot engine beside 7 others
    (``lab serve``), in the model's serving dtype: greedy and seeded top-p tokens must be the same."""
    import torch

    from lm.decode import Engine, Request, SamplingParams, resolve_dtype
    from lm.model import ModelConfig, TransformerLM

    cfg = ModelConfig(vocab_size=1000, context_length=256, d_model=256, num_layers=4, num_heads=4, d_ff=688)
    torch.manual_seed(2)
    with torch.no_grad():
        model = TransformerLM(cfg, device=dev, dtype=resolve_dtype("auto", dev)).eval()
    prompt = [5, 17, 301, 42, 9, 77]
    ok = True
    for name, params in (("greedy", SamplingParams(temperature=0, max_new_tokens=200, stop_at_eos=False)),
                         ("T 0.8", SamplingParams(temperature=0.8, top_p=1.0, max_new_tokens=200, seed=3,
                                                  stop_at_eos=False)),
                         ("top-p 0.9", SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=200, seed=7,
                                                      stop_at_eos=False))):
        texts = []
        for slots in (1, 8):
            engine = Engine(model, max_batch=slots, kernels=kernels)
            others = [engine.submit(Request([i + 1, 2 * i + 3], SamplingParams(temperature=0.8, seed=i,
                                                                                 max_new_tokens=150 + 10 * i,
                                                                                 stop_at_eos=False)))
                      for i in range(slots - 1)]
            for _ in range(2 if slots > 1 else 0):  # the others are decoding when this one joins
                engine.run_round()
            request = engine.submit(Request(prompt, params))
            while not (request.done and all(r.done for r in others)):
                engine.run_round()
            texts.append([e.token_id for e in request.events if hasattr(e, "token_id")])
        same = next((i for i, (a, b) in enumerate(zip(*texts)) if a != b), len(texts[0]))
        good = texts[0] == texts[1]
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {'1 vs 8 slots':16} step={engine.step_kind:6} {name}: "
              f"{same}/{len(texts[0])} tokens equal before the first difference ({model.lm_head.weight.dtype})")
    return ok


def check_sampler(dev) -> bool:
    """The Triton sampler against sample_rows on the same logits and noise: 8 rows (greedy, temperature,
    top-k + top-p, a small top-p whose first winner often falls outside the nucleus), GPT-2's vocabulary."""
    import torch

    from lm.decode.sampling import race_noise, sample_rows, token_keys
    from lm.decode.triton_sampler import TritonSampler

    B, V, C, draws = 8, 50257, 1024, 200
    torch.manual_seed(0)
    inv_t = torch.tensor([0.0, 1 / 0.7, 1.0, 1 / 1.3, 1.0, 1.25, 1.0, 1.0], device=dev)
    top_p = torch.tensor([1.0, 1.0, 0.8, 0.3, 0.9, 0.95, 0.5, 1.0], device=dev)
    top_k = torch.tensor([0, 0, 50, 0, 0, 0, 0, 200], device=dev)
    rows = {"token": torch.zeros(B, dtype=torch.long, device=dev), "position": torch.zeros(B, dtype=torch.long, device=dev),
            "draws": torch.zeros(B, dtype=torch.long, device=dev), "seed": torch.arange(B, device=dev) * 7919 + 2**33,
            "top_k": top_k, "stop_at": torch.full((B,), C, device=dev), "live": torch.ones(B, dtype=torch.long, device=dev),
            "inv_temperature": inv_t, "top_p": top_p}
    sampler = TritonSampler(V, B, C, rows, dev)
    keys = token_keys(V, dev)
    out_t = torch.zeros(B, C + 1, dtype=torch.long, device=dev)
    out_p = torch.zeros(B, C + 1, device=dev)
    same = total = 0
    for i in range(draws):
        raw = (torch.randn(B, V, device=dev) * (1 + i % 4)).bfloat16()  # flat to peaked distributions
        logits = raw.float()
        want, _ = sample_rows(logits, race_noise(rows["seed"], rows["draws"], keys), inv_t, top_k, top_p,
                              greedy=False, max_top_k=200, nucleus=True, rank_logits=raw)
        sampler(logits, raw, out_t, out_p, greedy=False, max_top_k=200, nucleus=True)
        same += int((out_t[:, i] == want).sum())
        total += B
    ok = same == total
    print(f"{'ok  ' if ok else 'FAIL'} {'triton sampler':16} {same}/{total} tokens equal to sample_rows's "
          f"(same noise; a nucleus's mass within rounding of top-p may differ)")
    return ok


def profile_step(args) -> int:
    """torch.profiler over replays of each captured step graph of one reply: what a token costs on the GPU."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile

    from lm.decode import Request, SamplingParams, resolve_device, resolve_dtype
    from lm.decode.engine import POSITION
    from lm.model import TransformerLM

    dev = resolve_device(args.device)
    if dev.type != "cuda":
        print("--profile needs a CUDA device")
        return 2
    cfg = model_config(args)
    torch.manual_seed(0)
    with torch.no_grad():
        model = TransformerLM(cfg, device=dev, dtype=resolve_dtype(args.dtype, dev)).eval()
    dec = make_engine(args.modes.split(",")[0] if args.modes in ("graph", "graph-torch") else "graph", model, args)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.new_tokens, seed=0, stop_at_eos=False)
    requests = [dec.submit(Request(list(range(1, args.prompt_tokens + 1)), params)) for _ in range(args.batch)]
    while not all(r.done for r in requests):  # captures this reply's graphs
        dec.run_round()
    steps = 50
    print(f"{dec.step_kind} step, batch {args.batch}, ", end="")
    print(f"graph step of {args.preset} on {describe_device(dev, next(model.parameters()).dtype)}, sampling "
          f"T={args.temperature} top_k={args.top_k} top_p={args.top_p}; {steps} replays per window\n")
    for (mode, window), graph in sorted(dec._graphs.items(), key=lambda kv: kv[0][1] or 0):
        dec.state[POSITION] = max(0, (window or cfg.context_length) - steps - 2)
        graph.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                graph.replay()
            torch.cuda.synchronize()
        kernels = collections.defaultdict(lambda: [0, 0.0])
        first = last = None
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.name][0] += 1
                kernels[e.name][1] += e.time_range.elapsed_us()
                first = min(first or e.time_range.start, e.time_range.start)
                last = max(last or 0, e.time_range.end)
        count = sum(k[0] for k in kernels.values()) / steps
        busy = sum(k[1] for k in kernels.values()) / steps
        span = (last - first) / steps if first is not None else 0.0
        print(f"{mode}, window {window or 'none (reads up to the position)'}: {count:.0f} kernels per token, "
              f"GPU busy {busy:.0f} us, {span:.0f} us per token first kernel to last")
    print("\ncostliest kernels (last window), us per token, count per token, us each:")
    for name, (n, total) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{total / steps:8.1f} {n / steps:6.1f} {total / n:7.2f}  {name[:110]}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(args)
    if args.profile:
        return profile_step(args)
    os.environ.setdefault("OMP_NUM_THREADS", str(min(8, os.cpu_count() or 1)))
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    results = [run_child(m, args) for m in modes]
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
