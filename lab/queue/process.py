"""Starting, signalling and reaping ``lab run`` processes on behalf of the queue.

The queue never trains in its own process: each entry is a separate
``python -m lab run`` whose stdout/stderr go to the run's ``train.log``. The
command can be replaced (``LAB_QUEUE_RUN_COMMAND``, split like a shell line)
so the queue logic can be exercised with a stand-in that follows the same
run-directory contract.
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


def spawn(args: list[str], *, cwd: str, log_path: Path, gpu: str | None, extra_env: dict[str, str]) -> subprocess.Popen:
    """Start a run process in its own session with output appended to ``log_path``.

    Its own session keeps a Ctrl-C at the runner's terminal from reaching the
    run directly: the runner forwards one SIGTERM, so the run checkpoints once.
    """
    env = dict(os.environ)
    env.update(extra_env)
    env["PYTHONUNBUFFERED"] = "1"
    # `python -m lab` must find this package when it runs from a source checkout that is not
    # pip-installed and the run starts in another directory.
    project_root = Path(__file__).resolve().parents[2]
    if (project_root / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root), env.get("PYTHONPATH", "")) if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== lab queue {stamp}: {shlex.join(args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid()) if sys.platform.startswith("linux") else None,
        )


def process_cmdline(pid: int) -> str:
    """The command line of a live process on this host ('' if unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    if shutil.which("ps"):
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
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
