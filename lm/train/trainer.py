"""The training engine: one object that trains one experiment into one run directory.

Data comes in as token arrays (and optionally a batch sampler), so the same
trainer runs on a memmapped corpus, a synthetic array in a test, or a
benchmark's random tokens. :func:`lm.train.experiment.run_experiment` wires
it to data preparation for ``lab run``, the queue and the console.

What a run guarantees:

- Resume is exact: a checkpoint holds the model, the optimizer, the step
  (hence the schedule position), every RNG state and the sampler's state, so
  N steps + kill + resume + N steps equals 2N steps bit for bit on the CPU.
- Nothing non-finite is ever checkpointed: each step's loss and gradient norm
  go into a device buffer that is checked before every log line, evaluation
  and checkpoint. A NaN or inf halts the run (exit 4, state ``diverged``) with
  a ``halt`` event naming the step; the last good checkpoint stays as it was.
- SIGINT/SIGTERM checkpoint at the next step boundary and exit 5.
- Host syncs happen only at log, eval and checkpoint steps, so metrics cost
  well under 1% of step time (bench/train_overhead.py).

Fault injection for tests: the environment variable ``LAB_INJECT_NAN_AT_STEP=N``
makes the loss of step N NaN, to exercise the divergence path end to end.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from lm.checkpoint_file import check_tokenizer
from lm.config.schema import ExperimentConfig, to_dict
from lm.distributed.env import DistEnv
from lm.errors import CheckpointError, DataError, LabError
from lm.model import TransformerLM
from lm.optim import clip_grad_norm
from lm.runs import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR
from lm.processes import process_age
from lm.train import engine, failures
from lm.train.run_checkpoints import (BACKGROUND_MAX_BYTES, CHECKPOINT_FORMAT, BackgroundWrite, CheckpointDir,
                                      capture_rng, check_resumable_model, cpu_snapshot, load_training_checkpoint,
                                      restore_rng, rng_to_continue, tensor_bytes)
from lm.train.evaluate import evaluate, to_device_batches, token_byte_lengths
from lm.train.optimization import build_optimizer, grad_norm, set_lr
from lm.train.policy import DevicePolicy, configure_backends, peak_memory, reset_peak_memory, resolve_policy
from lm.train.recorder import Progress, RunRecorder
from lm.train.signals import StopRequest
from lm.train.state import TrainState, default_eval_batches, default_sampler  # noqa: F401 (re-exported)
from lm.train.throughput import mfu_inputs, newton_schulz_flops
from lm.train.window import StepWindow, WindowStats

INJECT_NAN_ENV = "LAB_INJECT_NAN_AT_STEP"
INJECT_NAN_RANK_ENV = "LAB_INJECT_NAN_RANK"


class Trainer:
    """Trains ``cfg`` into ``run_dir``; :meth:`run` returns the exit code of docs/run-directory.md.

    ``train_tokens``/``val_tokens`` are 1-D token arrays (memmaps are fine);
    ``val_bytes`` is the byte length of the validation text (for bits per
    byte when ``tokenizer`` is not given). ``sampler`` replaces the default
    :class:`lm.data.batches.BatchSampler`; ``policy`` the device policy from
    the config. ``record_train_metrics=False`` skips train records and their
    host sync (only for measuring what they cost).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | os.PathLike, *, train_tokens, val_tokens,
                 val_bytes: int | None = None, tokenizer=None, policy: DevicePolicy | None = None,
                 sampler=None, progress: Progress | None = None, recorder: RunRecorder | None = None,
                 stop: StopRequest | None = None, record_train_metrics: bool = True, dist: DistEnv | None = None):
        self.cfg = cfg
        self.dist = dist or DistEnv()
        self.par = None  # the parallel mode's hooks (lm.distributed), None in a world of one
        self.run_dir = Path(run_dir)
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.val_bytes = val_bytes
        self.tokenizer = tokenizer
        self.policy = policy
        self.sampler = sampler
        self.progress = progress
        self.recorder = recorder
        self.stop = stop
        self.record_train_metrics = record_train_metrics
        inject = os.environ.get(INJECT_NAN_ENV, "").strip()
        self._inject_nan_at = int(inject) if inject.isdigit() else None
        self._inject_rank = os.environ.get(INJECT_NAN_RANK_ENV, "").strip()
        self.state = TrainState()
        self.summary: dict = {}
        self._ready = False
        self._resumed_from: Path | None = None
        self._exact_resume = False
        self.startup: dict[str, float] = {}
        """Seconds each start-up phase took (data, setup), and the process's age at the start event."""
        self._writes = BackgroundWrite()
        self.warnings: list[str] = []
        """One-line warnings about the config as run (a shortened warmup), put into the start event."""

    # ------------------------------------------------------------------ setup

    def setup(self, resume_from: str | os.PathLike | None = None) -> None:
        """Build model, optimizer, sampler and eval windows; restore ``resume_from`` if given.

        Raises CheckpointError for a checkpoint that is unreadable or was
        written for a different model, DataError for too little data.
        """
        cfg = self.cfg
        t_setup = time.perf_counter()
        self.policy = policy = self.policy or resolve_policy(cfg.training)
        configure_backends(policy, cfg.training.threads, cfg.training.deterministic)
        T = cfg.model.context_length
        for name, toks in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if len(toks) < T + 1:
                raise DataError(f"the {name} data has {len(toks)} tokens, fewer than model.context_length + 1 "
                                f"= {T + 1}; use more text (data.max_bytes, data.val_fraction) or a shorter context")
        seed = cfg.training.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # Initialized on the CPU so a seed gives the same weights on every device.
        self.model = TransformerLM(cfg.model).to(policy.device)
        tr, num_params = cfg.training, self.model.num_params()
        self.num_params = num_params
        self.plan = engine.plan_for(policy.compile, policy.device, num_params, tr.cuda_graphs,
                                    distributed=self.dist.distributed, checkpointing=tr.activation_checkpointing)
        self.checkpointing = engine.resolve_checkpointing(tr.activation_checkpointing, self.plan, policy.device,
                                                          policy.dtype == "bf16", num_params,
                                                          distributed=self.dist.distributed)
        if self.plan.compile:
            engine.use_compile_cache(cfg.data.cache_dir)
        engine.prepare(self.model, self.plan, self.checkpointing)
        wrapped = self._parallelize()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optimizer)
        if self.sampler is None:
            self.sampler = default_sampler(self.train_tokens, cfg.training.batch_size, T, seed)
        eval_bs = cfg.eval.batch_size or cfg.training.batch_size
        eval_batches = default_eval_batches(self.val_tokens, eval_bs, T, cfg.eval.batches)
        if self.par is not None:  # each rank reads its slice of the same global batches
            from lm.distributed.data import RankSlice, rank_eval_batches

            self.sampler = RankSlice(self.sampler, self.dist.rank, self.dist.world_size)
            eval_batches = rank_eval_batches(list(eval_batches), self.dist.rank, self.dist.world_size)
        self.eval_batches = to_device_batches(eval_batches, policy.device)
        lengths = token_byte_lengths(self.tokenizer, cfg.model.vocab_size) if self.tokenizer is not None else None
        self.token_bytes = torch.as_tensor(lengths, device=policy.device) if lengths is not None else None
        self.bytes_per_token = (self.val_bytes / len(self.val_tokens)) if self.val_bytes else None
        self.checkpoints = CheckpointDir(self.run_dir / CHECKPOINT_DIR, cfg.checkpoint.keep_last)
        self.checkpoints.remove_stale_temp_files()
        self.state = TrainState()
        rng_state = None
        if resume_from is not None:
            rng_state = self._restore(Path(resume_from))
        # Compiled in place, block by block (lm.train.engine), before any wrapping: names do not change.
        self.train_model = wrapped
        self.model.train()
        if rng_state is not None:
            missing = restore_rng(rng_state, policy.device)  # last: nothing above may draw after it
            self._exact_resume = self._exact_resume and not missing
        self.startup["setup_s"] = round(time.perf_counter() - t_setup, 3)
        self._ready = True

    def _inject_here(self) -> bool:
        """Whether this rank injects the test NaN (every rank unless LAB_INJECT_NAN_RANK names one)."""
        return not self._inject_rank.isdigit() or int(self._inject_rank) == self.dist.rank

    def _parallelize(self) -> torch.nn.Module:
        """Wrap the model for DDP/FSDP2 when several processes train it; the module to call in training."""
        if not self.dist.distributed:
            return self.model
        from lm.distributed.data import check_batch_split
        from lm.distributed.plan import build_parallel, choose_mode

        check_batch_split(self.cfg, self.dist.world_size)
        if self.dist.rank > 0:  # the weights are rank 0's (same seed); dropout masks differ per rank
            torch.manual_seed(self.cfg.training.seed + self.dist.rank)
        mode, self.parallel_reason = choose_mode(self.cfg, self.dist, self.policy.device_name)
        self.par = build_parallel(mode, self.dist, self.policy.device, self.policy)
        return self.par.wrap(self.model) if self.par is not None else self.model

    def _restore(self, path: Path) -> dict | None:
        if self.par is not None and self.par.shards_state:
            from lm.distributed.dcp import restore_sharded

            return restore_sharded(self, path)
        ckpt = load_training_checkpoint(path)
        check_resumable_model(self.model, ckpt["model"], path)
        check_tokenizer(ckpt, self.tokenizer, path, self.run_dir / TOKENIZER_DIR)
        self.model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit this model "
                                      f"({e})") from None
        elif ckpt.get("sharded"):  # written under FSDP2: the optimizer state is in the DCP folder it names
            from lm.distributed.dcp import load_sharded_optimizer, sharded_dir

            load_sharded_optimizer(self.model, self.optimizer, sharded_dir(path, ckpt))
        return self._restore_progress(ckpt, path)

    def _restore_progress(self, ckpt: dict, path: Path) -> dict | None:
        """After the weights and optimizer: the sampler, the counters and best losses; returns the RNG state
        to continue from (restored last, by setup). Shared by every way a checkpoint is read back."""
        if ckpt.get("sampler") is not None:
            self.sampler.load_state_dict(ckpt["sampler"])
        t = ckpt.get("trainer") or {}
        self.state = TrainState(step=int(ckpt.get("iteration", 0)), tokens=int(t.get("tokens", 0)),
                                time=float(t.get("time", 0.0)), best_val_loss=t.get("best_val_loss"),
                                best_val_bpb=t.get("best_val_bpb"), last_val_loss=t.get("last_val_loss"),
                                last_val_bpb=t.get("last_val_bpb"))
        self._resumed_from = path
        self._exact_resume = "sampler" in ckpt and "rng" in ckpt
        return rng_to_continue(ckpt, self.dist.rank, self.dist.world_size, self.par is not None)

    # ------------------------------------------------------------------ run

    def run(self, resume_from: str | os.PathLike | None = None) -> int:
        """Train to ``training.steps`` (or until stopped); return 0, 1, 2, 4 or 5.

        Bad input (LabError) is recorded in status.json and re-raised so the
        caller shows the message; a crash is recorded, its traceback printed
        to stderr, and 1 returned.
        """
        cfg = self.cfg
        own_recorder = self.recorder is None
        if own_recorder:
            self.recorder = RunRecorder(self.run_dir, cfg.training.steps, self.progress)
        rec = self.recorder
        stop = self.stop or StopRequest()
        self.stop = stop
        try:
            with stop:
                if not self._ready:
                    self.setup(resume_from)
                self._write_run_files()
                return self._train()
        except LabError as e:
            self._record_failure(str(e), 2)
            raise
        except KeyboardInterrupt:
            msg = "interrupted twice: stopped without a new checkpoint; resume continues from the last one"
            rec.event("stop", self.state.step, self._now(), msg)
            rec.finish("stopped", 5, msg)
            return 5
        except Exception as e:
            err = failures.explain(e, cfg, self.policy.device_name if self.policy else "this device", self.run_dir)
            if err is not None:  # a setting or the machine, not a bug: one paragraph, no traceback
                self._record_failure(str(err), 2)
                raise err from None
            traceback.print_exc(file=sys.stderr)
            self._record_failure(f"{type(e).__name__}: {e}", 1)
            return 1
        finally:
            try:  # a checkpoint still being written finishes (and is recorded) before the run ends
                self._settle_saves()
            except Exception as e:  # the run's own outcome is already recorded; say what the write hit
                print(f"lab: the last background checkpoint write failed: {e}", file=sys.stderr)
            if own_recorder:
                rec.close()

    def _record_failure(self, message: str, code: int) -> None:
        try:
            self.recorder.event("error", self.state.step, self._now(), message)
            self.recorder.finish("failed", code, message)
        except Exception:  # the disk may be the problem; the exit code still says it
            pass

    def _write_run_files(self) -> None:
        """config.toml as actually run and the tokenizer, once setup has succeeded."""
        from lm.config.loader import write_resolved

        write_resolved(self.cfg, self.run_dir / CONFIG_FILE)
        tok_dir = self.run_dir / TOKENIZER_DIR
        if self.tokenizer is not None and not (tok_dir / "vocab.json").is_file():
            self.tokenizer.save(tok_dir)

    def _now(self) -> float:
        """Seconds of training since the run first started (continues across resumes)."""
        if not hasattr(self, "_clock0"):
            return self.state.time
        return self._time_base + time.perf_counter() - self._clock0

    def _train(self) -> int:
        cfg, st, rec = self.cfg, self.state, self.recorder
        total = cfg.training.steps
        self._clock0, self._time_base = time.perf_counter(), st.time
        self._session_step0, self._session_t0 = st.step, time.perf_counter()
        reset_peak_memory(self.policy.device)
        if self._resumed_from is not None:
            dropped = rec.drop_metrics_after(st.step)
            rel = _rel(self._resumed_from, self.run_dir)
            note = "" if self._exact_resume else " (the checkpoint has no RNG/sampler state: not bit-exact)"
            rec.update_status(state="running", step=st.step, tokens=st.tokens, total_steps=total, message="",
                              best_val_loss=st.best_val_loss, best_val_bpb=st.best_val_bpb,
                              last_val_loss=st.last_val_loss)
            rec.event("resume", st.step, st.time, f"resumed from {rel} at step {st.step}{note}", path=rel,
                      dropped_records=dropped)
        else:
            rec.drop_metrics_after(0)  # a directory reused after an attempt that never checkpointed
            rec.update_status(state="running", step=0, tokens=0, total_steps=total, message="",
                              best_val_loss=None, best_val_bpb=None, last_val_loss=None)
            age = process_age()
            if age is not None:
                self.startup["process_s"] = round(age, 3)
            rec.event("start", 0, 0.0, f"training {self.num_params:,} parameters on "
                      f"{self.policy.device_name} ({self.policy.dtype}, "
                      f"{engine.describe(self.plan, self.checkpointing)}"
                      + (", deterministic)" if cfg.training.deterministic else ")")
                      + self._world_note() + "".join(f"; {w}" for w in self.warnings),
                      device=str(self.policy.device), dtype=self.policy.dtype, compile=self.policy.compile,
                      checkpointing=self.checkpointing,
                      params=self.num_params, deterministic=cfg.training.deterministic,
                      warnings=list(self.warnings), startup=dict(self.startup),
                      **self._world_fields(True))
        if self.par is not None:
            rec.update_status(**self._world_fields())
        if st.step >= total:
            return self._finish(f"already finished: step {st.step} of {total}")
        self._mfu_inputs = mfu_inputs(cfg.model, self.policy)
        self._ns_flops = newton_schulz_flops(cfg)
        window = StepWindow(cfg.training.log_every, self.policy.device)
        self._win_t0, self._win_paused = time.perf_counter(), 0.0
        self._untimed = None
        while st.step < total:
            if self.stop.requested and self.par is None:  # asked before this session's first step
                self._save(step_file=False, best=False)
                return self._stopped()
            self._step(window)
            if self._untimed is None:
                # The session's first step compiles: keep it out of tokens/s, MFU and so the ETA.
                self._untimed = 1 if cfg.training.log_every > 1 else 0
                if self._untimed:
                    self._win_t0 = time.perf_counter()
            stopping, time_up = self._stop_signals()
            code = self._boundary(window, stopping=stopping, time_up=time_up)
            if code is not None:
                return code
        return self._finish("")

    def _step(self, window: StepWindow) -> None:
        cfg, policy = self.cfg, self.policy
        step = self.state.step + 1
        lr = set_lr(self.optimizer, step, cfg)
        # Gradients of the previous step lived until now so a halt can name the worst one;
        # freeing them before the forward keeps them out of the activation peak.
        self.optimizer.zero_grad(set_to_none=True)
        accum = cfg.training.grad_accum
        par = self.par
        loss_sum = None
        for i in range(accum):
            x, y = self.sampler.next_batch(policy.device)
            # Under DDP/FSDP2 gradients are synchronized on the last micro-step only.
            with par.micro_step(i == accum - 1) if par is not None else contextlib.nullcontext():
                engine.step_begin(self.plan)
                with par.autocast(policy) if par is not None else policy.autocast():
                    # The loss comes from the fused, chunked LM head inside the compiled region.
                    loss = self.train_model(x, targets=y)
                if self._inject_nan_at == step and self._inject_here():
                    loss = loss * float("nan")
                (loss / accum).backward()
            if loss_sum is None:  # a CUDA graph's output is overwritten by its next replay: keep a copy
                loss_sum = loss.detach().clone() if self.plan.cuda_graphs and accum > 1 else loss.detach()
            else:
                loss_sum = loss_sum + loss.detach()
        clip = cfg.optimizer.grad_clip
        if par is not None:  # the global norm (sharded gradients under FSDP2); the loss averaged over ranks
            norm = par.clip_grad_norm(self.params, clip) if clip > 0 else par.grad_norm(self.params)
            loss_sum = par.mean(loss_sum)
        else:
            norm = clip_grad_norm(self.params, clip) if clip > 0 else grad_norm(self.params)
        self.optimizer.step()
        window.add(step, loss_sum / accum, norm, lr)
        self.state.step = step
        self.state.tokens += cfg.tokens_per_step

    def _stop_signals(self) -> tuple[bool, bool]:
        """(stop requested, training.max_time reached): this process's, or the ranks' agreed vote."""
        max_time = self.cfg.training.max_time
        time_up = max_time > 0 and self._now() >= max_time
        if self.par is None:
            return self.stop.requested, time_up
        if not hasattr(self, "_vote"):
            from lm.distributed.faults import StopVote, maybe_kill_self

            self._vote, self._maybe_kill = StopVote(self.dist.control), maybe_kill_self
        self._maybe_kill(self.state.step, self.dist.rank)
        return self._vote.cast(self.stop.requested, time_up)

    def _world_fields(self, reason: bool = False) -> dict:
        """world_size and parallel mode for status.json and the start event."""
        out = {"world_size": self.dist.world_size, "parallel": self.par.mode if self.par is not None else "none"}
        if reason and self.par is not None:
            out.update(parallel_reason=self.parallel_reason, nccl=list(self.dist.nccl_notes))
        return out

    def _world_note(self) -> str:
        if self.par is None:
            return ""
        notes = "".join(f"; {n}" for n in self.dist.nccl_notes)
        return f" x {self.dist.world_size} processes, {self.par.mode.upper()} ({self.parallel_reason}){notes}"

    def _boundary(self, window: StepWindow, stopping: bool, time_up: bool | None = None) -> int | None:
        """Log, evaluate, checkpoint, stop or halt after a step; an exit code ends the run."""
        cfg, st = self.cfg, self.state
        step, total = st.step, cfg.training.steps
        last = step >= total
        do_log = self.record_train_metrics and (step % cfg.training.log_every == 0 or last)
        do_eval = (cfg.eval.every > 0 and step % cfg.eval.every == 0) or last
        do_ckpt = (cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0) or last
        if time_up is None:
            time_up = cfg.training.max_time > 0 and self._now() >= cfg.training.max_time
        if not (do_log or do_eval or do_ckpt or stopping or time_up):
            return None
        stats = window.peek()  # the one host sync of this boundary
        synced = time.perf_counter()
        bad = stats.first_non_finite()
        if bad is not None:
            return self._halt(stats, bad)
        if do_log and stats.steps:
            self._log_train(stats, synced)
            window.clear()
        improved = False
        if do_eval or (time_up and not last):
            improved = self._evaluate()
        if do_ckpt or improved or stopping or time_up:
            # Mid-run saves go to the background; the last one (end, stop, time up) is written before exiting.
            self._save(step_file=do_ckpt, best=improved, background=not (last or stopping or time_up))
        else:
            self._settle_saves(wait=False)
        if do_log:
            self._win_t0, self._win_paused = time.perf_counter(), 0.0
        else:
            self._win_paused += time.perf_counter() - synced
        if stopping:
            return self._stopped()
        if time_up and not last:
            return self._finish(f"reached training.max_time = {cfg.training.max_time:g} s at step {step} of {total}")
        return None

    def _stopped(self) -> int:
        st = self.state
        msg = (f"stopped by {self.stop.signal_name} at step {st.step} of {self.cfg.training.steps}; "
               f"resume with: lab run --resume {self.run_dir}")
        self.recorder.event("stop", st.step, self._now(), msg)
        self._summarize()
        self.recorder.finish("stopped", 5, msg, step=st.step, tokens=st.tokens)
        return 5

    def _log_train(self, stats: WindowStats, synced: float) -> None:
        cfg, st = self.cfg, self.state
        seconds = max(synced - self._win_t0 - self._win_paused, 1e-9)
        timed = len(stats.steps) - (self._untimed or 0)
        self._untimed = 0
        tokens_per_s = timed * cfg.tokens_per_step / seconds
        loss = stats.mean_loss()
        flops_per_token, peak, estimated = self._mfu_inputs
        world = self.dist.world_size if self.par is not None else 1
        mfu = tokens_per_s * flops_per_token / (peak * world) if flops_per_token and peak else None
        peak_mem = peak_memory(self.policy.device)
        if self.par is not None:  # the largest over ranks (one small collective per log line)
            peak_mem = int(self.par.max_host(peak_mem))
        record = {"type": "train", "step": st.step, "tokens": st.tokens, "time": round(self._now(), 3),
                  "loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf"), "lr": stats.lrs[-1],
                  "grad_norm": stats.mean_grad_norm(), "tokens_per_s": round(tokens_per_s, 1),
                  "mfu": mfu, "mfu_estimated": estimated, "peak_mem": peak_mem}
        if self._ns_flops and peak:  # Muon's Newton-Schulz: optimizer work, reported apart from the model's MFU
            record["optimizer_mfu"] = len(stats.steps) / seconds * self._ns_flops / (peak * world)
        self.recorder.metric(record)
        self.recorder.update_status(step=st.step, tokens=st.tokens, throttle=True)

    def _evaluate(self) -> bool:
        """Evaluate, record it, and say whether it is the best validation loss so far."""
        st = self.state
        res = evaluate(self.model, self.eval_batches, self.policy, token_bytes=self.token_bytes,
                       bytes_per_token=self.bytes_per_token, eager=self.plan.cuda_graphs)
        if self.par is not None:  # each rank evaluated its slice of every batch: combine the sums
            from lm.distributed.data import combine_eval

            res = combine_eval(res, self.par, self.bytes_per_token)
        now = round(self._now(), 3)
        self.recorder.metric({"type": "eval", "step": st.step, "tokens": st.tokens, "time": now,
                              "val_loss": res.loss, "val_ppl": res.ppl, "val_bpb": res.bpb})
        improved = math.isfinite(res.loss) and (st.best_val_loss is None or res.loss < st.best_val_loss)
        st.last_val_loss, st.last_val_bpb = res.loss, res.bpb
        if improved:
            st.best_val_loss, st.best_val_bpb = res.loss, res.bpb
        bpb = f", {res.bpb:.4f} bits/byte" if res.bpb is not None else ""
        self.recorder.event("eval", st.step, now, f"val_loss {res.loss:.4f}{bpb}" + (" (best)" if improved else ""),
                            val_loss=res.loss, val_bpb=res.bpb)
        self.recorder.update_status(step=st.step, tokens=st.tokens, best_val_loss=st.best_val_loss,
                                    best_val_bpb=st.best_val_bpb, last_val_loss=st.last_val_loss)
        return improved

    def checkpoint_dict(self) -> dict:
        """The resumable checkpoint of the current state (format ``lm-checkpoint/1``)."""
        self.state.time = self._now()
        model_state = self.par.full_state_dict() if self.par is not None else self.model.state_dict()
        return {"format": CHECKPOINT_FORMAT, "model": model_state,
                "optimizer": self.optimizer.state_dict(), "iteration": self.state.step,
                "config": to_dict(self.cfg), "sampler": self.sampler.state_dict(),
                "rng": capture_rng(self.policy.device), "trainer": self.state.to_dict(),
                "tokenizer_fingerprint": self.tokenizer.fingerprint() if self.tokenizer is not None else None}

    def _save(self, *, step_file: bool, best: bool, background: bool = False) -> None:
        """Write a checkpoint; ``background``: copy the state to the CPU and write it on a thread (one
        process, checkpoints up to BACKGROUND_MAX_BYTES), so fast runs do not wait for the disk. Its
        event is recorded once the file is in place (:meth:`_settle_saves`)."""
        if self.par is not None:
            from lm.distributed.dcp import save_distributed

            paths = save_distributed(self, step_file=step_file, best=best)
            if not self.dist.is_main:
                return
            return self._checkpoint_event(paths, self.state.step, self._now(), best)
        self._settle_saves()
        obj, step, now = self.checkpoint_dict(), self.state.step, self._now()
        if background and tensor_bytes(obj) <= BACKGROUND_MAX_BYTES:
            snapshot = cpu_snapshot(obj)
            self._writes.submit(lambda: self.checkpoints.save(snapshot, step, keep_step_file=step_file, best=best),
                                (step, now, best))
            return
        self._checkpoint_event(self.checkpoints.save(obj, step, keep_step_file=step_file, best=best), step, now, best)

    def _settle_saves(self, wait: bool = True) -> None:
        """Record the background write that finished (waiting for it unless ``wait`` is False); its
        failure (a full disk: CheckpointError) is raised here, on the training thread."""
        if not wait and not self._writes.done():
            return
        finished = self._writes.settle()
        if finished is not None:
            paths, (step, now, best) = finished
            self._checkpoint_event(paths, step, now, best)

    def _checkpoint_event(self, paths: list[Path], step: int, now: float, best: bool) -> None:
        rel = _rel(paths[0], self.run_dir)
        self.recorder.event("checkpoint", step, now, rel, path=rel, best=best)

    def _halt(self, stats: WindowStats, i: int) -> int:
        self._settle_saves()  # the last good checkpoint may still be on its way to the disk
        step, loss, gn, lr = stats.steps[i], stats.losses[i], stats.grad_norms[i], stats.lrs[i]
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        worst = self._worst_gradient()
        latest = self.checkpoints.latest
        good = (f"the last good checkpoint is {_rel(latest, self.run_dir)}" if latest.is_file()
                else "no checkpoint had been written yet")
        msg = (f"non-finite {what} at step {step}: loss={loss}, grad_norm={gn}, lr={lr:.3g}"
               + (f"; largest gradient in {worst[0]} (norm {worst[1]:.3g})" if worst else "")
               + f". Training stopped; {good}. Try a lower optimizer.lr, more schedule.warmup_steps "
               "or optimizer.grad_clip.")
        self.recorder.event("halt", step, self._now(), msg, loss=loss, grad_norm=gn, lr=lr,
                            param=worst[0] if worst else None)
        self._summarize()
        self.recorder.finish("diverged", 4, msg)
        return 4

    def _worst_gradient(self) -> tuple[str, float] | None:
        """The first parameter with a non-finite gradient, else the largest (from the last step's grads)."""
        named = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        if not named or (self.par is not None and self.par.shards_state):  # sharded: no per-tensor norm here
            return None
        norms = torch.stack([g.detach().float().norm() for _, g in named]).cpu().tolist()
        for (name, _), norm in zip(named, norms):
            if not math.isfinite(norm):
                return name, norm
        j = max(range(len(norms)), key=norms.__getitem__)
        return named[j][0], norms[j]

    def _summarize(self) -> None:
        st = self.state
        seconds = time.perf_counter() - getattr(self, "_session_t0", time.perf_counter())
        trained = (st.step - getattr(self, "_session_step0", st.step)) * self.cfg.tokens_per_step
        self.summary = {"steps": st.step, "total_steps": self.cfg.training.steps, "tokens": st.tokens,
                        "val_loss": st.last_val_loss, "val_bpb": st.last_val_bpb,
                        "best_val_loss": st.best_val_loss, "best_val_bpb": st.best_val_bpb,
                        "tokens_per_s": trained / seconds if seconds > 0 and trained else None,
                        "wall_time": seconds, "run_dir": str(self.run_dir)}

    def _finish(self, message: str) -> int:
        st = self.state
        self._summarize()
        self.recorder.event("finish", st.step, self._now(), message or f"finished {st.step} steps",
                            val_loss=st.last_val_loss, val_bpb=st.last_val_bpb)
        self.recorder.finish("done", 0, message, step=st.step, tokens=st.tokens)
        return 0


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
