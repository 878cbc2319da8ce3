"""Range and cross-field rules of an experiment, beyond what each field's type says.

Each rule names every key it involves, so the loader can place the problem at
the line that set one of them and skip it when one of them already failed its
type check (no spurious follow-up errors). Torch-free.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from lm.config.schema import ExperimentConfig

# Datasets the data layer knows by name; any other data.source is a path.
NAMED_DATASETS = ("builtin", "tinystories", "owt", "tinyshakespeare")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy seeding (the trainer seeds np.random) takes 0..2**32 - 1."""


def check_rules(cfg: ExperimentConfig, ck, base_dir: Path | None) -> None:
    """Cross-field and range rules; each names the keys involved so it is placed and skipped right.

    ``ck`` is the loader's problem collector: ``ck.need(ok, message, *keys)``
    records ``message`` unless ``ok`` or one of ``keys`` already failed its type
    check, ``ck.add`` records unconditionally, ``ck.bad`` is the set of failed keys.
    Paths are checked against ``base_dir``; None skips the existence checks."""
    need = ck.need
    need(bool(_NAME_RE.fullmatch(cfg.name)), f"name must start with a letter or digit and use only letters, "
         f"digits and . _ - + = (it names run directories), got {cfg.name!r}", "name")
    need(bool(cfg.runs_dir.strip()), "runs_dir must not be empty", "runs_dir")

    d = cfg.data
    need(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}", "data.val_fraction")
    need(d.max_bytes >= 0, f"data.max_bytes must be >= 0 (0 = all), got {d.max_bytes}", "data.max_bytes")
    for key, src in (("data.source", d.source), ("data.val_source", d.val_source)):
        if key in ck.bad or (key == "data.val_source" and not src):
            continue
        if not src:
            ck.add(f"{key} must not be empty: give a file, a directory, 'builtin' or one of "
                   f"{', '.join(repr(n) for n in NAMED_DATASETS[1:])}", key)
        elif src not in NAMED_DATASETS and base_dir and not resolve_path(src, base_dir).exists():
            hint = _did_you_mean(src, NAMED_DATASETS)
            ck.add(f"{key}: no such file or directory {src!r} (relative to {base_dir}); a source is a text file, "
                   f"a directory of .txt files, or one of {', '.join(repr(n) for n in NAMED_DATASETS)}{hint}", key)

    t = cfg.tokenizer
    if t.path:
        need(base_dir is None or resolve_path(t.path, base_dir).exists(), f"tokenizer.path: no such tokenizer directory {t.path!r} "
             f"(relative to {base_dir}); leave it empty to train one on the corpus", "tokenizer.path")
    else:
        lo = 256 + len(t.special_tokens)
        need(t.vocab_size >= lo, f"tokenizer.vocab_size must be at least 256 bytes + {len(t.special_tokens)} "
             f"special tokens = {lo}, got {t.vocab_size}", "tokenizer.vocab_size", "tokenizer.special_tokens")
        need(cfg.model.vocab_size >= t.vocab_size, f"model.vocab_size ({cfg.model.vocab_size}) must be at least "
             f"tokenizer.vocab_size ({t.vocab_size}); leave model.vocab_size out to use the tokenizer's",
             "model.vocab_size", "tokenizer.vocab_size")
    need(all(t.special_tokens) and len(set(t.special_tokens)) == len(t.special_tokens),
         f"tokenizer.special_tokens must be distinct non-empty strings, got {t.special_tokens}",
         "tokenizer.special_tokens")
    need(t.train_bytes >= 0, f"tokenizer.train_bytes must be >= 0 (0 = all), got {t.train_bytes}",
         "tokenizer.train_bytes")

    for problem in cfg.model.problems():
        keys = list(dict.fromkeys(re.findall(r"\bmodel\.\w+", problem)))
        need(False, problem, *keys)

    o = cfg.optimizer
    need(o.lr > 0, f"optimizer.lr must be positive, got {o.lr}", "optimizer.lr")
    need(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas),
         f"optimizer.betas must be two numbers in [0, 1), like [0.9, 0.95], got {o.betas}", "optimizer.betas")
    need(o.eps > 0, f"optimizer.eps must be positive, got {o.eps}", "optimizer.eps")
    need(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {o.weight_decay}", "optimizer.weight_decay")
    need(o.grad_clip >= 0, f"optimizer.grad_clip must be >= 0 (0 = off), got {o.grad_clip}", "optimizer.grad_clip")
    for key in ("muon_lr", "embed_lr", "head_lr", "scalar_lr"):
        need(getattr(o, key) > 0, f"optimizer.{key} must be positive, got {getattr(o, key)}", f"optimizer.{key}")
    need(0.0 <= o.muon_momentum < 1.0, f"optimizer.muon_momentum must be in [0, 1), got {o.muon_momentum}",
         "optimizer.muon_momentum")
    need(1 <= o.muon_ns_steps <= 20, f"optimizer.muon_ns_steps must be in 1..20 (5 is the published value), "
         f"got {o.muon_ns_steps}", "optimizer.muon_ns_steps")
    need(o.muon_weight_decay >= 0, f"optimizer.muon_weight_decay must be >= 0, got {o.muon_weight_decay}",
         "optimizer.muon_weight_decay")

    s, tr = cfg.schedule, cfg.training
    need(s.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}", "schedule.warmup_steps")
    # warmup_steps > training.steps is not an error: a smoke run (--set training.steps=20) of an
    # experiment with a long warmup trains with the warmup shortened (fit_warmup), and says so.
    need(s.cosine_steps == 0 or s.cosine_steps >= s.warmup_steps, f"schedule.cosine_steps ({s.cosine_steps}) must be "
         f"0 (= training.steps) or at least schedule.warmup_steps ({s.warmup_steps})",
         "schedule.cosine_steps", "schedule.warmup_steps")
    need(s.cosine_steps >= 0, f"schedule.cosine_steps must be >= 0, got {s.cosine_steps}", "schedule.cosine_steps")
    need(0.0 <= s.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}",
         "schedule.min_lr_ratio")

    for key in ("steps", "batch_size", "grad_accum", "log_every"):
        need(getattr(tr, key) >= 1, f"training.{key} must be at least 1, got {getattr(tr, key)}", f"training.{key}")
    need(0 <= tr.seed <= MAX_SEED, f"training.seed must be in 0..{MAX_SEED} (2**32 - 1, what numpy's generators "
         f"take), got {tr.seed}", "training.seed")
    need(bool(_DEVICE_RE.fullmatch(tr.device)), f"training.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or "
         f"'mps', got {tr.device!r}", "training.device")
    need(tr.max_time >= 0, f"training.max_time must be >= 0 (0 = no limit), got {tr.max_time}", "training.max_time")
    need(tr.threads >= 0, f"training.threads must be >= 0 (0 = cores - 1), got {tr.threads}", "training.threads")

    e, c = cfg.eval, cfg.checkpoint
    need(e.every >= 0, f"eval.every must be >= 0 (0 = only at the end), got {e.every}", "eval.every")
    need(e.batches >= 1, f"eval.batches must be at least 1, got {e.batches}", "eval.batches")
    need(e.batch_size >= 0, f"eval.batch_size must be >= 0 (0 = training.batch_size), got {e.batch_size}",
         "eval.batch_size")
    need(c.every >= 0, f"checkpoint.every must be >= 0 (0 = only at the end), got {c.every}", "checkpoint.every")
    need(c.keep_last >= 0, f"checkpoint.keep_last must be >= 0, got {c.keep_last}", "checkpoint.keep_last")


