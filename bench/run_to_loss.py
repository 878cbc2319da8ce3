"""Wall-clock time of the real `lab run` to a validation loss, from the moment the process starts.

Runs ``python -m lab run EXPERIMENT`` as a user would, twice by default: first
with an empty compile cache (cold: Inductor and Triton compile everything, the
token file is written), then again with the cache the first run left (warm).
From the run directory's events.jsonl it prints, per run, the seconds after the
process started at which: training started (imports, data, model, optimizer
done), the first validation loss at or under ``--target`` was recorded, and
the process exited; the best validation loss; and the trainer's own tokens/s
and MFU (from metrics.jsonl, compile step excluded).

    python bench/run_to_loss.py experiments/tinyshakespeare.toml --target 1.4651
    python bench/run_to_loss.py experiments/tinyshakespeare.toml --runs cold --set data.source=PATH
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a crash
    return out


def one_run(experiment: str, sets: list[str], runs_dir: Path, cache: Path, label: str, target: float) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    run_dir = runs_dir / label
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run, never a resumed one
    cmd = [sys.executable, "-m", "lab", "run", experiment, "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    t_exit = time.time() - t0
    out = {"run": label, "exit_code": proc.returncode, "exit_s": t_exit,
           "eta_lines": [ln for ln in proc.stdout.splitlines() if "eta" in ln.lower()][:3]}
    if proc.returncode != 0:
        out["error"] = (proc.stderr + proc.stdout)[-2000:]
        return out
    events = read_jsonl(run_dir / "events.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    start = next((e for e in events if e["event"] == "start"), None)
    if start:
        out["train_start_s"] = start["wall"] - t0
    evals = [e for e in metrics if e.get("type") == "eval"]
    eval_events = [e for e in events if e["event"] == "eval"]
    if evals:
        out["best_val"] = min(e["val_loss"] for e in evals)
    for m, e in zip(evals, eval_events):
        if m["val_loss"] <= target:
            out["target_step"] = m["step"]
            out["target_s"] = e["wall"] - t0
            out["target_train_clock_s"] = m["time"]
            break
    train = [m for m in metrics if m.get("type") == "train"]
    if train:
        first = train[0]
        out["first_record_step"] = first["step"]
        out["first_record_s"] = (start["wall"] - t0 + first["time"]) if start and "time" in first else None
        late = train[len(train) // 2:]
        for key in ("tokens_per_s", "mfu", "grad_norm"):
            vals = [m[key] for m in late if m.get(key) is not None]
            if vals:
                out[key] = sum(vals) / len(vals)
        out["last_loss"] = train[-1].get("loss")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--target", type=float, default=1.4651, help="validation loss to reach (nats per token)")
    ap.add_argument("--runs", default="cold,warm", help="cold, warm or both (cold first: warm reuses its cache)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    ap.add_argument("--workdir", help="where run directories and the compile cache go (default: a temp folder)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lab-run-to-loss-"))
    cache = work / "inductor-cache"
    results = []
    for label in args.runs.split(","):
        r = one_run(args.experiment, args.sets, work / "runs", cache, label, args.target)
        results.append(r)
        if "error" in r:
            print(f"{label}: exit {r['exit_code']} after {r['exit_s']:.1f} s\n{r['error']}", flush=True)
            continue
        reached = (f"val <= {args.target} at step {r['target_step']}, {r['target_s']:.1f} s after the process started "
                   f"({r['target_train_clock_s']:.1f} s of training clock)" if "target_step" in r
                   else f"val never <= {args.target}")
        extra = ", ".join(f"{k} {r[k]:.4g}" for k in ("tokens_per_s", "mfu", "grad_norm", "last_loss") if k in r)
        print(f"{label}: training started {r.get('train_start_s', float('nan')):.1f} s after launch; {reached}; "
              f"best val {r.get('best_val', float('nan')):.4f}; exited at {r['exit_s']:.1f} s; {extra}", flush=True)
        for line in r["eta_lines"]:
            print(f"    {line.strip()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
