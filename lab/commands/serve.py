"""``lab serve RUN``: serve a trained run over an OpenAI-compatible HTTP API.

Binds 127.0.0.1 by default; any other address needs ``--api-key`` (clients send
``Authorization: Bearer KEY``). ``--port 0`` picks a free port. The address is
printed on stdout once the server accepts connections. SIGTERM (or Ctrl-C)
stops accepting, lets the requests in flight finish, then exits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a trained model over an OpenAI-compatible HTTP API",
        description="Serve RUN (a run directory or an export folder) with POST /v1/completions, "
                    "POST /v1/chat/completions (streaming or not), GET /v1/models and GET /health. "
                    "Requests are decoded together (continuous batching, --max-batch at a time); more wait in "
                    "a queue of --max-queue, beyond which the answer is 429. docs/serving.md has the details.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory (runs/<name>-<time>) or an export folder")
    p.add_argument("--checkpoint", default=None, metavar="WHICH",
                   help="best, latest, step_N or a checkpoint file (default: best, else latest, else the "
                        "newest step checkpoint that exists)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="requests decoded at once (KV-cache slots; default 8)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="requests that may wait for a slot before the server answers 429 (default 8 x max-batch)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (needed to bind anything but 127.0.0.1)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients pass (default: the run directory's name)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="weights' precision; auto is bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode without CUDA graphs")
    from lab.commands.sample import add_kernels_arg

    add_kernels_arg(p)
    return p


def _bind(host: str, port: int):
    import socket

    from lm.errors import LabError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LabError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                       "(0 = any free port) or --host") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _warm_up(engine) -> None:
    """Capture the common step graphs before the first client waits for them (CUDA only)."""
    from lm.decode import Request, SamplingParams

    if not engine.use_graphs:
        return
    for params in (SamplingParams(temperature=0, max_new_tokens=2), SamplingParams(temperature=1.0, top_p=1.0,
                   max_new_tokens=2, seed=0), SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=2, seed=0)):
        list(engine.generate(Request([0, 0], params)))


def run(args) -> int:
    from lm.errors import LabError

    if args.host not in LOCAL_HOSTS and not args.api_key:
        raise LabError(f"--host {args.host} makes the server reachable from other machines; give --api-key KEY "
                       "too (clients then send 'Authorization: Bearer KEY'), or keep the default 127.0.0.1")
    if not 0 <= args.port <= 65535:
        raise LabError(f"--port must be a TCP port from 0 to 65535 (0 picks a free one), got {args.port}")
    if args.max_batch < 1:
        raise LabError(f"--max-batch must be at least 1, got {args.max_batch}")
    max_queue = 8 * args.max_batch if args.max_queue is None else args.max_queue
    if max_queue < 0:
        raise LabError(f"--max-queue must be >= 0, got {max_queue}")
    sock = _bind(args.host, args.port)  # before loading: a taken port fails fast

    import uvicorn

    from lab.serve.app import Server, create_app
    from lm.decode import Engine, load

    t0 = time.perf_counter()
    from lab.commands.sample import checkpoint_choice

    loaded = load(args.run_dir, checkpoint_choice(args.run_dir, args.checkpoint, sys.stderr), args.device,
                  args.dtype)
    engine = Engine(loaded.model, max_batch=args.max_batch, cuda_graphs=False if args.no_cuda_graphs else None,
                    kernels=args.kernels)
    _warm_up(engine)
    # The folder given (a run or an export folder), not the checkpoint's grandparent: an export holds its weights at top level.
    name = args.model_name or Path(args.run_dir).resolve().name
    server = Server(engine, loaded.tokenizer, name, max_queue=max_queue, api_key=args.api_key)
    server.start()
    app = create_app(server)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"lab serve: {name} ({loaded.model.num_params() / 1e6:.2f}M parameters, {engine.step_kind} step, "
          f"{args.max_batch} slots, queue {max_queue}) loaded in {time.perf_counter() - t0:.1f}s", file=sys.stderr,
          flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=600,
                            lifespan="off")
    userver = uvicorn.Server(config)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal through the handler that was there before
    # it started: make that one a no-op so the drained server exits 0 after closing the engine.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    from lab.serve.status import StatusWriter

    status = StatusWriter(args.run_dir, server, f"http://{shown}:{port}")
    status.start()  # the console's monitor lists the server from this file
    print(f"serving on http://{shown}:{port}", flush=True)
    try:
        userver.run(sockets=[sock])
    finally:
        server.stop()
        status.stop()
    print("lab serve: stopped", file=sys.stderr, flush=True)
    return 0
