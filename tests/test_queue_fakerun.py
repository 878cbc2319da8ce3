"""A stand-in for ``lab run`` that follows docs/run-directory.md, for fast queue and sweep tests.

Run as a script (``python tests/test_queue_fakerun.py EXP --set k=v --run-dir DIR``
or ``--resume DIR``), it "trains" without torch: a loss curve determined by the
learning rate (best near 3e-3; lr >= 1 climbs after warmup and turns non-finite),
one step every ``FAKE_STEP_SECONDS``. It writes status.json, metrics.jsonl,
events.jsonl and checkpoints/latest.pt (JSON) like the real engine, checkpoints
and exits 5 on SIGTERM, exits 4 on a non-finite loss, and resumes from
latest.pt. The tests in this file check that the stand-in itself keeps the
contract, so queue tests built on it test the queue, not the stand-in.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib

import tomli_w
from pathlib import Path

SCRIPT = Path(__file__).resolve()
STEP_SECONDS = float(os.environ.get("FAKE_STEP_SECONDS", "0.05"))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load(exp: str, overrides: list[str]) -> dict:
    cfg = tomllib.loads(Path(exp).read_text())
    for o in overrides:
        key, value = o.split("=", 1)
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def fake_loss(lr: float, step: int, steps: int, warmup: int) -> float:
    """Loss of the stand-in: decays to a floor set by |log10(lr / 3e-3)|; lr >= 1 explodes after warmup."""
    start = 6.0
    if lr >= 1.0 and step > warmup:
        return start + 2.0 ** (step - warmup) if step - warmup < 12 else math.inf
    floor = 2.0 + abs(math.log10(lr / 3e-3))
    return floor + (start - floor) * math.exp(-5.0 * step / max(steps, 1))


def main(argv: list[str]) -> int:
    if argv[0] == "--resume":
        run_dir = Path(argv[1])
        cfg = json.loads((run_dir / "config.json").read_text())
        ckpt = json.loads((run_dir / "checkpoints" / "latest.pt").read_text())
        step, elapsed = ckpt["step"], ckpt["time"]
        best = ckpt["best"]
        resumed = True
    else:
        exp, rest = argv[0], argv[1:]
        overrides, run_dir, gpus = [], None, None
        while rest:
            flag, value, rest = rest[0], rest[1], rest[2:]
            if flag == "--set":
                overrides.append(value)
            elif flag == "--run-dir":
                run_dir = Path(value)
            elif flag == "--gpus":
                gpus = int(value)
        cfg = _load(exp, overrides)
        if "bad" in cfg.get("training", {}):
            print("config error: unknown key 'training.bad'", file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        cfg["gpus"] = gpus
        (run_dir / "config.json").write_text(json.dumps(cfg))
        (run_dir / "config.toml").write_text(tomli_w.dumps({k: v for k, v in cfg.items() if v is not None}))
        step, elapsed, best, resumed = 0, 0.0, None, False
    tr = cfg.get("training", {})
    steps, log_every = tr.get("steps", 20), tr.get("log_every", 1)
    eval_every = cfg.get("eval", {}).get("every", 5)
    ckpt_every = cfg.get("checkpoint", {}).get("every", 5)
    lr = cfg.get("optimizer", {}).get("lr", 1e-3)
    warmup = cfg.get("schedule", {}).get("warmup_steps", 2)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    metrics = open(run_dir / "metrics.jsonl", "a")
    events = open(run_dir / "events.jsonl", "a")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    started = time.time()
    status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "step": step,
              "total_steps": steps, "tokens": step * 64, "started": started, "updated": started,
              "best_val_loss": best, "best_val_bpb": None, "last_val_loss": None, "exit_code": None, "message": ""}

    def event(name: str, message: str = "") -> None:
        events.write(json.dumps({"type": "event", "event": name, "step": step, "time": elapsed,
                                 "wall": time.time(), "message": message}) + "\n")
        events.flush()

    def checkpoint() -> None:
        _atomic_write(run_dir / "checkpoints" / "latest.pt", json.dumps({"step": step, "time": elapsed, "best": best}))
        event("checkpoint", "checkpoints/latest.pt")

    def finish(state: str, code: int, message: str = "") -> int:
        status.update(state=state, step=step, exit_code=code, message=message, updated=time.time(), best_val_loss=best)
        _atomic_write(run_dir / "status.json", json.dumps(status))
        return code

    event("resume" if resumed else "start", f"step {step}")
    _atomic_write(run_dir / "status.json", json.dumps(status))
    t0 = time.monotonic()
    while step < steps:
        if stop:
            checkpoint()
            event("stop", "SIGTERM")
            return finish("stopped", 5, "stopped by SIGTERM")
        time.sleep(STEP_SECONDS)
        step += 1
        elapsed += time.monotonic() - t0
        t0 = time.monotonic()
        loss = fake_loss(lr, step, steps, warmup)
        if not math.isfinite(loss):
            event("halt", f"non-finite loss at step {step}")
            return finish("diverged", 4, f"loss is {loss} at step {step}")
        if step % log_every == 0:
            metrics.write(json.dumps({"type": "train", "step": step, "tokens": step * 64, "time": elapsed,
                                      "loss": loss, "lr": lr, "grad_norm": 1.0, "tokens_per_s": 1000.0}) + "\n")
            metrics.flush()
        if step % eval_every == 0 or step == steps:
            val = loss + 0.05
            best = val if best is None else min(best, val)
            metrics.write(json.dumps({"type": "eval", "step": step, "tokens": step * 64, "time": elapsed,
                                      "val_loss": val, "val_ppl": math.exp(min(val, 50)), "val_bpb": val / 2}) + "\n")
            metrics.flush()
            event("eval", f"val_loss {val:.4f}")
        if step % ckpt_every == 0:
            checkpoint()
        status.update(step=step, tokens=step * 64, updated=time.time(), best_val_loss=best)
        _atomic_write(run_dir / "status.json", json.dumps(status))
    checkpoint()
    event("finish")
    return finish("done", 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---- the stand-in keeps the contract ------------------------------------------------------------


def _exp(tmp_path: Path, steps: int = 10) -> Path:
    p = tmp_path / "e.toml"
    p.write_text(f'name = "e"\n[training]\nsteps = {steps}\n[eval]\nevery = 5\n[checkpoint]\nevery = 5\n')
    return p


def test_fake_run_finishes_and_resumes_after_sigterm(tmp_path):
    env = dict(os.environ, FAKE_STEP_SECONDS="0.05")
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(_exp(tmp_path, 40)), "--run-dir", str(run_dir)], env=env)
    while not (run_dir / "checkpoints" / "latest.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 5
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    stopped_at = json.loads((run_dir / "checkpoints" / "latest.pt").read_text())["step"]
    assert 5 <= stopped_at < 40
    assert subprocess.run([sys.executable, str(SCRIPT), "--resume", str(run_dir)], env=env).returncode == 0
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert steps == list(range(1, 41))  # no step repeated or skipped across the resume
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and "resume" in events and events[-1] == "finish"


def test_fake_run_diverges_with_exit_4_at_huge_lr(tmp_path):
    env = dict(os.environ, FAKE_STEP_SECONDS="0")
    code = subprocess.run([sys.executable, str(SCRIPT), str(_exp(tmp_path, 40)), "--set", "optimizer.lr=10.0",
                           "--run-dir", str(tmp_path / "r")], env=env).returncode
    assert code == 4
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "diverged"
