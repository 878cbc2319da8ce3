"""Checkpoints: round trips to paths and file objects, resuming, atomic writes, readable errors."""

from __future__ import annotations

import dataclasses
import io
import os

import pytest
import torch

from lm.checkpoint_file import atomic_torch_save, load_checkpoint, save_checkpoint, torch_load
from lm.errors import CheckpointError
from lm.functional import cross_entropy
from lm.model import ModelConfig, TransformerLM
from lm.optim import AdamW

CFG = ModelConfig(vocab_size=31, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)


def _setup(seed: int):
    torch.manual_seed(seed)
    model = TransformerLM(CFG)
    return model, AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train(model, opt, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, CFG.vocab_size, (2, CFG.context_length + 1), generator=g)
        loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("target", ["path", "file"])
def test_round_trip_restores_model_optimizer_and_iteration(target, tmp_path):
    model, opt = _setup(0)
    _train(model, opt, 3, seed=1)
    if target == "path":
        out = tmp_path / "sub" / "ckpt.pt"  # parent created on demand
        save_checkpoint(model, opt, 3, out)
        src = out
    else:
        out = io.BytesIO()
        save_checkpoint(model, opt, 3, out)
        src = io.BytesIO(out.getvalue())
    fresh, fresh_opt = _setup(7)
    assert not _same_weights(model, fresh)
    assert load_checkpoint(src, fresh, fresh_opt) == 3
    assert _same_weights(model, fresh)
    # Resuming continues exactly as the uninterrupted run would.
    _train(model, opt, 2, seed=2)
    _train(fresh, fresh_opt, 2, seed=2)
    assert _same_weights(model, fresh)


def test_checkpoint_model_entry_is_a_cs336_state_dict(tmp_path):
    model, opt = _setup(0)
    save_checkpoint(model, opt, 5, tmp_path / "c.pt")
    obj = torch.load(tmp_path / "c.pt", weights_only=False)
    assert obj["iteration"] == 5
    assert "layers.0.attn.q_proj.weight" in obj["model"]
    assert not any("qkv" in k for k in obj["model"])


def test_a_checkpoint_in_a_file_object_loads_back():
    model, opt = _setup(0)
    fresh, _ = _setup(1)
    buf = io.BytesIO()
    save_checkpoint(model, opt, 9, buf)
    buf.seek(0)
    assert load_checkpoint(buf, fresh) == 9
    assert _same_weights(model, fresh)


def test_atomic_save_overwrites_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)
    atomic_torch_save({"a": 2}, path)
    assert torch_load(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.pt"]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_save_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"a": _Unpicklable()}, path)
    assert torch_load(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.pt"]


def test_missing_truncated_and_foreign_files_are_checkpoint_errors(tmp_path):
    model, opt = _setup(0)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", model)
    good = tmp_path / "good.pt"
    save_checkpoint(model, opt, 1, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated, model)
    foreign = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(CheckpointError, match="not an lm checkpoint"):
        load_checkpoint(foreign, model)


def test_checkpoint_of_another_shape_names_the_tensor(tmp_path):
    model, opt = _setup(0)
    save_checkpoint(model, opt, 1, tmp_path / "c.pt")
    wider = TransformerLM(dataclasses.replace(CFG, d_ff=48))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c.pt", wider)
    assert "layers.0.ffn.w1.weight" in str(e.value)
    assert "[32, 16]" in str(e.value) and "[48, 16]" in str(e.value)
