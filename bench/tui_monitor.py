#!/usr/bin/env python3
"""How the console keeps up, and what it costs a run: the numbers behind docs/performance.md (Console).

  python3 bench/tui_monitor.py            # everything (~3 min on 2 cores)
  python3 bench/tui_monitor.py --quick    # shorter runs, fewer repeats

1. live: a writer process appends 100 train records a second to a run's
   metrics.jsonl; the console (headless, default 1 s polling) follows it; the
   lag between the newest written step and the displayed step is sampled
   every 0.1 s. Keeping up = the lag stays bounded (about one poll interval)
   instead of growing.
2. big: a finished run with 200,000 metric lines: time from selecting it to
   its first drawn frame, plus the worker's breakdown (read, series, chart).
3. attached: the same tiny CPU training run, alternately headless and with
   the console (a real `python -m lab.tui` in a pseudo-terminal) watching it;
   the ratio of median tokens/s, and the console's CPU use meanwhile.
4. startup: time to the console's first frame in a pseudo-terminal, and
   `lab --help`.
Ratios are against baselines measured in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import math
import os
import pty
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRITER = r"""
import json, sys, time
path, rate, seconds, t0 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
with open(path, "a") as f:
    step = 0
    while True:
        now = time.time()
        due = int((now - t0) * rate)
        if now - t0 > seconds:
            break
        while step < due:
            step += 1
            f.write(json.dumps({"type": "train", "step": step, "tokens": step * 2048, "time": step / rate,
                                "loss": 4.0 + 1.0 / step ** 0.3, "ppl": 50.0, "lr": 1e-3, "grad_norm": 1.0,
                                "tokens_per_s": 2048 * rate, "mfu": 0.3, "wall": now}) + "\n")
        f.flush()
        time.sleep(0.002)
