"""What a running `lab serve` tells the console: ``<run>/serving/<host>-<pid>.json``, rewritten every second.

The server is a process like a training run, and the console only reads files:
:class:`StatusWriter` (a thread of the server) atomically rewrites one small JSON
file in the folder it serves from, with the address, the engine's occupancy and
the request and token rates of the last interval; on exit the file says
``"state": "stopped"``. :func:`lab.views.serving.read_serving` is the reader.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from lm.atomic import atomic_write
from lm.processes import identity, this_host

SERVING_DIR = "serving"
INTERVAL_S = 1.0


def status_path(run_dir: str | Path, host: str, pid: int) -> Path:
    return Path(run_dir) / SERVING_DIR / f"{host}-{pid}.json"


class StatusWriter:
    """Rewrites the server's status file every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, run_dir: str | Path, server, url: str, interval: float = INTERVAL_S):
        self.server, self.url, self.interval = server, url, interval
        me = identity()
        self.base = {**me, "url": url, "model": server.model_id, "slots": server.engine.max_batch,
                     "max_queue": server.max_queue, "started": time.time()}
        self.path = status_path(run_dir, this_host(), me["pid"])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.monotonic(), 0, 0)  # (when, requests, tokens) at the previous write
        self._warned = False

    def snapshot(self, state: str = "serving") -> dict:
        s, e = self.server, self.server.engine
        now, requests, tokens = time.monotonic(), s.requests_total, e.tokens
        t0, r0, k0 = self._last
        dt = max(now - t0, 1e-9)
        self._last = (now, requests, tokens)
        return {**self.base, "state": state, "updated": time.time(), "active": e.active, "queued": e.pending(),
                "requests": requests, "rejected": s.rejected_total, "tokens": tokens,
                "requests_per_s": (requests - r0) / dt, "tokens_per_s": (tokens - k0) / dt}

    def write(self, state: str = "serving") -> None:
        try:
            atomic_write(self.path, json.dumps(self.snapshot(state)))
        except OSError as e:  # a read-only export folder: serving goes on, the console just cannot see it
            if not self._warned:
                self._warned = True
                print(f"lab serve: cannot write {self.path} ({e.strerror or e}); the console will not list "
                      "this server", file=sys.stderr)

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._loop, name="lab-serve-status", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.write()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write("stopped")
