"""`lab serve` under load: one streaming request alone, then N at once, then a burst over the queue.

Writes a run directory holding a random model (default: the GPT-2-small shape
of bench/decode.py, bf16 on CUDA), starts the real `lab serve` process on
127.0.0.1 (an ephemeral port), and talks to it over HTTP with streaming
requests of ``--new-tokens`` tokens (prompts as token ids; greedy-free
sampling, temperature 0.8, top-p 0.9):

  alone     one request at a time (3, median): its tokens/s and latency (the baseline)
  together  --concurrent requests at once: aggregate tokens/s vs alone, each one's latency vs alone
  burst     --burst requests at once against --max-batch slots and --max-queue: every one
            completes or gets 429; afterwards /health must show no slot, queue entry or
            GPU memory left over (nothing leaks)

Targets (issue 14, GPT-2 small, 8 concurrent x 256 tokens): aggregate >= 6x one request's
throughput, per-request latency <= 1.3x; 64 concurrent all complete or get 429.

    python3 bench/serve.py                     # GPU: the numbers of docs/performance.md (Serving)
    python3 bench/serve.py --preset tiny --new-tokens 32 --burst 16   # CPU smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=32)
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def write_run(root: Path, preset: str) -> Path:
    """A run directory with a random model of ``preset`` (bf16 on CUDA) and a byte tokenizer."""
    import torch

    from lm.checkpoint_file import atomic_torch_save
    from lm.config import ExperimentConfig, to_dict
    from lm.model import ModelConfig, TransformerLM
    from lm.tokenizer import Tokenizer

    over = {"vocab_size": 50257, "context_length": 1024} if preset == "small" else {}
    cfg = ModelConfig.from_name(preset, **over)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = TransformerLM(cfg, device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)
    run = root / f"bench-{preset}"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(f'name = "bench-{preset}"\n')
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(run / "tokenizer")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": "lm-checkpoint/1", "model": state, "iteration": 0,
                       "config": to_dict(ExperimentConfig(name=f"bench-{preset}", model=cfg))},
                      run / "checkpoints" / "best.pt")
    return run


def stream_one(http, model: str, prompt: list[int], n: int, seed: int) -> dict:
    """One streaming completion: latency, first-token time, tokens (from usage), status."""
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0.8, "top_p": 0.9, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            resp.read()
            return {"status": resp.status_code, "seconds": time.perf_counter() - t0,
                    "retry_after": resp.headers.get("retry-after")}
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"status": 200, "seconds": time.perf_counter() - t0, "first_s": first, "tokens": tokens}


def main(argv=None) -> int:
    import httpx

    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lab-bench-serve-"))
    t0 = time.perf_counter()
    run = write_run(tmp, args.preset)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "lab", "serve", str(run), "--port", "0", "--max-batch",
                             str(args.max_batch), "--max-queue", str(args.max_queue)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("serving on"):
        print("lab serve did not start:", line, (tmp / "serve.log").read_text())
        return 1
    url = line.split()[-1]
    print(f"server up {time.perf_counter() - t0:.1f}s after start (model written, loaded, graphs captured); {url}")
    http = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=256))
    model = http.get("/v1/models").json()["data"][0]["id"]
    prompt = list(range(1, args.prompt_tokens + 1))
    n = args.new_tokens
    stream_one(http, model, prompt, n, 0)  # the first request after start: graphs of other windows
    with concurrent.futures.ThreadPoolExecutor(args.max_batch) as pool:  # and of the batch's sampling modes
        list(pool.map(lambda s: stream_one(http, model, prompt, n, s), range(args.max_batch)))
    health0 = http.get("/health").json()  # the idle level: every graph this load needs is captured
    alone = [stream_one(http, model, prompt, n, s) for s in range(3)]
    a_lat = statistics.median(r["seconds"] for r in alone)
    a_rate = statistics.median(r["tokens"] / r["seconds"] for r in alone)
    a_first = statistics.median(r["first_s"] for r in alone)
    with concurrent.futures.ThreadPoolExecutor(max(args.concurrent, args.burst)) as pool:
        t = time.perf_counter()
        together = list(pool.map(lambda s: stream_one(http, model, prompt, n, s), range(args.concurrent)))
        wall = time.perf_counter() - t
        agg = sum(r["tokens"] for r in together) / wall
        lat = [r["seconds"] for r in together]
        t = time.perf_counter()
        burst = list(pool.map(lambda s: stream_one(http, model, prompt, n, s), range(args.burst)))
        burst_wall = time.perf_counter() - t
    time.sleep(0.5)
    health = http.get("/health").json()
    ok = sum(r["status"] == 200 for r in burst)
    rejected = sum(r["status"] == 429 for r in burst)
    other = len(burst) - ok - rejected
    print(f"\n{args.preset}, {n} new tokens per request, prompt {args.prompt_tokens} tokens, T 0.8 top-p 0.9, "
          f"max-batch {args.max_batch}, step {health0.get('step')}")
    print(f"alone:    {a_rate:,.0f} tokens/s, latency {a_lat * 1000:.0f} ms, first token {a_first * 1000:.0f} ms "
          f"(median of 3)")
    print(f"together: {args.concurrent} at once: {agg:,.0f} tokens/s aggregate = {agg / a_rate:.2f}x alone "
          f"(target >= 6x); latency median {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms = "
          f"{max(lat) / a_lat:.2f}x alone (target <= 1.3x)")
    print(f"burst:    {args.burst} at once (queue {args.max_queue}): {ok} completed, {rejected} got 429, {other} "
          f"other, in {burst_wall:.1f}s; tokens of the completed: "
          f"{sorted({r['tokens'] for r in burst if r['status'] == 200})}")
    leak = {k: (health0.get(k), health.get(k)) for k in ("active", "queued", "memory_allocated")}
    print(f"after:    active {health['active']}, queued {health['queued']}, memory allocated "
          f"{health0.get('memory_allocated')} -> {health.get('memory_allocated')} bytes "
          f"({'nothing leaked' if health['active'] == 0 and health['queued'] == 0 and leak['memory_allocated'][0] == leak['memory_allocated'][1] else 'LEAK'})")
    proc.terminate()
    code = proc.wait(120)
    print(f"SIGTERM: exit {code}")
    if args.json:
        Path(args.json).write_text(json.dumps({"alone": alone, "together": together, "burst": burst,
                                               "health": [health0, health], "aggregate": agg}, indent=1))
    return 0 if other == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