"""


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def fake_run(root: Path, name: str, *, state: str, total: int, records: int = 0, eval_every: int = 100) -> Path:
    """A run directory following docs/run-directory.md with ``records`` train lines already written."""
    from lm.config.loader import dump_experiment
    from lm.config.schema import ExperimentConfig

    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(dump_experiment(ExperimentConfig(name=name.split("-")[0])))
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, records + 1):
            f.write(json.dumps({"type": "train", "step": step, "tokens": step * 2048, "time": step * 0.01,
                                "loss": 4.0 + 1.0 / step ** 0.3 + 0.05 * math.sin(step), "ppl": 50.0, "lr": 1e-3,
                                "grad_norm": 1.0, "tokens_per_s": 204800.0, "mfu": 0.3}) + "\n")
            if step % eval_every == 0:
                f.write(json.dumps({"type": "eval", "step": step, "tokens": step * 2048, "time": step * 0.01,
                                    "val_loss": 4.1 + 1.0 / step ** 0.3, "val_ppl": 60.0, "val_bpb": 1.5}) + "\n")
    (run / "events.jsonl").write_text(json.dumps({"type": "event", "event": "start", "step": 0, "time": 0.0,
                                                  "wall": time.time(), "message": "bench"}) + "\n")
    (run / "status.json").write_text(json.dumps({"state": state, "pid": None, "host": "", "step": records,
                                                 "total_steps": total, "tokens": records * 2048,
                                                 "started": time.time(), "updated": time.time()}))
    return run


# ----------------------------------------------------------------------------- 1. live


def bench_live(seconds: float, rate: float, poll: float) -> dict:
    """Lag (steps and seconds) between the writer's newest step and the monitor's displayed step."""
    from lab.tui.app import LabApp

    tmp = Path(tempfile.mkdtemp(prefix="tui-live-"))
    run = fake_run(tmp / "runs", "live-20250101-000000", state="running", total=10**7)
    app = LabApp(tmp / "runs", cwd=tmp, poll_interval=poll, initial_tab="monitor")
    samples: list[tuple[float, float]] = []  # (seconds since start, lag in steps)
    frames = {}

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#monitor-pane")
            while pane.selected is None:
                await pilot.pause(0.05)
            t0 = time.time() + 0.2
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run / "metrics.jsonl"), str(rate),
                                       str(seconds), repr(t0)])
            start_frames = pane.frames_applied
            while time.time() < t0 + seconds:
                await pilot.pause(0.1)
                now = time.time()
                if now < t0 + 2 * poll:
                    continue  # let the first poll happen
                written = min(int((now - t0) * rate), int(seconds * rate))
                samples.append((now - t0, written - max(pane.displayed_step, 0)))
            writer.wait()
            await pilot.pause(2 * poll + 0.5)
            frames.update(applied=pane.frames_applied - start_frames, final=pane.displayed_step,
                          written=sum(1 for _ in open(run / "metrics.jsonl")))

    asyncio.run(main())
    shutil.rmtree(tmp, ignore_errors=True)
    lags = [lag for _, lag in samples]
    half = len(lags) // 2
    return {"seconds": seconds, "rate": rate, "poll_s": poll, "samples": len(lags),
            "lag_mean_steps": statistics.mean(lags), "lag_p95_steps": sorted(lags)[int(0.95 * (len(lags) - 1))],
            "lag_max_steps": max(lags), "lag_mean_s": statistics.mean(lags) / rate,
            "lag_first_half_s": statistics.mean(lags[:half]) / rate, "lag_second_half_s": statistics.mean(lags[half:]) / rate,
            "frames": frames["applied"], "caught_up": frames["final"] == frames["written"]}


# ----------------------------------------------------------------------------- 2. big


def bench_big(lines: int) -> dict:
    """A finished run of ``lines`` train records: worker breakdown and select-to-frame time in the app."""
    from lab.tui.app import LabApp
    from lab.views.monitor import ChartOptions
    from lab.views.run_tail import RunTail
    from lab.views.charts import render_chart

    tmp = Path(tempfile.mkdtemp(prefix="tui-big-"))
    run = fake_run(tmp / "runs", "big-20250101-000000", state="done", total=lines, records=lines)
    size_mb = (run / "metrics.jsonl").stat().st_size / 1e6
    render_chart([], 10, 5)  # nothing drawn; warms nothing either: plotext imports on the first real chart
    import plotext  # noqa: F401  (import cost is startup's, not this measurement's)

    t = time.perf_counter()
    tail = RunTail(run)
    tail.poll()
    t_read = time.perf_counter() - t
    from lab.views.monitor import FrameBuilder

    t = time.perf_counter()
    curves = FrameBuilder.curves(tail, [], ChartOptions())
    chart = render_chart(curves, 80, 20)
    t_chart = time.perf_counter() - t
    points = max(len(c.xs) for c in curves)
    del chart

    app = LabApp(tmp / "runs", cwd=tmp, poll_interval=5.0, initial_tab="monitor")
    result = {}

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one("#monitor-pane")
            t0 = time.perf_counter()
            while pane.displayed_step != lines:
                await pilot.pause(0.02)
            result["select_to_frame_s"] = time.perf_counter() - t0

    asyncio.run(main())
    shutil.rmtree(tmp, ignore_errors=True)
    return {"lines": lines, "file_mb": size_mb, "read_and_series_s": t_read, "chart_s": t_chart,
            "points_drawn": points, **result}


# ----------------------------------------------------------------------------- pty helpers


def spawn_in_pty(args: list[str], cols: int = 120, rows: int = 40, env: dict | None = None, cwd=None):
    """Start ``args`` on a fresh pseudo-terminal; returns (process, master fd)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env or child_env(), cwd=cwd,
                            start_new_session=True)
    os.close(slave)
    return proc, master


