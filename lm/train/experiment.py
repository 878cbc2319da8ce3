"""``run_experiment``: config in, run directory out. What ``lab run``, the queue and the console call.

It picks or creates the run directory, prepares the data (tokenizer and
token files, cached), and hands token arrays to the :class:`Trainer`. A run
directory that already holds ``checkpoints/latest.pt`` is continued from it;
one without (killed before its first checkpoint) starts over in place.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from lm.config.schema import ExperimentConfig
from lm.errors import ConfigError, LabError
from lm.processes import ALIVE, identity, process_state
from lm.runs import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_DIR, RunDir, new_run_dir
from lm.train.recorder import Progress, RunRecorder
from lm.train.signals import StopRequest


class _StopDuringPreparation(Exception):
    pass


def run_experiment(cfg: ExperimentConfig | None = None, run_dir: str | os.PathLike | None = None,
                   resume: str | os.PathLike | None = None, progress: Progress | None = None, *,
                   device: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                   summary: dict | None = None, checkpoint: str | None = None) -> int:
    """Train ``cfg``; return the exit code of docs/run-directory.md (0, 4, 5; 1 after a crash).

    - ``resume``: a run directory to continue, with its own config.toml
      (``overrides`` apply on top, e.g. more ``training.steps``) unless
      ``cfg`` is given.
    - ``run_dir``: where to write; continued if it has a checkpoint. Default:
      a new ``<runs_dir>/<name>-<timestamp>``.
    - ``device`` beats ``training.device``.
    - ``progress(kind, record)`` receives ``("run_dir", {"run_dir", "resume"})``
      first, ``("prepare", {"stage", "done", "total"})`` while the data is
      prepared, then every metrics record (kind ``"train"``/``"eval"``) and
      event (kind ``"event"``, ``record["event"]`` says which).
    - ``summary`` (a dict) is filled with the run's final numbers.
    - ``checkpoint``: which checkpoint of the run directory to continue from
      (``latest``, ``best``, ``step_N`` or a file; default ``latest``), for when
      the latest one is damaged.

    Bad input raises a LabError (after recording it in status.json when a run
    directory exists); the CLI prints it and exits 2.
    """
    if checkpoint is not None and resume is None and run_dir is None:
        raise ConfigError([f"--checkpoint {checkpoint} picks a checkpoint of an existing run: give it with "
                           "--resume RUN_DIR (or --run-dir RUN_DIR)"])
    if resume is not None:
        rd = RunDir(resume)
        if rd.config_path.is_file():
            cfg = cfg or rd.config(overrides)
        elif rd.checkpoints():
            cfg = cfg or config_from_checkpoint(rd.checkpoint(checkpoint or "latest"), overrides)
        else:
            raise ConfigError([f"cannot resume {resume}: it is not a run directory (no {CONFIG_FILE} and no "
                               "checkpoint); give the directory `lab run` printed, under runs/"])
        run_dir = rd.path
    if cfg is None:
        raise ValueError("run_experiment needs an ExperimentConfig or a run directory to resume")
    if device:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, device=device))
    cfg = _absolute_paths(cfg)

    from lm.distributed.env import DistEnv, launched_by_torchrun
    from lm.train.policy import resolve_policy

    policy = resolve_policy(cfg.training)  # a missing device is a config error before any directory exists
    env = DistEnv.from_environment()  # a world of one unless torchrun (or lab run --gpus N) started us
    from lm.train.memory_check import check_fits

    check_fits(cfg, policy.device, policy.device_name, env.world_size)  # before any directory or allocation
    # One process under torchrun is a plain run, unless DDP/FSDP2 is asked for by name (to try that path).
    if env.world_size > 1 or (launched_by_torchrun() and cfg.training.parallel in ("ddp", "fsdp")):
        from lm.distributed.data import check_batch_split

        check_batch_split(cfg, env.world_size)
        policy = dataclasses.replace(policy, device=env.rank_device(policy.device))
        env.init(policy.device)
    try:
        return _run(cfg, policy, env, run_dir, checkpoint, progress, summary)
    finally:
        env.close()


def _run(cfg: ExperimentConfig, policy, env, run_dir, checkpoint, progress: Progress | None,
         summary: dict | None) -> int:
    from lm.config.rules import fit_warmup

    cfg, warmup_note = fit_warmup(cfg)  # a smoke run shorter than the warmup: shortened, and said in the start event
    if env.is_main:
        run_path = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
        _refuse_if_in_use(run_path)
        run_path.mkdir(parents=True, exist_ok=True)
    if env.control is not None:  # every rank writes into the directory rank 0 chose
        import torch.distributed as dist

        box = [str(run_path) if env.is_main else None]
        dist.broadcast_object_list(box, src=0, group=env.control)
        run_path = Path(box[0])
    latest = run_path / CHECKPOINT_DIR / "latest.pt"
    if checkpoint is not None:
        resume_from = RunDir(run_path).checkpoint(checkpoint)  # CheckpointError listing what exists
    else:
        resume_from = latest if latest.is_file() else None
    env.barrier()  # nobody writes before every rank has seen whether there is a checkpoint
    if resume_from is not None and env.is_main:
        refuse_changed_data(cfg, run_path, resume_from)
    if (resume_from is None or not (run_path / CONFIG_FILE).is_file()) and env.is_main:
        from lm.config.loader import write_resolved

        write_resolved(cfg, run_path / CONFIG_FILE)  # visible to the console while data is prepared
    if env.is_main:
        recorder = RunRecorder(run_path, cfg.training.steps, progress)
    else:
        from lm.train.recorder import NullRecorder

        recorder, progress = NullRecorder(run_path, cfg.training.steps), None
    if progress is not None:
        progress("run_dir", {"run_dir": str(run_path), "resume": resume_from is not None})
    try:
        recorder.update_status(state="running", **identity(), total_steps=cfg.training.steps, exit_code=None,
                               message="preparing data")
        try:
            with StopRequest() as stop:
                stop.on_signal = _raise_stop  # data preparation cannot pause at a step: leave at once
                if not env.is_main:
                    env.barrier()  # rank 0 prepares (tokenizer, token files); the others then read its cache
                t_data = time.perf_counter()
                data = _prepare(cfg, run_path, progress)
                data_s = time.perf_counter() - t_data
                if env.is_main:
                    env.barrier()
        except (_StopDuringPreparation, KeyboardInterrupt):
            msg = "stopped while preparing data (nothing was trained)"
            recorder.event("stop", 0, 0.0, msg)
            recorder.finish("stopped", 5, msg)
            return 5
        cfg = _fit_vocab(cfg, data.tokenizer)
        from lm.train.trainer import Trainer

        # From here a signal means "stop at the next step boundary" (setup included: a big model
        # takes a while to build, and a SIGTERM then still ends in a checkpoint and exit 5).
        with StopRequest() as stop:
            stop.interrupt_on_repeat = env.world_size <= 1
            trainer = Trainer(cfg, run_path, train_tokens=data.train_tokens, val_tokens=data.val_tokens,
                              val_bytes=data.val_bytes, tokenizer=data.tokenizer, policy=policy,
                              progress=progress, recorder=recorder, stop=stop, dist=env)
            trainer.warnings += [warmup_note] if warmup_note else []
            trainer.startup["data_s"] = round(data_s, 3)
            try:
                try:
                    trainer.setup(resume_from)
                except (RuntimeError, MemoryError) as e:
                    from lm.train.memory_check import is_out_of_memory, oom_error

                    if not is_out_of_memory(e):
                        raise
                    raise oom_error(cfg, policy.device_name, e, env.world_size) from None
            except LabError as e:
                recorder.event("error", 0, 0.0, str(e))
                recorder.finish("failed", 2, str(e))
                raise
            code = trainer.run()
        if summary is not None:
            summary.update(trainer.summary)
        return code
    except LabError as e:
        if recorder.status.get("state") == "running":
            recorder.event("error", 0, 0.0, str(e))
            recorder.finish("failed", 2, str(e))
        raise
    except Exception as e:  # a crash outside the training loop (a bug, a full disk): say so, then raise
        if recorder.status.get("state") == "running":
            recorder.event("error", 0, 0.0, f"{type(e).__name__}: {e}")
            recorder.finish("failed", 1, f"{type(e).__name__}: {e}")
        raise
    finally:
        recorder.close()


def _refuse_if_in_use(run_path: Path) -> None:
    """Two processes writing one run directory would corrupt it: refuse while another one lives.

    The process is identified by pid, host and start time (status.json records all three), so
    a pid that now belongs to another program (after a reboot) does not count as the run.
    """
    st = RunDir(run_path).status()  # 'running' with a dead (or reused) pid already reads as 'stopped'
    if st.state != "running" or not st.pid or st.pid == os.getpid():
        return
    if process_state(st.pid, st.host, st.extra.get("pid_start")) == ALIVE:
        raise LabError(f"{run_path} is in use: training process {st.pid} is still running there. Stop it first "
                       f"(Ctrl-C in its terminal, or kill -TERM {st.pid}); it checkpoints and exits.")


# What decides the token stream a run trains on: changing any of it under a checkpoint continues on
# other data (or other token ids), which the checkpoint's numbers then silently mix.
_DATA_KEYS = (("data", "source"), ("data", "val_source"), ("data", "max_bytes"), ("data", "val_fraction"),
              ("tokenizer", "path"), ("tokenizer", "vocab_size"), ("tokenizer", "special_tokens"),
              ("tokenizer", "train_bytes"))


def refuse_changed_data(cfg: ExperimentConfig, run_path: Path, checkpoint: Path) -> None:
    """ConfigError when ``cfg`` names other data or another tokenizer than the run being continued.

    The run's own record is its config.toml (else the config stored in ``checkpoint``).
    """
    from lm.config.schema import to_dict

    rd = RunDir(run_path)
    if rd.config_path.is_file():
        try:
            old = to_dict(rd.config())
        except LabError:
            return  # a run whose config no longer loads: the trainer's checks still apply
        where = str(rd.config_path)
    else:
        from lm.train.run_checkpoints import load_training_checkpoint

        old = load_training_checkpoint(checkpoint).get("config")
        where = str(checkpoint)
        if not isinstance(old, dict):
            return
    new = to_dict(cfg)
    changed = []
    for section, key in _DATA_KEYS:
        a, b = (old.get(section) or {}).get(key), (new.get(section) or {}).get(key)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b:
            changed.append(f"{section}.{key} is {b!r} here but {a!r} in {where}")
    if changed:
        raise ConfigError(changed + [f"{run_path} was trained on other data: continuing it would mix two datasets "
                                     "under one checkpoint. Start a new run (leave out --run-dir) or resume with "
                                     "the run's own settings (`lab run --resume DIR`)"])


def config_from_checkpoint(path: Path, overrides=()) -> ExperimentConfig:
    """The experiment stored in a checkpoint (for a run directory whose config.toml is gone)."""
    from lm.config.loader import apply_overrides, experiment_from_dict
    from lm.train.run_checkpoints import load_training_checkpoint

    stored = load_training_checkpoint(path).get("config")
    if not isinstance(stored, dict):
        raise ConfigError([f"cannot resume from {path}: the run has no {CONFIG_FILE} and the checkpoint does not "
                           "record its experiment (a bare CS336 checkpoint); resume with the experiment file: "
                           f"`lab run EXPERIMENT --run-dir {path.parent.parent}`"])
    if overrides:
        stored = apply_overrides(stored, list(overrides), source=str(path))
    return experiment_from_dict(stored, source=str(path), check_paths=False)


def _raise_stop(signal_name: str) -> None:
    raise _StopDuringPreparation(signal_name)


@dataclasses.dataclass
class _Data:
    tokenizer: object
    train_tokens: object
    val_tokens: object
    val_bytes: int | None


def _prepare(cfg: ExperimentConfig, run_path: Path, progress: Progress | None) -> _Data:
    """Tokenizer and token arrays for ``cfg`` (a resumed run keeps the tokenizer it was trained with)."""
    from lm.data import prepare_data
    from lm.tokenizer import Tokenizer, load_token_file

    tok_dir = run_path / TOKENIZER_DIR
    tokenizer = Tokenizer.from_dir(tok_dir) if (tok_dir / "vocab.json").is_file() else None

    def report(stage, done, total):
        if progress is not None:
            progress("prepare", {"stage": stage, "done": done, "total": total, "time": time.time()})

    prepared = prepare_data(cfg, tokenizer=tokenizer, run_dir=run_path, progress=report)
    train = prepared.train_tokens
    val = prepared.val_tokens
    if isinstance(train, int):  # counts: the arrays live in the token files
        train = load_token_file(prepared.train_path)[0]
    if isinstance(val, int):
        val = load_token_file(prepared.val_path)[0]
    return _Data(prepared.tokenizer, train, val, getattr(prepared, "val_bytes", None))


def _fit_vocab(cfg: ExperimentConfig, tokenizer) -> ExperimentConfig:
    """Make model.vocab_size cover the tokenizer: grow it for a given tokenizer.path, else insist."""
    vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
    if vocab <= cfg.model.vocab_size:
        return cfg
    if cfg.tokenizer.path:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    raise ConfigError([f"the tokenizer has {vocab} tokens but model.vocab_size is {cfg.model.vocab_size}; "
                       f"set model.vocab_size to at least {vocab}"])


def _absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Relative data and tokenizer paths made absolute, so the run's config.toml works from anywhere."""
    from lm.config.loader import NAMED_DATASETS

    def fix(p: str, keep_names: bool) -> str:
        if not p or (keep_names and p in NAMED_DATASETS):
            return p
        path = Path(p).expanduser()
        return str(path.resolve()) if path.exists() else p

    data = dataclasses.replace(cfg.data, source=fix(cfg.data.source, True),
                               val_source=fix(cfg.data.val_source, True), cache_dir=fix(cfg.data.cache_dir, False))
    tok = dataclasses.replace(cfg.tokenizer, path=fix(cfg.tokenizer.path, False))
    return dataclasses.replace(cfg, data=data, tokenizer=tok)
