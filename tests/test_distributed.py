"""Training on several processes (torch.distributed, gloo on the CPU): DDP, FSDP2, DCP, faults, the launcher.

The multi-process tests start real workers through ``lab run --gpus N --device cpu``
(torchrun's elastic agent underneath) and compare them with the one-process run
of the same TOML: the loss of every step within 1e-5, the weights after 20 steps
within 1e-5. They share one module-scoped set of runs to stay inside the time budget.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.checkpoint_file import torch_load
from lm.data.batches import BatchSampler
from lm.distributed.data import RankSlice, batch_split_problem, check_batch_split
from lm.distributed.faults import describe_failures
from lm.distributed.launch import check_gpu_count, torchrun_args
from lm.errors import ConfigError
from lm.runs import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_cli import ROOT, experiment  # noqa: E402

STEPS = 20


# ----------------------------------------------------------------------------- fast: the pieces


def test_a_batch_that_does_not_divide_names_the_valid_choices():
    msg = batch_split_problem(10, 4)
    assert "training.batch_size = 10" in msg and "4 processes" in msg
    assert "8" in msg and "12" in msg  # nearby multiples of 4
    assert "1, 2, 5, 10 process(es)" in msg  # the world sizes 10 divides over
    assert batch_split_problem(12, 4) is None and batch_split_problem(7, 1) is None
    cfg = SimpleNamespace(training=SimpleNamespace(batch_size=6), eval=SimpleNamespace(batch_size=5))
    with pytest.raises(ConfigError) as e:
        check_batch_split(cfg, 3)
    assert "eval.batch_size = 5" in str(e.value) and "training.batch_size" not in str(e.value).split("eval")[0]


@settings(max_examples=30, deadline=None)
@given(world=st.integers(1, 4), per_rank=st.integers(1, 3), seed=st.integers(0, 2**16), draws=st.integers(0, 3))
def test_the_rank_slices_of_a_step_are_the_one_process_batch(world, per_rank, seed, draws):
    tokens = np.arange(500, dtype=np.uint16)
    B, T = world * per_rank, 8
    one = BatchSampler(tokens, B, T, seed)
    ranks = [RankSlice(BatchSampler(tokens, B, T, seed), r, world) for r in range(world)]
    for _ in range(draws + 1):
        x1, y1 = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x1)
        assert torch.equal(torch.cat([p[1] for p in parts]), y1)
    # The state in a checkpoint is the global sampler's: the same on every rank and for one process.
    assert all(r.state_dict() == one.state_dict() for r in ranks)


def test_resuming_a_two_rank_sampler_state_on_one_rank_reads_both_ranks_rows():
    tokens = np.arange(1000, dtype=np.uint16)
    r0, r1 = (RankSlice(BatchSampler(tokens, 4, 8, 3), r, 2) for r in (0, 1))
    for _ in range(5):
        r0.next_batch(), r1.next_batch()
    one = BatchSampler(tokens, 4, 8, 0)
    one.load_state_dict(r0.state_dict())
    x, _ = one.next_batch()
    assert torch.equal(x, torch.cat([r0.next_batch()[0], r1.next_batch()[0]]))


def _failure(exitcode, t, pid=100):
    return SimpleNamespace(exitcode=exitcode, timestamp=t, pid=pid, error_file_data={"message": "<NONE>"})


def test_the_root_cause_of_a_failed_run_is_the_rank_that_died_first():
    # Seen in the same second: the rank killed by a signal is the cause, the survivor's collective error follows.
    code, msg, orderly = describe_failures({0: _failure(1, 10.2, 7), 1: _failure(-signal.SIGKILL, 10.7, 8)})
    assert (code, orderly) == (1, False)
    assert msg.startswith("rank 1 (pid 8) was killed by SIGKILL") and "rank(s) 0 were stopped" in msg
    # A rank that raised, and one the agent had to SIGKILL 30 s later (stuck in a collective): the first.
    _, msg, _ = describe_failures({0: _failure(1, 10.0), 1: _failure(-signal.SIGKILL, 40.0)})
    assert msg.startswith("rank 0") and "exited with code 1" in msg
    code, msg, _ = describe_failures({0: _failure(-signal.SIGTERM, 5.0), 2: _failure(3, 6.0)})
    assert msg.startswith("rank 2") and "exited with code 3" in msg
    assert describe_failures({0: _failure(5, 1.0), 1: _failure(5, 1.1)}) == (5, "", True)
    assert describe_failures({0: _failure(4, 1.0), 1: _failure(4, 1.1)})[0] == 4
    # Rank 0 halted (exit 4) after the others left 0, or while the agent stopped the last of them.
    assert describe_failures({0: _failure(4, 1.0)}) == (4, "", True)
    assert describe_failures({0: _failure(5, 1.0), 1: _failure(-signal.SIGTERM, 1.0)}) == (5, "", True)
    assert describe_failures({0: _failure(4, 1.0), 1: _failure(-signal.SIGKILL, 1.0)})[0] == 1


def test_asking_for_more_gpus_than_the_machine_has_names_both_numbers(monkeypatch):
    import lm.distributed.launch as launch

    monkeypatch.setattr(launch, "visible_gpus", lambda: 2)
    with pytest.raises(ConfigError) as e:
        check_gpu_count(4, "auto")
    assert "--gpus 4 asks for 4 GPUs but this machine has 2" in str(e.value) and "--gpus 2" in str(e.value)
    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match="has 0 .no CUDA device"):
        check_gpu_count(1, "cuda")
    check_gpu_count(3, "cpu")  # CPU processes (gloo) need no GPU


def test_a_world_of_one_under_torchrun_gets_an_indexed_gpu(monkeypatch):
    # --gpus 1 --set training.parallel="ddp": the device is picked before the process group exists,
    # and NCCL refuses a bare "cuda" (seen on an H200: "Expected a torch.device with a specified index").
    from lm.distributed.env import DistEnv

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    env = DistEnv.from_environment()
    assert not env.distributed
    assert env.rank_device(torch.device("cuda")) == torch.device("cuda", 0)
    assert env.rank_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name)
    assert DistEnv.from_environment().rank_device(torch.device("cuda")) == torch.device("cuda")  # a plain run


def test_lab_run_refuses_gpus_and_batch_mismatches_before_starting_anything(tmp_path, capsys):
    from lab.cli import main

    exp = experiment(tmp_path, training={"batch_size": 4})
    assert main(["run", str(exp), "--gpus", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size = 4" in err and "3 processes" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_torchrun_command_line_is_standalone_on_one_machine_and_rendezvous_on_several():
    one = torchrun_args(2, ["run", "x.toml"])
    assert one[:4] == ["--nproc-per-node", "2", "--nnodes", "1"] and "localhost:0" in one
    assert one[-4:] == ["-m", "lab", "run", "x.toml"] and "--max-restarts" in one
    two = torchrun_args(8, ["run", "x.toml"], nnodes="2", node_rank=1, rdzv_endpoint="node0:29500", rdzv_id="j")
    assert two[two.index("--rdzv-endpoint") + 1] == "node0:29500" and two[two.index("--node-rank") + 1] == "1"
    from torch.distributed.run import config_from_args, parse_args

    config, _, cmd_args = config_from_args(parse_args(two))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node, config.max_restarts) == (2, 2, 8, 0)
    assert cmd_args[-3:] == ["lab", "run", "x.toml"]


def test_auto_mode_is_ddp_when_a_replica_fits_and_fsdp_when_not():
    from lm.config.schema import ExperimentConfig, ModelConfig, TrainingConfig
    from lm.distributed.env import DistEnv
    from lm.distributed.plan import choose_mode

    world = DistEnv(rank=0, world_size=2, local_world_size=2)
    tiny = ExperimentConfig(model=ModelConfig.from_name("tiny"), training=TrainingConfig(batch_size=8))
    assert choose_mode(tiny, world, "NVIDIA H100 80GB HBM3")[0] == "ddp"
    big = ExperimentConfig(model=ModelConfig.from_name("2.7B"), training=TrainingConfig(batch_size=8))
    mode, why = choose_mode(big, world, "NVIDIA GeForce RTX 4090")
    assert mode == "fsdp" and "GiB" in why
    with pytest.raises(ConfigError, match="parallel = 'none' but 2 processes"):
        choose_mode(ExperimentConfig(training=TrainingConfig(parallel="none")), world, "cpu")


# ----------------------------------------------------------------------------- slow: real processes


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(exp: Path, run_dir: Path, nproc: int, *args: str, timeout: float = 180, **env):
    return subprocess.run([sys.executable, "-m", "lab", "run", str(exp), "--gpus", str(nproc), "--device", "cpu",
                           "--run-dir", str(run_dir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=_env(**env))


def train_losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def weights(run_dir: Path, name: str = "latest.pt") -> dict:
    return torch_load(run_dir / "checkpoints" / name)["model"]


def assert_close_runs(a: Path, b: Path, tol: float = 1e-5) -> None:
    la, lb = train_losses(a), train_losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
    worst = max(abs(la[s] - lb[s]) for s in la)
    assert worst <= tol, f"largest per-step loss difference {worst:.3g}"
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= tol, f"largest weight difference {diff:.3g}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same TOML trained on 1 process (in this one) and on 2 processes DDP, 20 steps each."""
    tmp = tmp_path_factory.mktemp("dist")
    exp = experiment(tmp, training={"steps": STEPS, "batch_size": 6, "log_every": 1},
                     model={"attn_dropout": 0.0, "resid_dropout": 0.0}, eval={"every": 10, "batches": 2},
                     checkpoint={"every": 5, "keep_last": 5}, optimizer={"grad_clip": 0.5})
    from test_train_cli import run_in_process

    one = tmp / "one"
    assert run_in_process(exp, one, "training.device=\"cpu\"") == 0
    two = tmp / "ddp2"
    res = launch(exp, two, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    return SimpleNamespace(tmp=tmp, exp=exp, one=one, two=two, two_out=res)


@pytest.mark.slow
def test_ddp_on_2_processes_matches_one_process(runs):
    assert_close_runs(runs.one, runs.two)
    st = RunDir(runs.two).raw_status()
    assert (st["state"], st["world_size"], st["parallel"]) == ("done", 2, "ddp")
    start = next(json.loads(l) for l in (runs.two / "events.jsonl").read_text().splitlines() if '"start"' in l)
    assert start["world_size"] == 2 and "2 processes, DDP" in start["message"]
    # Only rank 0 speaks: one summary on stdout.
    assert runs.two_out.stdout.count("done: 20/20 steps") == 1


@pytest.mark.slow
def test_ddp_on_3_processes_with_grad_accumulation_matches_one_process(runs, tmp_path):
    from test_train_cli import run_in_process

    one = tmp_path / "one-accum"
    assert run_in_process(runs.exp, one, "training.device=\"cpu\"", "training.grad_accum=2") == 0
    three = tmp_path / "ddp3"
    res = launch(runs.exp, three, 3, "--set", "training.grad_accum=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_close_runs(one, three)


@pytest.mark.slow
def test_fsdp2_matches_one_process_and_its_dcp_checkpoint_consolidates_to_the_same_logits(runs, tmp_path):
    from lm.config.schema import ModelConfig
    from lm.distributed.dcp import consolidate
    from lm.model import TransformerLM

    fsdp = tmp_path / "fsdp2"
    res = launch(runs.exp, fsdp, 2, "--set", "training.parallel=\"fsdp\"")
    assert res.returncode == 0, res.stderr[-3000:]
    assert_close_runs(runs.one, fsdp)
    assert RunDir(fsdp).raw_status()["parallel"] == "fsdp"
    ck = torch_load(fsdp / "checkpoints" / "latest.pt")
    assert ck["sharded"] == "dcp/step_000020" and "optimizer" not in ck
    full = consolidate(fsdp / "checkpoints" / ck["sharded"])
    cfg = ModelConfig(**{k: v for k, v in ck["config"]["model"].items()})
    x = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    logits = []
    for sd in (full, ck["model"], weights(runs.one)):
        m = TransformerLM(cfg)
        m.load_state_dict(sd)
        logits.append(m(x))
    assert torch.equal(logits[0], logits[1])
    assert (logits[0] - logits[2]).abs().max().item() < 1e-4
    # Resume the FSDP2 checkpoint of step 10 on ONE process: its optimizer state comes from DCP, resharded.
    cont = tmp_path / "fsdp-on-1"
    _copy_run_at(fsdp, cont, 10)
    from test_train_cli import run_in_process

    assert run_in_process(runs.exp, cont, "training.device=\"cpu\"") == 0
    l1, lc = train_losses(runs.one), train_losses(cont)
    assert max(abs(l1[s] - lc[s]) for s in range(11, STEPS + 1)) <= 1e-5


@pytest.mark.slow
def test_activation_checkpointing_under_ddp_and_fsdp2_changes_no_number(runs, tmp_path):
    # Checkpointing recomputes the blocks in backward: the same arithmetic, so the same losses and
    # weights as the one-process run without it (DDP with full, FSDP2 with selective recompute).
    for mode, ckpt in (("ddp", "full"), ("fsdp", "selective")):
        run = tmp_path / f"{mode}-{ckpt}"
        res = launch(runs.exp, run, 2, "--set", f'training.parallel="{mode}"',
                     "--set", f'training.activation_checkpointing="{ckpt}"')
        assert res.returncode == 0, res.stderr[-3000:]
        assert RunDir(run).raw_status()["parallel"] == mode
        assert_close_runs(runs.one, run)


def _copy_run_at(src: Path, dst: Path, step: int) -> None:
    """A copy of run ``src`` as it was after the checkpoint of ``step`` (latest.pt = step_<step>.pt)."""
    shutil.copytree(src, dst)
    ck = dst / "checkpoints"
    shutil.copyfile(ck / f"step_{step:06d}.pt", ck / "latest.pt")


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank_with_the_same_batches(runs, tmp_path):
    cont = tmp_path / "ddp2-on-1"
    _copy_run_at(runs.two, cont, 10)
    ck = torch_load(cont / "checkpoints" / "latest.pt")
    from lm.tokenizer import load_token_file

    cfg = ck["config"]
    tokens = load_token_file(next(Path(os.environ["LAB_CACHE_DIR"]).rglob("train*.tokens")))[0] \
        if list(Path(os.environ["LAB_CACHE_DIR"]).rglob("train*.tokens")) else None
    if tokens is not None:  # the next batch of one process = rank 0's rows + rank 1's rows
        B, T = cfg["training"]["batch_size"], cfg["model"]["context_length"]
        one = BatchSampler(tokens, B, T)
        one.load_state_dict(ck["sampler"])
        slices = [RankSlice(BatchSampler(tokens, B, T), r, 2) for r in (0, 1)]
        for s in slices:
            s.load_state_dict(ck["sampler"])
        assert torch.equal(one.next_batch()[0], torch.cat([s.next_batch()[0] for s in slices]))
    from test_train_cli import run_in_process

    assert run_in_process(runs.exp, cont, "training.device=\"cpu\"") == 0
    l2, lc = train_losses(runs.two), train_losses(cont)
    assert max(abs(l2[s] - lc[s]) for s in range(11, STEPS + 1)) <= 1e-5


@pytest.mark.slow
def test_kill_9_of_one_rank_ends_the_run_names_the_rank_and_resumes_bitwise(runs, tmp_path):
    run_dir = tmp_path / "killed"
    t0 = time.monotonic()
    res = launch(runs.exp, run_dir, 2, LAB_INJECT_KILL_AT_STEP=12, LAB_INJECT_KILL_RANK=1)
    assert time.monotonic() - t0 < 60 + 30  # start-up included; the agent stops the survivor within its timeout
    assert res.returncode == 1, res.stderr[-2000:]
    st = RunDir(run_dir).raw_status()
    assert st["state"] == "failed" and st["message"].startswith("rank 1 ") and "SIGKILL" in st["message"]
    assert "rank 1" in res.stderr and "--resume" in res.stderr
    errors = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines() if '"error"' in l]
    assert errors[-1]["rank"] == 1
    assert torch_load(run_dir / "checkpoints" / "latest.pt")["iteration"] == 10  # the last good checkpoint
    res = subprocess.run([sys.executable, "-m", "lab", "run", "--resume", str(run_dir), "--gpus", "2",
                          "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=180, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert train_losses(run_dir)[STEPS] == train_losses(runs.two)[STEPS]  # bitwise
    wa, wb = weights(run_dir), weights(runs.two)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_nan_on_one_rank_halts_every_rank_with_exit_4(runs, tmp_path):
    run_dir = tmp_path / "nan"
    res = launch(runs.exp, run_dir, 2, LAB_INJECT_NAN_AT_STEP=7, LAB_INJECT_NAN_RANK=1)
    assert res.returncode == 4, res.stderr[-2000:]
    st = RunDir(run_dir).raw_status()
    assert st["state"] == "diverged" and "step 7" in st["message"]
    assert torch_load(run_dir / "checkpoints" / "latest.pt")["iteration"] == 5


@pytest.mark.slow
def test_sigterm_checkpoints_on_every_rank_and_exits_5(runs, tmp_path):
    run_dir = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "lab", "run", str(runs.exp), "--gpus", "2", "--device", "cpu",
                             "--run-dir", str(run_dir), "--set", "training.steps=100000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    from test_train_cli import wait_for_event

    wait_for_event(run_dir, proc, "checkpoint", min_step=5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err[-2000:]
    st = RunDir(run_dir).raw_status()
    assert st["state"] == "stopped" and "SIGTERM" in st["message"]
    step = torch_load(run_dir / "checkpoints" / "latest.pt")["iteration"]
    assert step == st["step"] > 5


def test_the_console_shows_a_distributed_run_as_world_size_and_mode():
    from lab.views.run_tail import world_label

    assert world_label({"world_size": 4, "parallel": "fsdp"}) == "4 x FSDP"
    assert world_label({"world_size": 1, "parallel": "none"}) == "" and world_label({}) == ""


def test_the_memory_refusal_counts_fsdp2_sharding_over_the_ranks():
    from lm.config.schema import ExperimentConfig, ModelConfig, TrainingConfig
    from lm.train.memory_check import check_fits

    cfg = ExperimentConfig(model=ModelConfig.from_name("2.7B"), training=TrainingConfig(batch_size=16))
    gpu = "NVIDIA GeForce RTX 4090"
    with pytest.raises(ConfigError, match="cannot train on"):
        check_fits(cfg, torch.device("cpu"), gpu, 1)
    check_fits(cfg, torch.device("cpu"), gpu, 8)  # 8 x FSDP2 shards it to fit
    ddp_only = ExperimentConfig(model=cfg.model, training=TrainingConfig(batch_size=16, parallel="ddp"))
    with pytest.raises(ConfigError, match="cannot train on"):
        check_fits(ddp_only, torch.device("cpu"), gpu, 8)