def wait_for_output(master: int, needle: bytes, timeout: float) -> float | None:
    """Seconds until ``needle`` appears in the terminal output (None on timeout); keeps draining."""
    t0 = time.perf_counter()
    seen = b""
    while time.perf_counter() - t0 < timeout:
        r, _, _ = select.select([master], [], [], 0.05)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return None
            seen = (seen + chunk)[-200_000:]
            if needle in seen:
                return time.perf_counter() - t0
    return None


def drain(master: int, stop_at: float) -> None:
    while time.time() < stop_at:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                os.read(master, 65536)
            except OSError:
                return


def stop(proc: subprocess.Popen, master: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    os.close(master)


# ----------------------------------------------------------------------------- 3. attached


def tiny_experiment(tmp: Path, steps: int) -> list[str]:
    """`lab run` arguments for a small CPU run on a generated text (data prepared once, then cached)."""
    import random

    corpus = tmp / "corpus.txt"
    if not corpus.exists():
        rng = random.Random(0)
        words = "the cat sat on a mat and a dog ran far away while birds sang in tall green trees".split()
        corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(14)) for _ in range(6000)))
    sets = [f"data.source={json.dumps(str(corpus))}", "data.max_bytes=0", "tokenizer.vocab_size=512",
            "tokenizer.train_bytes=0", "model.vocab_size=512", "model.context_length=64", "model.d_model=128",
            "model.num_layers=4", "model.num_heads=4", "model.d_ff=384", f"training.steps={steps}",
            "training.batch_size=16", "training.log_every=1", 'training.device="cpu"', "schedule.warmup_steps=5",
            "eval.every=0", "eval.batches=1", "checkpoint.every=0", f"runs_dir={json.dumps(str(tmp / 'runs'))}"]
    return ["experiments/quickstart.toml"] + [x for s in sets for x in ("--set", s)]


