"""Checkpoints are data, never code; a resume or a sample never runs on another tokenizer or other data.

A run is trained once per module (in process); each test copies it, plants
something hostile or changed, and drives the real commands (``lab sample``,
``lab chat``, ``lab run --resume``, ``--checkpoint step_N``, the queue's
resume command) as subprocesses.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_cli import experiment, lab, run_in_process

from lm.checkpoint_file import torch_load
from lm.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this touches ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(experiment file, run dir) of a finished 40-step run with step_000020/40, latest and best."""
    tmp = tmp_path_factory.mktemp("safety")
    exp = experiment(tmp, training={"steps": 40, "log_every": 20}, eval={"every": 20},
                     checkpoint={"every": 20, "keep_last": 2})
    run = tmp / "run"
    assert run_in_process(exp, run) == 0
    return exp, run


def _copy(trained, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    return run


def _plant(path: Path, marker: Path) -> None:
    obj = torch.load(path, weights_only=True)
    obj["extra"] = _Payload(marker)
    path.unlink()  # latest/best are hard links to a step file: replace this name only
    torch.save(obj, path)


def _assert_refused(proc: subprocess.CompletedProcess, marker: Path, path: Path) -> None:
    assert not marker.exists(), "the checkpoint's pickle payload ran"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(path) in proc.stderr and "could run code" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_trainer_checkpoints_hold_only_plain_types(trained):
    for path in (trained[1] / "checkpoints").glob("*.pt"):
        ck = torch.load(path, weights_only=True)  # torch's own allow-list, nothing added
        assert isinstance(ck["rng"]["numpy"], dict) and isinstance(ck["tokenizer_fingerprint"], str)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["best", "latest", "step_000020"])
def test_lab_sample_never_runs_a_payload(trained, tmp_path, which):
    run = _copy(trained, tmp_path)
    name = f"{which}.pt"
    target = run / "checkpoints" / name
    marker = tmp_path / "ran"
    _plant(target, marker)
    args = ["sample", run, "-n", "2", "--device", "cpu"] + ([] if which == "best" else ["--checkpoint", which])
    _assert_refused(lab(*args), marker, target)


@pytest.mark.slow
def test_lab_chat_never_runs_a_payload(trained, tmp_path):
    run = _copy(trained, tmp_path)
    target = run / "checkpoints" / "best.pt"
    marker = tmp_path / "ran"
    _plant(target, marker)
    proc = subprocess.run([sys.executable, "-m", "lab", "chat", str(run), "--device", "cpu"], cwd=ROOT,
                          input="hello\n/quit\n", capture_output=True, text=True, timeout=300)
    _assert_refused(proc, marker, target)


@pytest.mark.slow
def test_resume_latest_and_step_n_never_run_a_payload(trained, tmp_path):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "ran"
    latest, step = run / "checkpoints" / "latest.pt", run / "checkpoints" / "step_000020.pt"
    _plant(latest, marker)
    _plant(step, marker)
    _assert_refused(lab("run", "--resume", run, "--set", "training.steps=60"), marker, latest)
    _assert_refused(lab("run", "--resume", run, "--checkpoint", "step_000020", "--set", "training.steps=60"),
                    marker, step)


@pytest.mark.slow
def test_the_queue_resume_command_never_runs_a_payload(trained, tmp_path):
    from lab import processes as process

    run = _copy(trained, tmp_path)
    marker = tmp_path / "ran"
    latest = run / "checkpoints" / "latest.pt"
    _plant(latest, marker)
    cmd = process.run_command() + process.start_args(str(trained[0]), ["training.steps=60"], str(run), True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    _assert_refused(proc, marker, latest)


@pytest.mark.parametrize("which", ["best", "latest", "step_000020"])
def test_loaders_never_run_a_payload_in_process(trained, tmp_path, which):
    """The loaders every command uses (sample/chat's lm.decode.load, run --resume's trainer), without subprocesses."""
    from lm.decode import load as open_run
    from lm.train import run_experiment

    run = _copy(trained, tmp_path)
    target = run / "checkpoints" / f"{which}.pt"
    marker = tmp_path / "ran"
    _plant(target, marker)
    with pytest.raises(CheckpointError, match="could run code"):
        open_run(run, which, device="cpu")
    with pytest.raises(CheckpointError, match=str(target)):
        run_experiment(resume=run, overrides=["training.steps=60"], checkpoint=which)
    assert not marker.exists()


def test_old_checkpoints_with_numpy_rng_tuples_still_resume_in_process(trained, tmp_path):
    """A checkpoint from before (np.random.get_state() tuple, python state tuple) loads and resumes."""
    run = _copy(trained, tmp_path)
    latest = run / "checkpoints" / "latest.pt"
    obj = torch.load(latest, weights_only=True)
    np.random.seed(7)
    random.seed(7)
    obj["rng"]["numpy"] = np.random.get_state()
    obj["rng"]["python"] = random.getstate()
    obj.pop("tokenizer_fingerprint")
    latest.unlink()
    torch.save(obj, latest)
    ck = torch_load(latest)
    assert ck["rng"]["numpy"][0] == "MT19937"
    from lm.train import run_experiment

    assert run_experiment(resume=run, overrides=["training.steps=42"]) == 0
    assert torch_load(latest)["iteration"] == 42


def test_other_pickled_objects_are_refused_by_the_loader(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {}, "cfg": Path("/etc")}, path)  # harmless, but not a plain value
    with pytest.raises(CheckpointError, match=str(path)):
        torch_load(path)


