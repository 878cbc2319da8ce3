"""Ranks that stop together, and what to say when one of them dies.

Stopping: a signal reaches each rank at a different step (Ctrl-C hits the
whole process group; torchrun's agent forwards SIGTERM), but every rank must
checkpoint at the same step or the collectives of the next step hang. Each
step every rank casts a vote ``(stop requested, time is up)`` in an
asynchronous all-reduce(MAX) on the CPU control group and reads the vote of
the previous step, so the decision costs no GPU sync and no waiting: all
ranks act on the same vote, one step after the first rank asked.

A non-finite loss needs no vote: the logged loss is the mean over ranks and
the gradient norm is global, so a NaN on any rank is seen by all of them at
the same step and every rank halts (exit 4).

Dying: when a rank dies (kill -9, OOM, an exception) torchrun's agent stops
the others (SIGTERM, SIGKILL after its shutdown timeout) and reports every
failure; :func:`describe_failures` turns that into the message and exit code
the launcher records in status.json.
"""

from __future__ import annotations

import signal as _signal

import torch
import torch.distributed as dist


class StopVote:
    """Per-step asynchronous agreement on (stop, time up) over the control group."""

    def __init__(self, group):
        self.group = group
        self._work = None
        self._tensor = None

    def cast(self, stop: bool, time_up: bool) -> tuple[bool, bool]:
        """Cast this step's vote; return the agreed vote of the previous step."""
        agreed = (False, False)
        if self._work is not None:
            self._work.wait()
            agreed = (bool(self._tensor[0] > 0), bool(self._tensor[1] > 0))
        self._tensor = torch.tensor([float(stop), float(time_up)], dtype=torch.float32)
        self._work = dist.all_reduce(self._tensor, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def settle(self) -> None:
        """Wait for the vote in flight (before the group is destroyed)."""
        if self._work is not None:
            try:
                self._work.wait()
            except Exception:
                pass
            self._work = None


def _signal_name(sig: int | None) -> str:
    try:
        return _signal.Signals(sig).name
    except (ValueError, TypeError):
        return f"signal {sig}"


WORKER_CODES = {2: "bad input", 4: "diverged", 5: "stopped"}


def describe_failures(failures: dict) -> tuple[int, str, bool]:
    """(exit code, message, every rank ended the same orderly way) from torchrun's ``failures``.

    ``failures`` maps global rank -> ``ProcessFailure`` (``exitcode``,
    ``timestamp``, ``pid``, ``error_file_data``). When every rank left with
    the same lab exit code (2, 4 or 5), or rank 0 did and the others were only
    stopped after it, the run ended in order: rank 0 already wrote
    status.json and its code is the run's. Otherwise the first rank to
    fail (by time) is the root cause: the message names it, how it died, and
    the others that were stopped because of it; the exit code is 1.
    """
    codes = {r: f.exitcode for r, f in failures.items()}
    if len(set(codes.values())) == 1 and next(iter(codes.values())) in WORKER_CODES:
        return next(iter(codes.values())), "", True
    # Rank 0 ended in order (its status.json says how) and the others only reacted: the agent stopped
    # them once rank 0 had exited (other ranks leave 0 after a halt or a stop; see lab run).
    main = failures.get(0)
    if main is not None and main.exitcode in WORKER_CODES and all(
            f.exitcode in WORKER_CODES or f.exitcode in (-_signal.SIGTERM, -_signal.SIGINT)
            for r, f in failures.items() if r != 0):
        return main.exitcode, "", True
    # A rank that only reacted (our orderly codes, or the agent's SIGTERM/SIGINT) is never the cause.
    # Of the others the earliest (torchrun stamps them to the second) is; within the same second a rank
    # killed by a signal (kill -9, the OOM killer, a segfault) came before one that raised.
    def order(item):
        rank, f = item
        reacted = f.exitcode in WORKER_CODES or f.exitcode in (-_signal.SIGTERM, -_signal.SIGINT)
        return (reacted, int(f.timestamp), 0 if f.exitcode < 0 else 1, rank)

    rank, root = sorted(failures.items(), key=order)[0]
    if root.exitcode < 0:
        how = f"was killed by {_signal_name(-root.exitcode)}"
        if root.exitcode == -_signal.SIGKILL:
            how += " (kill -9, or the kernel's out-of-memory killer)"
    else:
        how = f"exited with code {root.exitcode}"
        err = _error_message(root)
        if err:
            how += f" ({err})"
    others = sorted(r for r in failures if r != rank)
    rest = f"; rank(s) {', '.join(map(str, others))} were stopped" if others else ""
    pid = getattr(root, "pid", None)
    msg = f"rank {rank}{f' (pid {pid})' if pid else ''} {how}{rest}"
    return 1, msg, False


def _error_message(failure) -> str:
    data = getattr(failure, "error_file_data", None)
    m = data.get("message") if isinstance(data, dict) else None
    if isinstance(m, dict):
        m = m.get("message")
    m = str(m or "").strip()
    return "" if m in ("", "<NONE>", "<N/A>") else m[:300]


INJECT_KILL_ENV = "LAB_INJECT_KILL_AT_STEP"
"""Fault injection for tests: ``LAB_INJECT_KILL_AT_STEP=N`` with ``LAB_INJECT_KILL_RANK=R`` makes rank R
SIGKILL itself after step N (a real kill -9, at a step a test can count on)."""


def maybe_kill_self(step: int, rank: int) -> None:
    import os

    at, who = os.environ.get(INJECT_KILL_ENV, ""), os.environ.get("LAB_INJECT_KILL_RANK", "")
    if at.isdigit() and int(at) == step and who.isdigit() and int(who) == rank:
        os.kill(os.getpid(), _signal.SIGKILL)
