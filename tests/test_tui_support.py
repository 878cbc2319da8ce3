"""Fixed fake run directories for the console's tests (and a check that they keep the contract).

:func:`make_run` writes a run directory the way docs/run-directory.md says a
run does (config.toml, status.json, metrics.jsonl, events.jsonl), with
deterministic numbers and no wall clock, so snapshot tests of the monitor are
stable. :func:`tiny_overrides` are the ``--set`` items of a CPU run that
trains in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

STARTED = 1_700_000_000.0  # a fixed "started" time: list order is stable, nothing shows a clock


def loss_at(step: int, floor: float = 2.0, start: float = 6.0, scale: float = 300.0) -> float:
    """A smooth, deterministic falling loss curve with a little wiggle."""
    return floor + (start - floor) * math.exp(-step / scale) + 0.05 * math.sin(step / 7.0)


def make_run(root: Path, name: str, *, state: str = "done", steps: int = 600, total: int = 600,
             log_every: int = 10, eval_every: int = 100, started_offset: float = 0.0, lr: float = 3e-3,
             floor: float = 2.0, checkpoints: bool = False, pid: int | None = None) -> Path:
    """Write a complete fake run directory ``root/name``; returns it."""
    from lm.config.loader import dump_experiment
    from lm.config.schema import ExperimentConfig, ModelConfig, OptimizerConfig, TokenizerConfig, TrainingConfig

    run = root / name
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    cfg = ExperimentConfig(name=name.split("-")[0], model=ModelConfig.from_name("tiny"),
                           tokenizer=TokenizerConfig(vocab_size=512),
                           optimizer=OptimizerConfig(lr=lr), training=TrainingConfig(steps=total, device="cpu"))
    (run / "config.toml").write_text(dump_experiment(cfg))
    tokens_per_step = 2048
    metrics, events = [], [{"type": "event", "event": "start", "step": 0, "time": 0.0, "wall": STARTED,
                            "message": "training 0.63M parameters on cpu (fp32)"}]
    best = None
    for step in range(log_every, steps + 1, log_every):
        loss = loss_at(step, floor)
        t = step * 0.05
        metrics.append({"type": "train", "step": step, "tokens": step * tokens_per_step, "time": t, "loss": loss,
                        "ppl": math.exp(loss), "lr": lr * min(1.0, step / 50), "grad_norm": 1.0 + 0.3 * math.cos(step),
                        "tokens_per_s": 40000.0 + 100 * math.sin(step), "mfu": 0.1, "mfu_estimated": True,
                        "peak_mem": 1 << 28})
        if step % eval_every == 0:
            val = loss + 0.1
            best = val if best is None else min(best, val)
            metrics.append({"type": "eval", "step": step, "tokens": step * tokens_per_step, "time": t,
                            "val_loss": val, "val_ppl": math.exp(val), "val_bpb": val / math.log(2) / 3})
            events.append({"type": "event", "event": "eval", "step": step, "time": t, "wall": STARTED + t,
                           "message": f"val_loss {val:.4f}"})
    if checkpoints:
        events.append({"type": "event", "event": "checkpoint", "step": steps, "time": steps * 0.05,
                       "wall": STARTED + steps * 0.05, "message": "checkpoints/latest.pt"})
    if state in ("done", "stopped"):
        events.append({"type": "event", "event": "finish" if state == "done" else "stop", "step": steps,
                       "time": steps * 0.05, "wall": STARTED + steps * 0.05,
                       "message": "finished" if state == "done" else "stopped by SIGTERM"})
    with open(run / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)
    with open(run / "events.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
    status = {"state": state, "pid": pid, "host": "", "step": steps, "total_steps": total,
              "tokens": steps * tokens_per_step, "started": STARTED + started_offset,
              "updated": STARTED + started_offset + steps * 0.05, "best_val_loss": best,
              "best_val_bpb": None if best is None else best / math.log(2) / 3, "last_val_loss": best,
              "exit_code": {"done": 0, "stopped": 5, "failed": 1, "diverged": 4}.get(state), "message": ""}
    (run / "status.json").write_text(json.dumps(status))
    return run


def make_runs_dir(root: Path) -> Path:
    """A runs folder with one run of each common state, fixed names and numbers."""
    runs = root / "runs"
    make_run(runs, "baseline-20250101-120000", state="done", started_offset=0)
    make_run(runs, "post_norm-20250101-130000", state="stopped", steps=350, total=600, started_offset=3600,
             floor=2.3)
    make_run(runs, "lr_1e-2-20250101-140000", state="running", steps=220, total=600, started_offset=7200,
             floor=2.6, lr=1e-2)
    make_run(runs, "nope-20250101-150000", state="failed", steps=40, total=600, started_offset=10800)
    return runs


def tiny_corpus(path: Path) -> Path:
    """A small deterministic English-like text file (a few hundred KB is plenty for a tiny model)."""
    import random

    rng = random.Random(0)
    words = ("the cat sat on a mat and the dog ran far away while birds sang in tall trees under a blue "
             "sky one day a small boy found a red ball near the old house").split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(2500)]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_overrides(corpus: Path, steps: int = 30, checkpoint_every: int = 10) -> list[str]:
    """--set items for a CPU run of a tiny model that trains in seconds."""
    return [f"data.source={json.dumps(str(corpus))}", "data.max_bytes=0", "data.val_fraction=0.1",
            "tokenizer.vocab_size=300", "tokenizer.train_bytes=0", 'model.preset="tiny"',
            "model.vocab_size=300", "model.context_length=16", "model.d_model=32", "model.num_heads=2",
            "model.num_layers=1", "model.d_ff=64", f"training.steps={steps}", "training.batch_size=4",
            "training.log_every=1", 'training.device="cpu"', "schedule.warmup_steps=2", "eval.every=10",
            "eval.batches=1", f"checkpoint.every={checkpoint_every}", "checkpoint.keep_last=1"]


async def wait_for(pilot, condition, timeout: float = 10.0, step: float = 0.05, what: str = "") -> None:
    """Let the app run until ``condition()`` holds (AssertionError after ``timeout`` seconds).

    Fixed pauses are flaky on a loaded machine; this waits exactly as long as needed.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # a widget not mounted yet, a file half-written: keep waiting
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        await pilot.pause(step)


def text_of(widget) -> str:
    """The plain text a Static (or Label) shows."""
    content = widget.content
    return content.plain if hasattr(content, "plain") else str(content)


def test_fake_runs_read_back_through_the_run_directory_readers(tmp_path):
    """The fake runs follow the contract: lm.runs lists and reads them like real ones."""
    from lm.runs import RunDir, list_runs

    runs = make_runs_dir(tmp_path)
    listed = list_runs(runs)
    assert [r.name for r in listed] == ["nope-20250101-150000", "lr_1e-2-20250101-140000",
                                        "post_norm-20250101-130000", "baseline-20250101-120000"]
    base = RunDir(runs / "baseline-20250101-120000")
    assert base.config().model.d_model == 64
    train = base.metrics("train")
    assert len(train) == 60 and train[-1]["step"] == 600
    assert min(r["val_loss"] for r in base.metrics("eval")) == base.status().best_val_loss