def run_once(tmp: Path, steps: int, attach: bool) -> dict:
    """One training run; with ``attach`` the console watches it from a pseudo-terminal."""
    import psutil

    before = set((tmp / "runs").iterdir()) if (tmp / "runs").is_dir() else set()
    console = master = None
    if attach:
        console, master = spawn_in_pty([sys.executable, "-m", "lab.tui", "--runs-dir", str(tmp / "runs")], cwd=ROOT)
        wait_for_output(master, b"Calculator", 30)
    for attempt in range(2):  # a run stopped by someone else's SIGTERM (exit 5) on a shared box: once more
        train = subprocess.run([sys.executable, "-m", "lab", "run", *tiny_experiment(tmp, steps)], cwd=ROOT,
                               env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if train.returncode != 5:
            break
        before = set((tmp / "runs").iterdir())
    cpu = None
    if attach:
        # The console kept drawing while the run trained; its CPU time is what it cost.
        drain(master, time.time() + 0.5)
        t = psutil.Process(console.pid).cpu_times()
        cpu = t.user + t.system
        stop(console, master)
    if train.returncode != 0:
        raise RuntimeError(f"training failed ({train.returncode}): {train.stderr[-2000:]}")
    run = next(iter(set((tmp / "runs").iterdir()) - before))
    recs = [json.loads(line) for line in open(run / "metrics.jsonl")]
    train_recs = [r for r in recs if r.get("type") == "train"]
    tps = [r["tokens_per_s"] for r in train_recs[len(train_recs) // 5:]]  # skip warm-up steps
    wall = train_recs[-1]["time"] - train_recs[len(train_recs) // 5]["time"]
    return {"tokens_per_s": statistics.median(tps), "train_s": wall, "console_cpu_s": cpu}


def bench_attached(steps: int, repeats: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tui-attached-"))
    run_once(tmp, 20, attach=False)  # prepare and cache the data; warm the page cache
    headless, attached, cpu, trained = [], [], [], []
    for _ in range(repeats):  # alternate, so drifting machine load hits both alike
        h = run_once(tmp, steps, attach=False)
        a = run_once(tmp, steps, attach=True)
        headless.append(h["tokens_per_s"])
        attached.append(a["tokens_per_s"])
        cpu.append(a["console_cpu_s"])
        trained.append(a["train_s"])
    shutil.rmtree(tmp, ignore_errors=True)
    h, a = statistics.median(headless), statistics.median(attached)
    return {"steps": steps, "repeats": repeats, "headless_tokens_per_s": h, "attached_tokens_per_s": a,
            "ratio": a / h, "runs_headless": headless, "runs_attached": attached,
            "console_cpu_s_per_run": statistics.median(cpu), "train_s": statistics.median(trained)}


# ----------------------------------------------------------------------------- 4. startup


def bench_startup(repeats: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tui-start-"))
    fake_run(tmp / "runs", "a-20250101-000000", state="done", total=100, records=100)
    def first_frames(runs: Path) -> list[float]:
        out = []
        for _ in range(repeats):
            proc, master = spawn_in_pty([sys.executable, "-m", "lab.tui", "--runs-dir", str(runs)], cwd=ROOT)
            t = wait_for_output(master, b"Calculator", 30)
            stop(proc, master)
            if t is not None:
                out.append(t)
        return out

    frames = first_frames(tmp / "runs")  # runs exist: opens on the Monitor
    frames_config = first_frames(tmp / "empty")  # no runs: opens on the Config tab
    helps = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lab", "--help"], cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                       check=True)
        helps.append(time.perf_counter() - t0)
    bare = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL, check=True)
        bare.append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"first_frame_s": statistics.median(frames), "first_frame_all": frames,
            "first_frame_config_s": statistics.median(frames_config),
            "help_s": statistics.median(helps), "python_startup_s": statistics.median(bare)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs and fewer repeats")
    p.add_argument("--only", choices=("live", "big", "attached", "startup"), action="append",
                   help="run only these parts (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    parts = args.only or ["startup", "live", "big", "attached"]
    out: dict = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
                 "python": sys.version.split()[0]}
    if "startup" in parts:
        s = out["startup"] = bench_startup(3 if args.quick else 5)
        print(f"startup: first frame {s['first_frame_s']:.2f} s on the Monitor (runs "
              f"{', '.join(f'{x:.2f}' for x in s['first_frame_all'])}), {s['first_frame_config_s']:.2f} s on Config; "
              f"lab --help {s['help_s']:.3f} s (bare python {s['python_startup_s']:.3f} s)")
    if "live" in parts:
        s = out["live"] = bench_live(10 if args.quick else 30, 100.0, 1.0)
        print(f"live 100 steps/s, 1 s polling: lag mean {s['lag_mean_s']:.2f} s ({s['lag_mean_steps']:.0f} steps), "
              f"p95 {s['lag_p95_steps']} steps, max {s['lag_max_steps']} steps; first half {s['lag_first_half_s']:.2f} s, "
              f"second half {s['lag_second_half_s']:.2f} s (ratio {s['lag_second_half_s'] / s['lag_first_half_s']:.2f}); "
              f"{s['frames']} frames; caught up at the end: {s['caught_up']}")
    if "big" in parts:
        s = out["big"] = bench_big(200_000)
        print(f"big run {s['lines']:,} lines ({s['file_mb']:.0f} MB): read+series {s['read_and_series_s']:.2f} s, "
              f"chart {s['chart_s']:.3f} s ({s['points_drawn']} points), select-to-frame in the app "
              f"{s['select_to_frame_s']:.2f} s")
    if "attached" in parts:
        s = out["attached"] = bench_attached(100 if args.quick else 200, 1 if args.quick else 2)
        print(f"attached: tokens/s headless {s['headless_tokens_per_s']:,.0f}, with the console "
              f"{s['attached_tokens_per_s']:,.0f}, ratio {s['ratio']:.3f}; console CPU {s['console_cpu_s_per_run']:.2f} s "
              f"over a {s['train_s']:.1f} s run")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