# ----------------------------------------------------------------------------- tokenizer and data


@pytest.mark.slow
def test_resume_with_a_changed_tokenizer_is_refused(trained, tmp_path):
    run = _copy(trained, tmp_path)
    merges = run / "tokenizer" / "merges.txt"
    merges.write_text("#version: 0.2\n")  # emptied: every id now means other text
    proc = lab("run", "--resume", run, "--set", "training.steps=60")
    assert proc.returncode == 2 and "tokenizer" in proc.stderr and "fingerprint" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = lab("sample", run, "-n", "2", "--device", "cpu")
    assert proc.returncode == 2 and "fingerprint" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_rerun_with_another_data_source_into_a_run_is_refused(trained, tmp_path):
    run = _copy(trained, tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("completely different text. " * 400)
    before = (run / "config.toml").read_text()
    proc = lab("run", trained[0], "--run-dir", run, "--set", f"data.source={other}", "--set", "training.steps=60")
    assert proc.returncode == 2, proc.stderr
    assert "data.source" in proc.stderr and "other data" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "config.toml").read_text() == before


def test_refuse_changed_data_in_process(trained, tmp_path):
    from lm.config.loader import load_experiment
    from lm.train.experiment import refuse_changed_data

    run = _copy(trained, tmp_path)
    cfg = load_experiment(trained[0], ["data.val_fraction=0.2"])
    with pytest.raises(ConfigError, match="data.val_fraction"):
        refuse_changed_data(cfg, run, run / "checkpoints" / "latest.pt")


# ----------------------------------------------------------------------------- picking the checkpoint


def test_resume_from_a_chosen_checkpoint_when_latest_is_damaged(trained, tmp_path):
    from lm.train import run_experiment

    run = _copy(trained, tmp_path)
    latest = run / "checkpoints" / "latest.pt"
    latest.unlink()
    latest.write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="latest.pt"):
        run_experiment(resume=run, overrides=["training.steps=44"])
    assert run_experiment(resume=run, overrides=["training.steps=44"], checkpoint="step_000020") == 0
    assert torch_load(latest)["iteration"] == 44
    with pytest.raises(CheckpointError, match="step_000099"):
        run_experiment(resume=run, checkpoint="step_000099")


def test_a_run_without_config_toml_resumes_from_the_checkpoint_config(trained, tmp_path):
    from lm.train import run_experiment

    run = _copy(trained, tmp_path)
    (run / "config.toml").unlink()
    assert run_experiment(resume=run, overrides=["training.steps=42"]) == 0
    assert torch_load(run / "checkpoints" / "latest.pt")["iteration"] == 42
    assert (run / "config.toml").is_file()


def test_the_only_torch_load_is_the_weights_only_one():
    import ast

    root = Path(__file__).resolve().parent.parent
    calls = []
    for top in ("lm", "lab", "bench"):
        for path in (root / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle"):
                    kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    calls.append((str(path.relative_to(root)), kw.get("weights_only")))
    assert calls == [("lm/checkpoint_file.py", True)]


def test_errors_survive_a_process_boundary():
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError(["a is bad", "b is bad"], source="x.toml")))
    assert e.problems == ["a is bad", "b is bad"] and e.source == "x.toml" and "2 config errors in x.toml" in str(e)


def _dcp_folder(tmp_path):
    import torch.distributed.checkpoint as dcp

    m = torch.nn.Linear(3, 2)
    folder = tmp_path / "dcp"
    dcp.save({"model": m.state_dict()}, checkpoint_id=str(folder), no_dist=True)
    return m, folder


def test_sharded_checkpoints_load_through_the_safe_reader(tmp_path):
    import torch.distributed.checkpoint as dcp

    from lm.checkpoint_file import dcp_reader

    m, folder = _dcp_folder(tmp_path)
    target = {"model": {k: torch.zeros_like(v) for k, v in m.state_dict().items()}}
    dcp.load(target, storage_reader=dcp_reader(folder), no_dist=True)
    assert torch.equal(target["model"]["weight"], m.weight.detach())


def test_a_payload_in_sharded_metadata_never_runs(tmp_path):
    import pickle

    from lm.checkpoint_file import dcp_reader

    _, folder = _dcp_folder(tmp_path)
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="could run code"):
        dcp_reader(folder).read_metadata()
    assert not marker.exists()
