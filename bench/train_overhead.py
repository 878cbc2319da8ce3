"""What writing metrics costs a training step: the same run with and without train records.

Each trial trains the same model on the same random tokens twice in one
process: once writing train records (metrics.jsonl line, status.json rewrite,
and the one host sync that reads the step window) every ``--log-every`` steps,
once with ``record_train_metrics=False`` (no records and no sync until the
end). Trials alternate A/B and the median of the per-trial ratios is printed;
the target is a ratio under 1.01 at the default log_every (10).

    python3 bench/train_overhead.py                      # CPU, tiny model
    python3 bench/train_overhead.py --preset small --context 512 --batch-size 16 --steps 200 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lm.config.schema import ExperimentConfig, ModelConfig  # noqa: E402
from lm.train import Trainer  # noqa: E402
from lm.train.policy import resolve_policy  # noqa: E402


WRITER_SHARE: list[float] = []  # per run with records: time inside the writer / time of the steps (same clock)


def make_cfg(args, log_every: int) -> ExperimentConfig:
    model = ModelConfig.from_name(args.preset, context_length=args.context)
    cfg = ExperimentConfig(name="overhead", model=model)
    cfg.tokenizer = dataclasses.replace(cfg.tokenizer, vocab_size=model.vocab_size)
    cfg.training = dataclasses.replace(cfg.training, steps=args.steps, batch_size=args.batch_size,
                                       log_every=log_every, device=args.device, compile=args.compile)
    cfg.schedule = dataclasses.replace(cfg.schedule, warmup_steps=min(10, args.steps))
    cfg.eval = dataclasses.replace(cfg.eval, every=0, batches=1)  # only the final one, the same in both arms
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every=0, keep_last=0)
    return cfg


def timed_run(cfg, tokens, record: bool, root: Path, clock) -> float:
    """Seconds from the start event to the last optimizer step's boundary (setup excluded)."""
    marks = {}

    def progress(kind, rec):
        if kind == "event" and rec["event"] == "start":
            marks["start"] = clock()
        if kind == "eval":  # the final eval and checkpoint are identical in both arms: stop the clock before
            marks.setdefault("last_step", clock())

    spent = [0.0]
    log_train = Trainer._log_train

    def timed_log_train(self, *a, **k):  # the writer itself: record building, JSON line, status.json
        t0 = clock()
        log_train(self, *a, **k)
        spent[0] += clock() - t0

    Trainer._log_train = timed_log_train
    run_dir = Path(tempfile.mkdtemp(dir=root))
    trainer = Trainer(cfg, run_dir, train_tokens=tokens[: len(tokens) * 9 // 10], val_tokens=tokens[len(tokens) * 9 // 10:],
                      val_bytes=None, policy=resolve_policy(cfg.training), progress=progress,
                      record_train_metrics=record)
    try:
        code = trainer.run()
    finally:
        Trainer._log_train = log_train
    if code != 0:
        raise SystemExit(f"training exited with {code}")
    shutil.rmtree(run_dir, ignore_errors=True)
    if record:
        WRITER_SHARE.append(spent[0] / (marks["last_step"] - marks["start"]))
    return marks["last_step"] - marks["start"]


def main() -> None:
    try:
        import tomli_w  # noqa: F401
    except ImportError:  # a bare GPU box: the resolved config.toml is irrelevant to this measurement
        Trainer._write_run_files = lambda self: None

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--log-every", type=int, nargs="+", default=[10, 1])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                    help="cpu: this process's CPU time (robust on a shared CPU box); wall: elapsed time "
                         "(needed on a GPU, where a sync costs waiting, not CPU); auto: cpu on the CPU, else wall")
    args = ap.parse_args()

    tokens = np.random.default_rng(0).integers(0, ModelConfig.from_name(args.preset).vocab_size, 2_000_000,
                                               dtype=np.int64).astype(np.uint16)
    root = Path(tempfile.mkdtemp(prefix="lab-overhead-"))
    policy = resolve_policy(make_cfg(args, 10).training)
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and policy.device.type == "cpu")
    clock = time.process_time if use_cpu_clock else time.perf_counter
    print(f"device {policy.device_name} ({policy.dtype}{', compiled' if policy.compile else ''}), torch "
          f"{torch.__version__}, preset {args.preset}, context {args.context}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.trials} trials, {'CPU' if use_cpu_clock else 'wall'} clock")
    try:
        timed_run(make_cfg(args, 10), tokens, True, root, clock)  # warm-up: allocator, compile caches, page cache
        for log_every in args.log_every:
            cfg = make_cfg(args, log_every)
            ratios, with_s, without_s = [], [], []
            WRITER_SHARE.clear()
            for trial in range(args.trials):
                order = (True, False) if trial % 2 == 0 else (False, True)
                t = {rec: timed_run(cfg, tokens, rec, root, clock) for rec in order}
                with_s.append(t[True])
                without_s.append(t[False])
                ratios.append(t[True] / t[False])
            ms = 1000 / args.steps
            print(f"log_every={log_every:<3} step with metrics {statistics.median(with_s) * ms:8.3f} ms, "
                  f"without {statistics.median(without_s) * ms:8.3f} ms, ratio with/without median "
                  f"{statistics.median(ratios):.4f} (trials: {', '.join(f'{r:.3f}' for r in ratios)}); "
                  f"time inside the writer {100 * statistics.median(WRITER_SHARE):.3f}% of the steps' time (median)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
