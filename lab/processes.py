"""The processes lab starts, signals and reaps: runs, queue runners and sweeps (one module for the queue
and the console).

Nothing trains in the process that starts it: a run is a separate ``python -m
lab run`` in its own session, its stdout/stderr appended to the run's
``train.log`` (:func:`spawn`), with this checkout importable and unbuffered
output (:func:`child_env`). A process is only ever signalled after its command
line (:func:`process_cmdline`) shows it is still the one that was started. The
queue's run command can be replaced (``LAB_QUEUE_RUN_COMMAND``, split like a
shell line) so the queue logic can be exercised with a stand-in that follows
the same run-directory contract.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN_COMMAND_ENV = "LAB_QUEUE_RUN_COMMAND"
_PR_SET_PDEATHSIG = 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def lab_command() -> list[str]:
    """How to start ``lab`` as a child process (this interpreter, this checkout)."""
    return [sys.executable, "-m", "lab"]


def child_env(extra: dict[str, str] | None = None, gpu: str | None = None) -> dict[str, str]:
    """The environment of a child: unbuffered output, this checkout importable when it is a source
    checkout (``python -m lab`` must find it from any directory), ``CUDA_VISIBLE_DEVICES`` if ``gpu``."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def lower_thread_priority(niceness: int = 10) -> None:
    """Make the calling thread (a console worker) yield to training processes when CPUs are busy.

    On Linux the nice value is per thread, so only this worker is lowered: the
    UI thread, and the runs it starts (children inherit the forking thread's
    value), keep normal priority. Elsewhere this does nothing.
    """
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except (AttributeError, OSError):
        pass


def run_command() -> list[str]:
    """The command that starts a run (``lab run`` unless overridden by the environment)."""
    custom = os.environ.get(RUN_COMMAND_ENV, "").strip()
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", "lab", "run"]


def start_args(experiment: str, overrides: list[str], run_dir: str, resume: bool) -> list[str]:
    """Arguments after the run command: a fresh start or a resume of ``run_dir``."""
    if resume:
        return ["--resume", run_dir]
    args = [experiment]
    for o in overrides:
        args += ["--set", o]
    return args + ["--run-dir", run_dir]


def _child_setup(parent_pid: int):
    """Runs in the child before exec: get SIGTERM when the runner dies (Linux).

    So a runner killed with ``kill -9`` does not leave its runs training with
    nobody watching: they checkpoint and exit 5, and the next runner resumes
    them. On systems without prctl the orphan keeps running until the next
    runner finds and stops it (:func:`stop_orphan`).
    """
    def setup():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def spawn(args: list[str], *, cwd: str | os.PathLike, log_path: Path, gpu: str | None = None,
          extra_env: dict[str, str] | None = None, who: str = "lab queue",
          die_with_parent: bool = True) -> subprocess.Popen:
    """Start a process in its own session with output appended to ``log_path`` (after a line saying
    who started what, when).

    Its own session keeps a Ctrl-C at the starter's terminal from reaching it
    directly (the queue forwards one SIGTERM, so a run checkpoints once) and
    lets it outlive the console. ``die_with_parent``: on Linux it gets SIGTERM
    when the starter dies (the queue: runs never train unwatched); the
    console's runs are meant to outlive it, so it passes False.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {who} {stamp}: {shlex.join(args)}\n".encode())
        log.flush()
        setup = _child_setup(os.getpid()) if die_with_parent and sys.platform.startswith("linux") else None
        return subprocess.Popen(
            args, cwd=cwd, env=child_env(extra_env, gpu), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=setup,
        )


def process_cmdline(pid: int) -> str:
    """The command line of a live process on this host ('' if unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    if shutil.which("ps"):
        try:
            out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True,
                                 timeout=5)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()
    return ""


def stop_orphan(pid: int | None, run_dir: str | None, timeout: float = 300.0) -> bool:
    """Stop a run process left behind by a dead runner, and wait for it to exit.

    Only a process whose command line names ``run_dir`` is signalled, so a
    recycled pid is never touched. SIGTERM lets it write a checkpoint first;
    if it is still alive after ``timeout`` seconds it is killed. Returns
    whether a process was found.
    """
    from lab.queue.store import pid_alive

    if not pid or not run_dir or not pid_alive(pid) or run_dir not in process_cmdline(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def detect_gpus() -> list[str]:
    """GPU ids to spread workers over: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists.

    No torch import: the runner must not create a CUDA context of its own.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    return []
