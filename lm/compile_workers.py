"""Letting a process exit without waiting for Inductor's compile workers.

Torch-free on purpose: ``lab``'s command guard calls it after every command, and a
command that never imported torch (``lab runs``, ``lab config docs``) must not
import it here.
"""

from __future__ import annotations

import sys
import threading


def release_compile_workers() -> None:
    """Stop Inductor's compile-worker processes without waiting for them (before a process exits).

    Inductor's exit handler waits until its worker pool has shut down: 2 s after a
    TinyShakespeare run on an H100, 5 s after a short run whose workers were still
    starting (each imports torch). From a 30-step `lab run`'s last line to the end of
    the process it took 8.7-11.9 s on an H100 without this call, 1.4-1.7 s with it.
    Here Inductor forgets its pools at once (a later compile starts a new one) and a
    daemon thread tells the old ones to stop, so the exit handler finds nothing to
    wait for; the workers finish on their own.
    """
    async_compile = sys.modules.get("torch._inductor.async_compile")
    pools = list(getattr(async_compile, "_pool_set", ()))
    forget = getattr(async_compile, "after_fork", None)  # "reset pools to initial state without shutting them down"
    if not pools or forget is None:  # nothing was compiled in this process, or a torch without these
        return
    try:
        forget()
    except Exception:  # leave the pools to Inductor's exit handler, as without this call
        return

    def stop() -> None:
        for pool in pools:
            try:
                pool.shutdown()
            except Exception:  # best effort: the process is on its way out
                pass

    threading.Thread(target=stop, name="lab-stop-compile-workers", daemon=True).start()
