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
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        # fields[0] is field 3 (state) of proc(5); starttime is field 22.
        return f"{_boot_id()}:{fields[19].decode()}" if len(fields) > 19 else None
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


def process_age() -> float | None:
    """Seconds since this process started (Linux: from /proc; elsewhere None)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": field 3 onwards
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start, in ticks since boot
    except (OSError, ValueError, IndexError):
        return None


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