def resolve_path(p: str, base_dir: Path) -> Path:
    """``p`` with ``~`` expanded, relative to ``base_dir`` unless absolute."""
    path = Path(p).expanduser()
    return path if path.is_absolute() else base_dir / path


def _did_you_mean(value: str, candidates) -> str:
    close = difflib.get_close_matches(value, list(candidates), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def fit_warmup(cfg: ExperimentConfig) -> tuple[ExperimentConfig, str]:
    """``cfg`` with a warmup that fits in the run, and a one-line warning when it had to be shortened.

    A warmup longer than training.steps would end the run before the learning
    rate reached optimizer.lr: it is cut to a tenth of the run (the usual warmup
    fraction), and the cosine (if set shorter than the run) follows it.
    """
    import dataclasses

    s, steps = cfg.schedule, cfg.training.steps
    if s.warmup_steps <= steps:
        return cfg, ""
    warmup = steps // 10
    cosine = s.cosine_steps if s.cosine_steps == 0 or s.cosine_steps >= warmup else 0
    fitted = dataclasses.replace(cfg, schedule=dataclasses.replace(s, warmup_steps=warmup, cosine_steps=cosine))
    return fitted, (f"warning: schedule.warmup_steps ({s.warmup_steps}) is longer than training.steps ({steps}); "
                    f"the warmup is shortened to {warmup} steps for this run")
