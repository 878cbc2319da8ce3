"""Who wrote a file: a process identity that survives pid reuse.

A pid alone is not an identity: after a reboot (or enough processes) the pid
of a dead run belongs to something else, and "is pid N alive?" says yes. A
process is identified by (host, pid, start), where ``start`` is when the
process started (on Linux the boot id plus the start time in clock ticks from
``/proc/<pid>/stat``; elsewhere ``ps -o lstart=``). :func:`process_state`
compares a recorded identity with what runs now.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

ALIVE, DEAD, OTHER_HOST, REUSED = "alive", "dead", "other-host", "reused"


def this_host() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string (None if there is no such process or it is unknown)."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        ticks = _start_ticks(pid)
        return f"{_boot_id()}:{ticks}" if ticks is not None else None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    try:  # Linux: a killed child not yet reaped is a zombie, not a live process
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _start_ticks(pid: int | str) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_age() -> float | None:
    """Seconds since this process started (Linux: from /proc; elsewhere None)."""
    ticks = _start_ticks("self")
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK")) if ticks is not None else None


def identity() -> dict:
    """This process: {"pid", "host", "pid_start"} (the keys status.json and temp-folder markers record)."""
    pid = os.getpid()
    return {"pid": pid, "host": this_host(), "pid_start": process_start(pid)}


def process_state(pid, host: str | None = None, start: str | None = None) -> str:
    """What the recorded process is now: ALIVE, DEAD, OTHER_HOST (cannot tell from here) or REUSED
    (the pid is alive but started at another time: a different process)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return DEAD
    if host and host != this_host():
        return OTHER_HOST
    if not _exists(pid):
        return DEAD
    if start:
        now = process_start(pid)
        if now is not None and now != start:
            return REUSED
    return ALIVE
